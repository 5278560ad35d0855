"""Every stage of :meth:`Compressor.apply` checked against an independent computation in the test.

Each test fails when its stage is skipped (and where a repeat changes the result, when it runs twice):
channel selection, least-squares reconstruction, weight and activation quantization, BN recalibration and
HAQ's per-episode fine-tune. The model's BatchNorm statistics are deliberately wrong and its inputs are
shifted, so a skipped recalibration or a stage run on the wrong tensors is visible in the numbers.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from amc.compress import Compressor, Policy
from amc.cost import FP32
from amc.errors import AmcError
from amc.graph import build_graph
from amc.quantize import activation_quantizers

SHAPE = (1, 10, 10)


class Tiny(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.c1(x)))
        x = torch.relu(self.bn2(self.c2(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _model(wrong_stats: bool = True) -> Tiny:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():  # statistics no batch would give: recalibration must move them
        for bn in (model.bn1, model.bn2):
            if wrong_stats:
                bn.running_mean.fill_(5.0)
                bn.running_var.fill_(9.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def _batches(n: int = 2, size: int = 16, seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(size, *SHAPE, generator=gen) * 2.0 + 0.7 for _ in range(n)]


def _policy(graph, keep: float = 0.5, w: int = FP32, a: int = FP32) -> Policy:
    kept = [max(1, int(c * keep)) if g.prunable else c for g, c in zip(graph.groups, graph.full_channels())]
    n = len(graph.units)
    return Policy(kept, [w] * n, [a] * n)


def _bn_inputs(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Each BatchNorm's input per batch, with every BatchNorm normalising by its batch statistics."""
    probe = copy.deepcopy(model)
    seen: dict[str, list[torch.Tensor]] = {}
    for name, m in probe.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
            m.register_forward_hook(lambda _m, inp, _out, name=name: seen.setdefault(name, []).append(inp[0].detach()))
    with torch.no_grad():
        for x in batches:
            probe(x)
    return seen


@pytest.mark.parametrize("bits", [FP32, 3], ids=["float", "quantized"])
def test_bn_recalibration_sets_running_stats_to_the_calibration_batch_statistics(bits: int) -> None:
    model, calib = _model(), _batches()
    graph = build_graph(model, SHAPE)
    policy = _policy(graph, 0.5, w=bits, a=bits)
    out = Compressor(model, graph, calibration=calib).apply(policy)
    # Independently: per batch, the mean and unbiased variance of every BN input over (N, H, W), averaged.
    for name, inputs in _bn_inputs(out, calib).items():
        bn = dict(out.named_modules())[name]
        mean = torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0)
        var = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for x in inputs]).mean(0)
        torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)
        assert bn.momentum == 0.1 and not bn.training  # restored
    # Switched off, the wrong statistics stay (so the check above sees the stage).
    off = Compressor(model, graph, calibration=calib, bn_recalibration=False).apply(policy)
    assert torch.all(off.bn1.running_mean == 5.0) and torch.all(off.bn2.running_var == 9.0)


class _KernelModeBN(nn.BatchNorm2d):
    """A BatchNorm2d recording whether each call ran PyTorch's training-mode kernel."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.kernel_modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.kernel_modes.append(self.training)
        return super().forward(x)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.BatchNorm2d(5), (16, 5, 6, 7)),
        (lambda: nn.BatchNorm2d(5, affine=False), (16, 5, 6, 7)),
        (lambda: nn.BatchNorm1d(5), (16, 5)),
        (lambda: nn.BatchNorm1d(5), (16, 5, 9)),
        (lambda: nn.BatchNorm3d(5), (4, 5, 3, 4, 5)),
    ],
)
def test_calibration_batch_statistics_agree_with_the_training_kernel(make, shape) -> None:
    from amc.compress import _calibrating

    torch.manual_seed(0)
    batches = [torch.randn(shape) * (2.0 + i) + 0.5 * i for i in range(3)]
    ours, kernel = make(), make()
    if ours.affine:
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.uniform_(-1.0, 1.0)
    kernel.load_state_dict(ours.state_dict())
    kernel.reset_running_stats()
    kernel.momentum = None
    kernel.train()
    with torch.no_grad(), _calibrating(ours, ()):
        for x in batches:
            torch.testing.assert_close(ours(x), kernel(x), rtol=1e-5, atol=1e-5)  # normalised by the batch's statistics
            # between batches the layer holds what the kernel leaves: cumulative mean, unbiased variance
            torch.testing.assert_close(ours.running_mean, kernel.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ours.running_var, kernel.running_var, rtol=1e-5, atol=1e-6)
            assert ours.training and ours.num_batches_tracked == kernel.num_batches_tracked
    assert not ours.training and ours.momentum == 0.1
    assert not ours._forward_pre_hooks and not ours._forward_hooks  # removed on exit
    with torch.no_grad():  # and it now normalises by those statistics
        torch.testing.assert_close(ours(batches[0]), kernel.eval()(batches[0]), rtol=1e-5, atol=1e-5)


def test_calibration_skips_the_training_kernel_only_where_its_statistics_are_equivalent() -> None:
    from amc.compress import _calibrating

    x = torch.randn(8, 3, 4, 4)
    bn = _KernelModeBN(3)
    with torch.no_grad(), _calibrating(bn, ()):
        bn(x)
    assert bn.kernel_modes == [False]  # float32 on CPU without gradients: eval kernel on the batch statistics
    bn.kernel_modes.clear()
    with torch.enable_grad(), _calibrating(bn, ()):  # a backward pass needs the statistics in the graph
        bn(x.requires_grad_())
    with torch.no_grad(), _calibrating(bn, ()):
        with pytest.raises(ValueError, match="more than 1 value per channel"):
            bn(torch.randn(1, 3, 1, 1))  # the kernel's own error
        bn(x.contiguous(memory_format=torch.channels_last))  # the kernel reduces NHWC fast itself
    assert bn.kernel_modes == [True, True, True]
    wide = _KernelModeBN(3).double()
    with torch.no_grad(), _calibrating(wide, ()):
        wide(x.double())  # other dtypes
    assert wide.kernel_modes == [True]


def test_selection_keeps_the_highest_l1_filters_and_prunes_the_rest() -> None:
    model, calib = _model(), _batches()
    graph = build_graph(model, SHAPE)
    policy = _policy(graph, 0.5)
    out = Compressor(model, graph, calibration=calib, bn_recalibration=False).apply(policy)
    top1, top2 = (
        sorted(torch.topk(conv.weight.detach().abs().sum(dim=(1, 2, 3)), k).indices.tolist())
        for conv, k in ((model.c1, 4), (model.c2, 3))
    )
    assert torch.equal(out.c1.weight, model.c1.weight[top1])
    assert torch.equal(out.c2.weight, model.c2.weight[top2][:, top1])
    assert torch.equal(out.bn2.weight, model.bn2.weight[top2]) and torch.equal(out.fc.weight, model.fc.weight[:, top2])
    # The pruned model computes what the dense one does with the dropped channels' outputs held at zero.
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for bn, top in ((zeroed.bn1, top1), (zeroed.bn2, top2)):
            drop = sorted(set(range(len(bn.weight))) - set(top))
            bn.weight[drop] = 0
            bn.bias[drop] = 0
        x = calib[0]
        torch.testing.assert_close(out(x), zeroed(x), rtol=1e-5, atol=1e-5)


def test_reconstruction_solves_the_least_squares_problem_of_the_next_layer() -> None:
    model, calib = _model(), _batches()
    graph = build_graph(model, SHAPE)
    policy = _policy(graph, 0.5)
    policy.kept[graph.units[1].out_group] = 6  # c2 keeps all outputs: only its inputs change
    comp = Compressor(
        model, graph, calibration=calib, bn_recalibration=False, reconstruction=True, reconstruction_samples=10**6
    )
    out = comp.apply(policy)
    kept = comp.keep(policy)[graph.units[0].out_group]
    # Independently: c2's dense input on the calibration batches, unfolded; kept columns -> dense outputs.
    inputs: list[torch.Tensor] = []
    h = model.c2.register_forward_hook(lambda _m, inp, _o: inputs.append(inp[0].detach()))
    with torch.no_grad():
        for x in calib:
            model(x)
    h.remove()
    cols = nn.functional.unfold(torch.cat(inputs), 3, padding=1).permute(0, 2, 1).reshape(-1, 8, 9).double()
    target = cols.reshape(len(cols), -1) @ model.c2.weight.detach().double().reshape(6, -1).T
    a = cols[:, kept].reshape(len(cols), -1)
    solution = torch.linalg.lstsq(a, target).solution.T.reshape(6, len(kept), 3, 3).float()
    torch.testing.assert_close(out.c2.weight.detach(), solution, rtol=1e-3, atol=1e-3)
    sliced = Compressor(model, graph, calibration=calib, bn_recalibration=False).apply(policy)
    assert not torch.allclose(sliced.c2.weight, solution, atol=1e-2)  # the stage is what changes it


def test_reconstruction_samples_rows_from_every_calibration_image() -> None:
    """The sampled least-squares rows are real rows of the dense inputs, from images across the whole set."""
    model, calib = _model(wrong_stats=False), _batches()  # 32 images with inputs that are not all zeros
    graph = build_graph(model, SHAPE)
    c2, fc = (next(i for i, u in enumerate(graph.units) if u.name == n) for n in ("c2", "fc"))
    inputs: dict[str, list[torch.Tensor]] = {"c2": [], "fc": []}
    hooks = [
        getattr(model, n).register_forward_hook(lambda _m, inp, _o, n=n: inputs[n].append(inp[0].detach()))
        for n in inputs
    ]
    with torch.no_grad():
        for x in calib:
            model(x)
    for h in hooks:
        h.remove()
    conv_rows = nn.functional.unfold(torch.cat(inputs["c2"]), 3, padding=1).permute(0, 2, 1)  # [32, 100, 72]
    fc_rows = torch.cat(inputs["fc"])  # [32, 6]: one row per image

    def images_of(rows: torch.Tensor, full: torch.Tensor) -> list[int]:
        return [int((full == r).all(-1).reshape(full.shape[0], -1).any(-1).nonzero()[0]) for r in rows]

    feats = Compressor(model, graph, calibration=calib, reconstruction=True, reconstruction_samples=40)._features
    assert feats[c2].x.shape == (40, 72) and feats[fc].x.shape == (32, 6)  # a linear unit has 32 rows only
    assert len(set(images_of(feats[c2].x, conv_rows))) >= 20
    assert sorted(images_of(feats[fc].x, fc_rows.unsqueeze(1))) == list(range(32))
    few = Compressor(model, graph, calibration=calib, reconstruction=True, reconstruction_samples=8)._features
    picked = images_of(few[fc].x, fc_rows.unsqueeze(1))
    assert len(set(picked)) == 8 and max(picked) >= 8  # not simply the first 8 images
    torch.testing.assert_close(few[fc].y, few[fc].x @ model.fc.weight.detach().T)  # outputs without bias


def test_quantization_puts_weights_and_unit_inputs_on_their_grids() -> None:
    model, calib = _model(wrong_stats=False), _batches()
    graph = build_graph(model, SHAPE)
    w_bits, a_bits = 3, 4
    out = Compressor(model, graph, calibration=calib, bn_recalibration=False).apply(_policy(graph, 0.5, w_bits, a_bits))
    ref = Compressor(model, graph, calibration=calib, bn_recalibration=False).apply(_policy(graph, 0.5))
    modules, float_modules = dict(out.named_modules()), dict(ref.named_modules())
    seen: dict[str, torch.Tensor] = {}
    for u in graph.units:
        w, wf = modules[u.name].weight.detach(), float_modules[u.name].weight.detach()
        for row, frow in zip(w.flatten(1), wf.flatten(1)):
            values = row.unique()
            assert len(values) <= 2**w_bits - 1, (u.name, len(values))
            assert values.abs().max() == pytest.approx(frow.abs().max().item(), rel=1e-6)  # range kept
            step = frow.abs().max().item() / (2 ** (w_bits - 1) - 1)
            torch.testing.assert_close(values / step, torch.round(values / step), rtol=0, atol=1e-4)
        modules[u.name].register_forward_hook(lambda _m, inp, _o, n=u.name: seen.__setitem__(n, inp[0].detach()))
    with torch.no_grad():
        out(torch.cat(calib))
    for u in graph.units:
        x = seen[u.name]
        levels = len(x.unique())
        signed = bool((x < 0).any())
        assert levels <= (2**a_bits - 1 if signed else 2**a_bits), (u.name, levels)
        assert levels > 2 ** (a_bits - 1), (u.name, levels)  # one bit fewer would not fit the values seen
    # Float policy: inputs are not quantized.
    ref_seen: list[torch.Tensor] = []
    float_modules[graph.units[1].name].register_forward_hook(lambda _m, inp, _o: ref_seen.append(inp[0]))
    with torch.no_grad():
        ref(torch.cat(calib))
    assert len(ref_seen[0].unique()) > 2**a_bits * 10


def test_per_episode_finetune_is_one_pass_of_sgd_then_back_onto_the_grid() -> None:
    model, calib = _model(), _batches()
    graph = build_graph(model, SHAPE)
    policy = _policy(graph, 0.5, 4, 8)
    gen = torch.Generator().manual_seed(3)
    labelled = [(x, torch.randint(0, 5, (len(x),), generator=gen)) for x in _batches(3, 8, seed=5)]
    tuned = Compressor(
        model, graph, calibration=calib, bn_recalibration=False, finetune_batches=labelled, finetune_lr=0.05
    ).apply(policy)
    # Independently: the compressed model without the stage, then SGD over the batches once, then requantize.
    expected = Compressor(model, graph, calibration=calib, bn_recalibration=False).apply(policy)
    opt = torch.optim.SGD(expected.parameters(), lr=0.05, momentum=0.9)
    expected.train()
    for x, y in labelled:
        opt.zero_grad()
        nn.functional.cross_entropy(expected(x), y).backward()
        opt.step()
    expected.eval()
    modules, got = dict(expected.named_modules()), dict(tuned.named_modules())
    for u in graph.units:
        w = modules[u.name].weight.detach()
        flat = w.flatten(1)
        scale = (flat.abs().amax(1) / 7).clamp_min(1e-30).view(-1, *[1] * (w.dim() - 1))
        grid = torch.clamp(torch.round(w / scale), -7, 7) * scale
        torch.testing.assert_close(got[u.name].weight.detach(), grid, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tuned.bn1.running_mean, expected.bn1.running_mean)  # trained in train mode


def test_a_unit_silenced_by_the_trained_statistics_is_still_quantized() -> None:
    # The trained BN statistics zero c2's input (ReLU of a hugely negative value) when the ranges are measured;
    # after re-estimation that input is alive, and it must run on a 2-bit grid, not in float.
    model = _model()
    with torch.no_grad():
        model.bn1.running_mean.fill_(1e3)
    graph = build_graph(model, SHAPE)
    calib = _batches()
    out = Compressor(model, graph, calibration=calib).apply(_policy(graph, 1.0, FP32, 2))
    seen: list[torch.Tensor] = []
    handle = out.c2.register_forward_pre_hook(lambda _m, inp: seen.append(inp[0].detach().clone()))
    with torch.no_grad():
        out(_batches(1, seed=7)[0])
    handle.remove()
    x = seen[0]
    assert float(x.abs().max()) > 0, "c2's input should be alive after BN re-estimation"
    assert len(torch.unique(x)) <= 4, "c2's input ran in float: its quantizer was calibrated on zeros"


def test_ranges_and_statistics_are_measured_in_one_pass_under_the_new_statistics() -> None:
    model, calib = _model(), _batches(3)  # the trained statistics are wrong: ranges measured under them would be too
    graph = build_graph(model, SHAPE)
    comp = Compressor(model, graph, calibration=calib)
    calls: list[int] = []
    comp.model.register_forward_pre_hook(lambda _m, inp: calls.append(len(inp[0])))
    out = comp.apply(_policy(graph, 1.0, FP32, 4))
    assert len(calls) == len(calib), f"{len(calls)} calibration forwards for {len(calib)} batches: not one pass"
    q = activation_quantizers(out)["c2"]
    assert not q.calibrating and not q.running
    # Independently: c2's float input on the first batch, c1's input quantized with its final range and bn1
    # normalising by that batch's own statistics, as it does while its statistics are re-estimated.
    probe = copy.deepcopy(out)
    seen: list[torch.Tensor] = []
    probe.bn1.register_forward_hook(lambda _m, _i, o: seen.append(torch.relu(o).detach()))
    probe.bn1.train()
    with torch.no_grad():
        probe(calib[0])
    assert q.max_abs == pytest.approx(float(seen[0].abs().max()), rel=1e-5)
    # The other batches were measured with that range: the statistics are those of the quantized inputs.
    for name, inputs in _bn_inputs(out, calib).items():
        bn = dict(out.named_modules())[name]
        torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(dim=(0, 2, 3)) for x in inputs]).mean(0))


def test_thinet_holds_sampled_rows_of_every_image_not_whole_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    import amc.selection as selection

    model, calib = _model(wrong_stats=False), _batches()  # 2 batches of 16 images
    graph = build_graph(model, SHAPE)
    c2 = next(i for i, u in enumerate(graph.units) if u.name == "c2")
    held: dict[int, list[torch.Tensor]] = {}
    capture = selection.capture_unit_inputs

    def spy(*args, **kwargs):
        out = capture(*args, **kwargs)
        held.update(out)
        return out

    monkeypatch.setattr(selection, "capture_unit_inputs", spy)
    scores = selection.thinet_scores(model, graph, calib, samples=40)
    # 40 samples over 32 images: 2 unfolded 3x3 rows per image, drawn as each batch passes.
    assert [tuple(x.shape) for x in held[c2]] == [(32, 72), (32, 72)]
    inputs: list[torch.Tensor] = []
    h = model.c2.register_forward_pre_hook(lambda _m, inp: inputs.append(inp[0].detach()))
    with torch.no_grad():
        for x in calib:
            model(x)
    h.remove()
    full = nn.functional.unfold(torch.cat(inputs), 3, padding=1).permute(0, 2, 1)  # [32, 100, 72]
    rows = torch.cat(held[c2]).reshape(32, 2, 72)
    for i in range(32):  # each image's rows are rows of that image's own input
        assert all(bool((full[i] == r).all(-1).any()) for r in rows[i])
    assert sorted(scores[graph.units[c2].in_groups[0][0]].tolist()) == list(range(8))  # an order of c1's channels


def test_calibration_on_the_search_split_is_one_random_batch_evaluated_in_the_same_pass() -> None:
    from amc.envs.pool import measure_accuracy

    from amc.compress import calibrate_on_search_batch, search_calibration_sample

    model, calib = _model(), _batches(3)
    graph = build_graph(model, SHAPE)
    gen = torch.Generator().manual_seed(7)
    # 40 search images stored "class by class": the first 16 are shifted, so calibrating on the first batch
    # instead of a random one gives other statistics.
    x = torch.cat(_batches(3, 16, seed=5))[:40]
    x[:16] = x[:16] * 3.0 + 2.0
    y = torch.randint(0, 5, (40,), generator=gen)
    policy = _policy(graph, 0.5, 4, 4)
    comp = Compressor(model, graph, calibration=calib, calibration_set="search", seed=3)
    calls: list[int] = []
    # (pruning traces the model on one example image: those calls are not counted)
    comp.model.register_forward_pre_hook(lambda _m, inp: calls.append(len(inp[0])) if len(inp[0]) > 1 else None)
    timing: dict[str, float] = {}
    acc = measure_accuracy(comp, policy, x, y, 16, torch.device("cpu"), timing)
    sample = search_calibration_sample(40, 16, seed=3)
    assert len(sample) == 16 and len(set(sample.tolist())) == 16 and not torch.equal(sample, torch.arange(16))
    assert calls[0] == 16 and sum(calls) == 40, f"forwards {calls}: calibration batches ran, or an image ran twice"
    assert "calibration" not in timing

    # Independently: the model calibrated (statistics and ranges in one pass) on the sampled batch alone,
    # that batch predicted with BatchNorm normalising by its own statistics, the other 24 images in eval mode.
    ref = Compressor(model, graph, calibration=[x[sample]]).apply(policy)
    fused = comp.apply(policy, calibrate=False)
    got = calibrate_on_search_batch(fused, x, y, 16, "cpu", seed=3)
    assert got == acc
    for name, q in activation_quantizers(ref).items():
        assert activation_quantizers(fused)[name].max_abs == pytest.approx(q.max_abs, rel=1e-6)
    for (name, m), r in zip(fused.named_modules(), ref.modules()):
        if isinstance(m, nn.BatchNorm2d):
            torch.testing.assert_close(m.running_mean, r.running_mean, msg=name)
            torch.testing.assert_close(m.running_var, r.running_var, msg=name)
            assert not m.training and m.momentum == 0.1
    probe = copy.deepcopy(ref)
    for m in probe.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    rest = torch.ones(40, dtype=torch.bool)
    rest[sample] = False
    with torch.no_grad():
        first = probe(x[sample]).argmax(1)
        others = ref(x[rest]).argmax(1)
    expected = (int((first == y[sample]).sum()) + int((others == y[rest]).sum())) / 40
    assert got == pytest.approx(expected)
    # The training-set path still calibrates on the calibration batches, in a pass of its own.
    calls.clear()
    comp.calibration_set = "train"
    measure_accuracy(comp, policy, x, y, 16, torch.device("cpu"), {})
    assert calls == [16] * 3 + [16, 16, 8]
    with pytest.raises(AmcError, match="calibration_set='val' is not an option; choose one of train, search"):
        Compressor(model, graph, calibration=calib, calibration_set="val")


def test_policy_of_stores_python_ints_from_any_integer_sequence() -> None:
    import numpy as np

    p = Policy.of(np.array([3, 4]), torch.tensor([8, 4, 2]), [2.0, 8, np.int64(4)])
    assert p == Policy([3, 4], [8, 4, 2], [2, 8, 4])
    assert all(type(v) is int for v in [*p.kept, *p.w_bits, *p.a_bits])
