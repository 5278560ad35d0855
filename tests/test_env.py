"""The compression environment: API conformance, hard budgets, determinism, and what compression does."""

from __future__ import annotations

import copy
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from amc.envs import ENV_ID, CompressionEnv
from amc.envs.compression import action_to_level, anchored_action, anchored_position, bit_levels
from conftest import ConcatNet
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch import nn

from amc.compress import Compressor, Policy
from amc.cost import FP32, CostModel
from amc.errors import AmcError
from amc.graph import ModelGraph, build_graph
from amc.hardware import HardwareModel, load_preset
from amc.models import build_model
from amc.pruning import prune_model
from amc.quantize import quantize_weight
from amc.selection import channel_scores


def make_small_env(
    mode: str = "joint",
    budgets: dict | None = None,
    model: nn.Module | None = None,
    input_shape: tuple[int, ...] = (1, 28, 28),
    **kwargs,
) -> CompressionEnv:
    torch.manual_seed(0)
    model = model if model is not None else build_model("fmnist_cnn", num_classes=10, in_channels=1)
    model.eval()
    graph = build_graph(model, input_shape)
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, *input_shape, generator=gen) for _ in range(2)]
    x = torch.randn(64, *input_shape, generator=gen)
    y = torch.randint(0, 10, (64,), generator=gen)
    comp = Compressor(model, graph, calibration=calib, selection=kwargs.pop("selection", "l1"))
    preset = kwargs.pop("preset", None)
    hardware = HardwareModel(load_preset(preset), graph.units) if preset else None
    return CompressionEnv(comp, (x, y), budgets=budgets, mode=mode, hardware=hardware, **kwargs)


@pytest.mark.parametrize("mode", ["prune", "quantize", "joint"])
def test_check_env_clean(mode: str) -> None:
    budgets = {"size": 0.3} if mode == "quantize" else {"macs": 0.5, "params": 0.6}
    env = make_small_env(mode, budgets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(env, skip_render_check=True)
        sb3_check_env(env, warn=True)
    assert env.action_space.shape == ({"prune": 1, "quantize": 2, "joint": 3}[mode],)


def test_registered_and_made_through_gym() -> None:
    base = make_small_env("prune", {"macs": 0.6})
    env = gym.make(
        ENV_ID,
        compressor=base.compressor,
        search_data=(base.search_x, base.search_y),
        budgets={"macs": 0.6},
        mode="prune",
    )
    obs, _ = env.reset(seed=3)
    assert obs.shape == base.observation_space.shape


BUDGET_SETS = [
    ("prune", {"macs": 0.3}),
    ("prune", {"macs": 0.5, "params": 0.4}),
    ("quantize", {"size": 0.15}),
    ("quantize", {"bitops": 0.02, "size": 0.2}),
    ("joint", {"macs": 0.4, "size": 0.1}),
    ("joint", {"bitops": 0.01, "params": 0.5, "macs": 0.5}),
]


HARDWARE_SETS = [
    ("joint", {"latency": 0.4}, "bitfusion_edge"),
    ("joint", {"energy": 0.3, "macs": 0.6}, "bismo_edge"),
    ("prune", {"latency": 0.6}, "systolic_ws_32x32"),
    ("quantize", {"latency": 0.9, "energy": 0.8}, "npu_int8_int4"),
]


@pytest.mark.parametrize(("mode", "budgets", "preset"), [(*b, None) for b in BUDGET_SETS] + HARDWARE_SETS)
@pytest.mark.parametrize(("multiple", "wall"), [(1, "repair"), (8, "repair"), (1, "reserve"), (8, "front")])
def test_budgets_always_hold_on_random_actions(
    mode: str, budgets: dict, preset: str | None, multiple: int, wall: str
) -> None:
    env = make_small_env(mode, budgets, channel_multiple=multiple, preset=preset, wall=wall)
    rng = np.random.default_rng(0)
    episodes = 200 if preset is None else 100
    tightest = {n: 0.0 for n in budgets}
    for ep in range(episodes):
        env.reset()
        # Mix uniform actions with all-max ones (the hardest case for the wall).
        for _ in range(env.n_units):
            a = np.ones(env.action_dim) if ep % 4 == 0 else rng.uniform(-1, 1, env.action_dim)
            env.decide(a)
        ratios = env.wall.ratios(env.kept, env.w, env.a)
        for n, target in budgets.items():
            assert ratios[n] <= target * (1 + 1e-9), (n, ratios[n], target)
            tightest[n] = max(tightest[n], ratios[n] / target)
        if multiple > 1:
            for g in env.decides.values():
                ch = env.graph.groups[g].channels
                assert env.kept[g] % multiple == 0 or env.kept[g] == ch
    # The wall must not be needlessly strict: the all-max episodes get close to the binding budget.
    assert max(tightest.values()) > 0.9


def test_episode_info_reports_targets_achieved_and_policy() -> None:
    env = make_small_env("joint", {"macs": 0.5, "size": 0.2})
    env.reset(seed=0)
    done, info = False, {}
    while not done:
        _, reward, done, _, info = env.step(np.ones(3, dtype=np.float32))
    # Independently: the closed-form cost of the reported policy over the dense model's, and the top-1
    # of the compressed model on the search split, counted here.
    policy = Policy.from_dict(info["policy"], env.graph)
    costs = CostModel(env.graph)
    got, dense = costs.cost(policy.kept, policy.w_bits, policy.a_bits), costs.dense
    expected = {"macs": got.macs / dense.macs, "size": got.size_bits / dense.size_bits}
    for n in ("macs", "size"):
        assert info["budgets"][n]["target"] == {"macs": 0.5, "size": 0.2}[n]
        assert expected[n] <= info["budgets"][n]["target"]
        assert info["budgets"][n]["achieved"] == pytest.approx(expected[n])
        assert info[f"ratio/{n}"] == pytest.approx(expected[n])
    compressed = env.compressor.apply(policy)
    with torch.no_grad():
        top1 = (compressed(env.search_x).argmax(1) == env.search_y).float().mean().item()
    assert info["accuracy"] == pytest.approx(top1)
    assert reward == pytest.approx(top1)  # the default reward is accuracy
    assert len(info["policy"]["units"]) == env.n_units
    assert {"selection", "quantization", "calibration", "evaluation"} <= set(info["timing"])
    assert 0.0 <= info["accuracy"] <= 1.0


def test_same_seed_same_actions_same_everything() -> None:
    def run() -> tuple[list[np.ndarray], float, dict]:
        env = make_small_env("joint", {"macs": 0.5})
        rng = np.random.default_rng(7)
        obs, _ = env.reset(seed=11)
        trace, done, info, reward = [obs], False, {}, 0.0
        while not done:
            obs, reward, done, _, info = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
            trace.append(obs)
        return trace, reward, info["policy"]

    t1, r1, p1 = run()
    t2, r2, p2 = run()
    assert all(np.array_equal(a, b) for a, b in zip(t1, t2))
    assert r1 == r2 and p1 == p2


def test_unreachable_budget_names_smallest_ratio() -> None:
    with pytest.raises(AmcError, match=r"unreachable: the smallest reachable ratio is 0\.\d+"):
        make_small_env("prune", {"macs": 0.001})
    with pytest.raises(AmcError, match="needs a hardware model"):
        make_small_env("joint", {"latency": 0.5})
    with pytest.raises(AmcError, match="unknown mode"):
        make_small_env("shrink", {})


def test_bit_levels_and_action_mapping() -> None:
    assert bit_levels(2, 8) == [2, 3, 4, 5, 6, 7, 8]
    assert bit_levels(4, 8, allow_fp32=True)[-1] == FP32
    assert [action_to_level(a, 4) for a in (-1.0, -0.49, 0.0, 0.49, 0.51, 1.0)] == [0, 1, 2, 2, 3, 3]
    with pytest.raises(AmcError, match=r"bit range 6..4 is invalid; use 2 <= min_bits <= max_bits <= 16"):
        bit_levels(6, 4)


def test_fp32_is_an_explicit_top_level() -> None:
    env = make_small_env("quantize", {}, allow_fp32=True)
    env.reset()
    for _ in range(env.n_units):
        env.decide(np.ones(2))
    assert set(env.w.tolist()) == {FP32} and set(env.a.tolist()) == {FP32}


def test_weight_only_quantization_keeps_activations_float() -> None:
    assert bit_levels(FP32, FP32) == [FP32]
    env = make_small_env("quantize", {"size": 0.3}, a_bits=(FP32, FP32))
    env.reset()
    for _ in range(env.n_units):
        env.decide(-np.ones(2))
    assert set(env.a.tolist()) == {FP32} and max(env.w.tolist()) < FP32


# --- what compression does ---------------------------------------------------------------------
class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


def hand_built() -> TwoLayer:
    m = TwoLayer().eval()
    with torch.no_grad():
        m.conv1.weight.zero_()
        for c, scale in enumerate([0.5, 3.0, 0.1, 2.0]):  # L1 order: 1 > 3 > 0 > 2
            m.conv1.weight[c] = scale
        m.bn.weight.copy_(torch.tensor([5.0, 0.2, 4.0, 0.1]))  # BN order: 0 > 2 > 1 > 3
        m.bn.bias.zero_()
        m.conv2.weight.zero_()
        m.conv2.weight[:, 3] = 1.0  # only channel 3 reaches the output...
        m.conv2.weight[:, 0] = 0.01  # ...channel 0 a little
    return m


def test_selection_keeps_the_right_channels() -> None:
    m = hand_built()
    graph = build_graph(m, (1, 6, 6))
    g = graph.units[0].out_group
    top2 = {
        meth: set(torch.topk(channel_scores(meth, m, graph, [torch.rand(8, 1, 6, 6) + 0.1])[g], 2).indices.tolist())
        for meth in ("l1", "l2", "bn", "thinet")
    }
    assert top2["l1"] == top2["l2"] == {1, 3}
    assert top2["bn"] == {0, 2}
    assert top2["thinet"] == {3, 0}  # the channels the next layer actually uses


def test_reconstruction_lowers_next_layer_error() -> None:
    torch.manual_seed(0)
    model = build_model("fmnist_cnn", num_classes=10, in_channels=1).eval()
    graph = build_graph(model, (1, 28, 28))
    calib = [torch.randn(32, 1, 28, 28) for _ in range(2)]
    kept = graph.channels_from_ratios([0.5] * len(graph.groups))
    policy = Policy(kept, [FP32] * len(graph.units), [FP32] * len(graph.units))
    target_unit = graph.units[2]  # a conv whose input group is pruned by half

    def layer_error(reconstruction: bool) -> float:
        comp = Compressor(
            model,
            graph,
            calibration=calib,
            bn_recalibration=False,
            reconstruction=reconstruction,
            reconstruction_samples=3000,
        )
        pruned = comp.apply(policy)
        keep = comp.keep(policy)
        # Feed the pruned layer the dense input restricted to the kept channels; compare its kept outputs.
        x = {}
        h = dict(model.named_modules())[target_unit.name].register_forward_pre_hook(
            lambda _m, i: x.setdefault("in", i[0])
        )
        model(torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(5)))
        h.remove()
        dense_out = dict(model.named_modules())[target_unit.name](x["in"])[:, keep[target_unit.out_group]]
        cols = target_unit.kept_inputs(keep)
        out = dict(pruned.named_modules())[target_unit.name](x["in"][:, cols])
        return float(((out - dense_out) ** 2).mean().detach())

    assert layer_error(True) < 0.5 * layer_error(False)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
def test_quantized_weights_have_at_most_2_pow_bits_values_per_channel(bits: int, symmetric: bool) -> None:
    w = torch.randn(6, 5, 3, 3)
    q = quantize_weight(w, bits, symmetric)
    for c in range(w.shape[0]):
        assert q[c].unique().numel() <= 2**bits
    assert (q - w).abs().max() <= w.abs().max() / (2 ** (bits - 1) - 1 if symmetric else (2**bits - 1) / 2) + 1e-6
    assert torch.equal(quantize_weight(w, FP32), w)


@pytest.mark.parametrize("factory", [lambda: build_model("resnet20", num_classes=10, in_channels=1), ConcatNet])
def test_sliced_model_equals_masked_model(factory) -> None:
    torch.manual_seed(0)
    model = factory().eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    shape = (1, 28, 28) if not isinstance(model, ConcatNet) else (1, 16, 16)
    graph = build_graph(model, shape)
    comp = Compressor(model, graph, bn_recalibration=False)
    kept = graph.channels_from_ratios(list(np.random.default_rng(0).uniform(0.3, 0.9, len(graph.groups))))
    policy = Policy(kept, [FP32] * len(graph.units), [FP32] * len(graph.units))
    sliced = comp.apply(policy)
    keep = comp.keep(policy)
    masked = copy.deepcopy(model)
    mods = dict(masked.named_modules())
    with torch.no_grad():
        for u in graph.units:  # zero every consumer's input columns of removed channels
            cols = set(u.kept_inputs(keep))
            drop = [c for c in range(u.in_channels) if c not in cols]
            if drop and not u.depthwise:
                mods[u.name].weight[:, drop] = 0.0
    x = torch.randn(8, *shape)
    assert torch.allclose(sliced(x), masked(x), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in sliced.parameters()) < sum(p.numel() for p in model.parameters())


def test_policy_round_trip_and_mismatch() -> None:
    model = build_model("fmnist_cnn", num_classes=10, in_channels=1)
    graph = build_graph(model, (1, 28, 28))
    policy = Policy(
        graph.channels_from_ratios([0.5] * len(graph.groups)), [4] * len(graph.units), [8] * len(graph.units)
    )
    assert Policy.from_dict(policy.to_dict(graph), graph) == policy
    other = build_graph(build_model("resnet20", num_classes=10, in_channels=1), (1, 28, 28))
    with pytest.raises(AmcError, match="another model|groups"):
        Policy.from_dict(policy.to_dict(graph), other)
    bad = policy.to_dict(graph)
    bad["groups"][-1]["kept"] = 3  # the classifier's outputs are not prunable
    with pytest.raises(AmcError, match="not allowed"):
        Policy.from_dict(bad, graph)


def test_prune_model_rejects_wrong_lengths() -> None:
    model = build_model("fmnist_cnn", num_classes=10, in_channels=1)
    graph = build_graph(model, (1, 28, 28))
    with pytest.raises(ValueError, match=r"expected keep indices for \d+ groups, got 0"):
        prune_model(model, graph, [])


def _fmnist_cnn_and_batch() -> tuple[nn.Module, ModelGraph, torch.Tensor, torch.Tensor]:
    """A seeded, untrained fmnist_cnn (it has dropout), its graph and 64 random labelled images."""
    torch.manual_seed(0)
    model = build_model("fmnist_cnn", num_classes=10, in_channels=1).eval()
    graph = build_graph(model, (1, 28, 28))
    gen = torch.Generator().manual_seed(0)
    return model, graph, torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)


def test_per_episode_finetune_keeps_weights_on_the_grid_and_helps() -> None:
    model, graph, x, y = _fmnist_cnn_and_batch()
    batches = [(x[i : i + 32], y[i : i + 32]) for i in (0, 32)] * 5
    policy = Policy(
        graph.channels_from_ratios([0.5] * len(graph.groups)), [4] * len(graph.units), [8] * len(graph.units)
    )
    plain = Compressor(model, graph, calibration=[x[:32]], bn_recalibration=False)
    tuned = Compressor(
        model, graph, calibration=[x[:32]], bn_recalibration=False, finetune_batches=batches, finetune_lr=0.05
    )
    timing: dict[str, float] = {}
    m_plain, m_tuned = plain.apply(policy), tuned.apply(policy, timing)
    assert timing["finetune"] > 0
    loss = [float(nn.functional.cross_entropy(m(x), y).detach()) for m in (m_plain, m_tuned)]
    assert loss[1] < loss[0]  # it fits the fine-tune batches better
    for u in graph.units:  # and every weight is still 4-bit
        w = dict(m_tuned.named_modules())[u.name].weight
        assert all(w[c].unique().numel() <= 2**4 for c in range(w.shape[0]))


def test_per_episode_finetune_scores_a_policy_the_same_whatever_the_global_generator() -> None:
    """fmnist_cnn has dropout: the short fine-tune draws it from its own seed (the evaluation cache relies on it)."""
    model, graph, x, y = _fmnist_cnn_and_batch()
    batches = [(x[i : i + 32], y[i : i + 32]) for i in (0, 32)] * 3
    n = len(graph.units)
    policy = Policy(graph.channels_from_ratios([0.5] * len(graph.groups)), [8] * n, [8] * n)
    tuned = Compressor(model, graph, calibration=[x[:32]], finetune_batches=batches, finetune_lr=0.05, seed=3)
    outs = []
    for draw in (1, 2):
        torch.manual_seed(draw)  # a different global generator state before each episode
        before = torch.random.get_rng_state()
        compressed = tuned.apply(policy)
        assert torch.equal(torch.random.get_rng_state(), before)  # the caller's generator is left as it was
        with torch.no_grad():
            outs.append(compressed(x))
    assert torch.equal(outs[0], outs[1])
    other = Compressor(model, graph, calibration=[x[:32]], finetune_batches=batches, finetune_lr=0.05, seed=4)
    compressed = other.apply(policy)
    with torch.no_grad():
        assert not torch.equal(compressed(x), outs[0])  # the seed is what decides the dropout masks


class NaNWhenPruned(nn.Module):
    """A conv net whose outputs turn NaN once its conv keeps fewer than ``limit`` channels."""

    def __init__(self, limit: int = 6) -> None:
        super().__init__()
        self.limit = limit
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.shape[1] < self.limit:
            y = y * float("nan")
        return self.fc(self.flatten(self.pool(y)))


@pytest.mark.parametrize("nonfinite", ["skip", "fail"])
def test_nan_outputs_fail_the_episode_or_the_search(nonfinite: str) -> None:
    env = make_small_env("prune", {}, model=NaNWhenPruned(), nonfinite=nonfinite)
    ok = env.evaluate(Policy([8, 10], [FP32, FP32], [FP32, FP32]))
    assert "failed" not in ok and np.isfinite(ok["accuracy"])
    broken = Policy([4, 10], [FP32, FP32], [FP32, FP32])
    if nonfinite == "fail":
        with pytest.raises(AmcError, match="NaN/inf outputs"):
            env.evaluate(broken)
        return
    info = env.evaluate(broken)
    assert info["failed"] and info["reward"] == 0.0 and np.isnan(info["accuracy"])
    assert env.nonfinite_episodes == 1


def test_nan_baseline_is_refused() -> None:
    model = build_model("fmnist_cnn", num_classes=10, in_channels=1)
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(AmcError, match="uncompressed model gives NaN/inf"):
        make_small_env("prune", {}, model=model)


# --- how the problem is posed: action levels, the wall, the reference ----------------------------------
def test_hardware_levels_drop_what_a_higher_level_matches_on_bit_bricks() -> None:
    """BitFusion's 2/4/8-bit bricks: under a latency budget 3 bits cost what 4 do and 5-7 what 8 do."""
    env = make_small_env("quantize", {"latency": 0.9}, preset="bitfusion_edge")
    hw = env.evaluator.hardware
    assert hw is not None
    for t in range(env.n_units):
        kept = env.w_choices[t]
        # Independent check on the layer's own latency at dense channels, activations at 8 bits.
        lat = {b: hw.layer_cost(t, None, None, b, 8).latency_s for b in env.w_levels}
        for b in env.w_levels:
            if b not in kept:
                assert any(lat[c] <= lat[b] for c in kept if c > b), (t, b, lat)
        assert kept[-1] == 8
    # Compute-bound units run 3 bits as 4 and 5-7 as 8.
    assert sum(c == [2, 4, 8] for c in env.w_choices) >= env.n_units // 2
    assert env.uniform_solution().w_bits[1] in env.w_choices[1]


def test_levels_stay_where_every_level_costs_differently() -> None:
    """BISMO is bit-serial: every extra bit costs cycles, so no level is dominated; levels=all keeps HAQ's bins."""
    env = make_small_env("quantize", {"latency": 0.9}, preset="bismo_edge")
    assert all(c == [2, 3, 4, 5, 6, 7, 8] for c in env.w_choices + env.a_choices)
    env = make_small_env("quantize", {"latency": 0.9}, preset="bitfusion_edge", levels="all")
    assert all(c == [2, 3, 4, 5, 6, 7, 8] for c in env.w_choices + env.a_choices)


def test_activation_bits_are_free_under_a_size_budget() -> None:
    """Model size counts weights only: every activation level below the top is dominated."""
    env = make_small_env("quantize", {"size": 0.2})
    assert all(c == [8] for c in env.a_choices) and all(c == [2, 3, 4, 5, 6, 7, 8] for c in env.w_choices)


@pytest.mark.parametrize("wall", ["repair", "reserve", "front"])
@pytest.mark.parametrize(
    ("mode", "budgets", "preset"),
    [("joint", {"latency": 0.35}, "bitfusion_edge"), ("joint", {"macs": 0.4, "size": 0.1}, None)],
)
def test_action_zero_is_the_reference_and_any_legal_policy_is_reachable(
    wall: str, mode: str, budgets: dict, preset: str | None
) -> None:
    env = make_small_env(mode, budgets, preset=preset, wall=wall)
    ref = env.reference
    assert ref is not None and env.wall.feasible(ref.kept, ref.w_bits, ref.a_bits)
    env.reset()
    for _ in range(env.n_units):
        env.decide(np.zeros(env.action_dim))
    assert env.policy() == ref
    # actions_for inverts the mapping for any legal configuration (here: random legal ones via the wall).
    rng = np.random.default_rng(1)
    for _ in range(5):
        env.reset()
        for _ in range(env.n_units):
            env.decide(rng.uniform(-1, 1, env.action_dim))
        target = env.policy()
        with env.unclipped():
            env.reset()
            for a in env.actions_for(target.kept, target.w_bits, target.a_bits):
                env.decide(a)
        assert env.policy() == target


def test_anchored_map_is_piecewise_linear_with_zero_at_the_reference() -> None:
    assert [anchored_position(a, 0.3, 0.2, 1.0) for a in (-1, -0.5, 0, 0.5, 1)] == pytest.approx(
        [0.2, 0.25, 0.3, 0.65, 1.0]
    )
    for pos in (0.2, 0.27, 0.3, 0.8, 1.0):
        assert anchored_position(anchored_action(pos, 0.3, 0.2, 1.0), 0.3, 0.2, 1.0) == pytest.approx(pos)
    assert anchored_action(0.5, 0.5, 0.5, 0.5) == 0.0  # a degenerate range maps to 0


def test_repair_takes_back_what_was_asked_above_the_reference_from_the_last_unit() -> None:
    env = make_small_env("quantize", {"latency": 0.35}, preset="bitfusion_edge", wall="repair")
    ref = env.reference
    assert ref is not None
    env.reset()
    for _ in range(env.n_units):
        env.decide(np.ones(2))  # everything at the top: far over budget
    w, a = env.w.tolist(), env.a.tolist()
    assert env.wall.feasible(env.kept, env.w, env.a)
    # The first units keep their wish; from the last unit backwards the bits went back to the reference.
    assert w[0] == env.w_choices[0][-1] or w[0] == ref.w_bits[0]
    changed = [t for t in range(env.n_units) if (w[t], a[t]) != (env.w_choices[t][-1], env.a_choices[t][-1])]
    assert changed and changed == list(range(changed[0], env.n_units))
    assert all(w[t] >= ref.w_bits[t] and a[t] >= ref.a_bits[t] for t in range(env.n_units))
    # Taken back to the reference itself, not a level at a time: weights first, so every changed unit after
    # the first is at the reference's bits and the first at least in its weights.
    assert w[changed[0]] == ref.w_bits[changed[0]]
    assert all((w[t], a[t]) == (ref.w_bits[t], ref.a_bits[t]) for t in changed[1:])
    # Without a reference HAQ's repair lowers bits from the last unit: the last unit ends at or below its wish.
    env = make_small_env("quantize", {"latency": 0.35}, preset="bitfusion_edge", wall="repair", reference="none")
    env.reset()
    for _ in range(env.n_units):
        env.decide(np.ones(2))
    assert env.wall.feasible(env.kept, env.w, env.a) and env.w[-1] < env.w_choices[-1][-1]


def test_reserve_wall_keeps_the_reference_for_undecided_units() -> None:
    env = make_small_env("joint", {"latency": 0.35}, preset="bitfusion_edge", wall="reserve")
    ref = env.reference
    assert ref is not None
    env.reset()
    env.decide(np.ones(3))  # the first unit asks for everything
    # ... but may only take what leaves the undecided units their reference share.
    rest_w = env.w.copy()
    assert np.array_equal(rest_w[1:], np.array(ref.w_bits[1:]))
    assert env.wall.feasible(env.kept, env.w, env.a)
    obs = env.observation()
    legal = obs[19:22]
    assert np.all((legal >= 0) & (legal <= 1))


def test_bad_problem_options_are_refused_in_one_line() -> None:
    for key, value in (("wall", "soft"), ("levels", "some"), ("reference", "greedy")):
        with pytest.raises(AmcError, match=rf"env.{key}='{value}' is not an option"):
            make_small_env("joint", {"macs": 0.5}, **{key: value})


@pytest.mark.parametrize(
    ("preset", "widest"),
    [
        ("bitfusion_edge", None),
        ("bismo_edge", None),
        ("gpu_roofline", None),
        ("eyeriss_like", None),
        ("systolic_ws_32x32", 8),
        ("npu_int8_int4", 8),
    ],
)
def test_bits_up_to_16_run_on_every_preset_that_can_run_them(preset: str, widest: int | None) -> None:
    from amc.errors import AmcError

    if widest is not None:  # a datapath narrower than the range: refused, naming the preset and the fix
        with pytest.raises(
            AmcError, match=rf"preset '{preset}' runs at most {widest}-bit integers .* at most {widest}"
        ):
            make_small_env("quantize", {"latency": 0.9}, preset=preset, w_bits=(2, 16), a_bits=(2, 16))
        return
    env = make_small_env("quantize", {"latency": 0.9}, preset=preset, w_bits=(2, 16), a_bits=(2, 16), levels="all")
    env.reset()
    done, info = False, {}
    while not done:  # the widest bits everywhere: costed (Bit Fusion in passes), the wall brings them down
        _, _, done, _, info = env.step(np.ones(env.action_dim, dtype=np.float32))
    assert info["ratio/latency"] <= 0.9 and max(env.policy().w_bits) <= 16
