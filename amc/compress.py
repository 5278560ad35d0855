"""Apply a compression policy: select channels, prune physically, reconstruct, quantize, recalibrate BN.

This is the one path from a policy to a compressed model: the environment evaluates what it returns,
and the finetune command starts from the same model, so the reward and the deployable network agree.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from amc.cost import FP32
from amc.errors import AmcError
from amc.evaluate import accuracy
from amc.graph import ModelGraph
from amc.pruning import keep_indices, prune_model
from amc.quantize import ActivationQuantizer, activation_quantizers, calibrate_ranges, quantize_model, quantize_weight
from amc.selection import channel_scores, sample_unit_inputs


@dataclass
class Policy:
    """A compression decision: kept channels per group, weight/activation bits per unit (32 = float).

    Attributes:
        kept: kept channels per group.
        w_bits: weight bits per unit.
        a_bits: activation bits per unit.
    """

    kept: list[int]
    w_bits: list[int]
    a_bits: list[int]

    @classmethod
    def of(cls, kept: Sequence[Any], w_bits: Sequence[Any], a_bits: Sequence[Any]) -> Policy:
        """A policy from any integer-like sequences (NumPy arrays, tensors, lists), stored as Python ints.

        Args:
            kept: kept channels per group.
            w_bits: weight bits per unit.
            a_bits: activation bits per unit.
        """
        return cls([int(k) for k in kept], [int(b) for b in w_bits], [int(b) for b in a_bits])

    @classmethod
    def dense(cls, graph: ModelGraph) -> Policy:
        """The uncompressed policy of a graph."""
        n = len(graph.units)
        return cls(graph.full_channels(), [FP32] * n, [FP32] * n)

    def validate(self, graph: ModelGraph) -> None:
        """Raise :class:`AmcError` when the policy does not fit ``graph``."""
        if (
            len(self.kept) != len(graph.groups)
            or len(self.w_bits) != len(graph.units)
            or len(self.a_bits) != len(graph.units)
        ):
            raise AmcError(
                f"policy has {len(self.kept)} groups/{len(self.w_bits)} units but the model has "
                f"{len(graph.groups)}/{len(graph.units)}; use a policy searched on this model"
            )
        for g, k in zip(graph.groups, self.kept):
            if not 1 <= k <= g.channels or (not g.prunable and k != g.channels):
                raise AmcError(
                    f"policy keeps {k} of {g.channels} channels in group {g.root!r}, which is not allowed; "
                    "use a policy searched on this model"
                )

    def to_dict(self, graph: ModelGraph) -> dict[str, Any]:
        """JSON-ready form with names and channel counts (read back by :meth:`from_dict`)."""
        c_in = {u.index: u.in_channels for u in graph.units}
        kept_in = _unit_inputs(graph, self.kept)
        return {
            "groups": [
                {"root": g.root, "channels": g.channels, "kept": int(k)} for g, k in zip(graph.groups, self.kept)
            ],
            "units": [
                {
                    "name": u.name,
                    "in_channels": int(kept_in[u.index]),
                    "out_channels": int(self._out(u)),
                    "dense_in_channels": c_in[u.index],
                    "dense_out_channels": u.out_channels,
                    "w_bits": int(w),
                    "a_bits": int(a),
                }
                for u, w, a in zip(graph.units, self.w_bits, self.a_bits)
            ],
        }

    def _out(self, unit: Any) -> int:
        return self.kept[unit.out_group] if unit.out_group is not None else unit.out_channels

    @classmethod
    def from_dict(cls, data: dict[str, Any], graph: ModelGraph) -> Policy:
        """Read a policy written by :meth:`to_dict`, checking it belongs to ``graph``'s model.

        Args:
            data: the parsed JSON.
            graph: the model's graph.
        """
        try:
            groups, units = data["groups"], data["units"]
            roots = [g["root"] for g in groups]
            names = [u["name"] for u in units]
            policy = cls(
                [int(g["kept"]) for g in groups], [int(u["w_bits"]) for u in units], [int(u["a_bits"]) for u in units]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AmcError(
                f"policy is malformed ({type(exc).__name__}: {exc}); use a best_policy.json written by amc"
            ) from exc
        if roots != [g.root for g in graph.groups] or names != [u.name for u in graph.units]:
            raise AmcError("policy was searched on another model (layer names differ); use the policy of this model")
        policy.validate(graph)
        return policy

    @classmethod
    def load(cls, path: str | Path, graph: ModelGraph) -> Policy:
        """Read a policy JSON file (a ``best_policy.json`` or a bare policy)."""
        return cls.from_dict(read_policy_json(path), graph)


def read_policy_json(path: str | Path) -> dict[str, Any]:
    """The policy mapping (``{"groups": [...], "units": [...]}``) of a ``best_policy.json`` or a bare policy file.

    Args:
        path: the JSON file.
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AmcError(f"cannot read policy {path} ({type(exc).__name__}); point to a best_policy.json") from exc
    policy = data.get("policy", data) if isinstance(data, dict) else data
    if not isinstance(policy, dict) or not isinstance(policy.get("units"), list):
        raise AmcError(
            f"policy {path} holds a {type(policy).__name__}, not a policy mapping with groups and units; "
            "point to a best_policy.json written by amc.train"
        )
    return policy


def _unit_inputs(graph: ModelGraph, kept: Sequence[int]) -> list[int]:
    return [u.fixed_in + sum(kept[g] * m for g, m in u.in_groups) for u in graph.units]


def _tracking_bns(model: nn.Module) -> list[nn.Module]:
    """``model``'s BatchNorm layers that keep running statistics (the ones calibration re-estimates)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class _BatchStatistics:
    """BatchNorm layers in train mode normalising by batch statistics that are reduced in float32 on CPU.

    PyTorch's CPU kernel reduces an NCHW batch's mean and variance one channel at a time in a scalar
    double-precision loop: on a 128 x 16 x 28 x 28 batch (ResNet-20's first stage on Fashion-MNIST, one
    thread) it took 2.2 ms, against 0.2 ms for the same layer in eval mode and 0.55 ms here
    (``torch.profiler`` over a whole calibration pass: BatchNorm was 34 % of it, 6 % of an evaluation),
    the cost that made a calibration pass 1.5x an evaluation per image (1.2x with this). Here the
    statistics are two vectorised float32 reductions (mean, then the centred sum of squares, as the
    kernel does), written into the layer's running buffers so that its eval-mode kernel normalises by
    them, and the running statistics are then updated with the kernel's rule (``momentum``, or the
    cumulative average when it is ``None``; unbiased variance), so between batches the layer holds what
    a train-mode forward leaves. Results agree with the kernel to float32 rounding (a few units in the
    last place), not bit for bit.

    Applies to contiguous (NCHW) float32 CPU inputs with more than one value per channel and gradients
    off (a backward pass through the batch statistics needs the kernel); any other call runs the kernel
    unchanged, channels-last inputs among them (the kernel reduces those vectorised: 0.96 ms against
    0.82 ms here on the layer above, and faster than this on smaller layers). A layer in eval mode (e.g.
    after ``model.eval()``) is left alone.
    """

    def __init__(self, bns: Sequence[nn.Module]) -> None:
        self._pending: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = []
        for m in bns:
            self._handles.append(m.register_forward_pre_hook(self._before))
            self._handles.append(m.register_forward_hook(self._after))

    def _before(self, m: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if (
            not m.training
            or not isinstance(x, torch.Tensor)
            or x.device.type != "cpu"
            or x.dtype != torch.float32
            or x.dim() < 2
            or not x.is_contiguous()  # channels-last: the kernel's own vectorised reduction is as fast
            or torch.is_grad_enabled()
        ):
            return
        n = x.numel() // x.shape[1]
        if n <= 1:  # the kernel raises its own error
            return
        dims = [0, *range(2, x.dim())]
        mean = x.sum(dims).div_(n)
        centred = x - mean.view(1, -1, *([1] * (x.dim() - 2)))
        var_sum = centred.mul_(centred).sum(dims)
        f = 1.0 / float(m.num_batches_tracked + 1) if m.momentum is None else float(m.momentum)
        running_mean = mean * f + m.running_mean * (1.0 - f)
        running_var = var_sum / (n - 1) * f + m.running_var * (1.0 - f)
        self._pending[m] = (running_mean, running_var)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var_sum.div_(n))  # biased, as training-mode normalisation uses
        m.training = False

    def _after(self, m: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        pending = self._pending.pop(m, None)
        if pending is None:
            return
        m.running_mean.copy_(pending[0])
        m.running_var.copy_(pending[1])
        m.num_batches_tracked += 1
        m.training = True

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@contextlib.contextmanager
def _calibrating(
    model: nn.Module, quantizers: Sequence[ActivationQuantizer], bn: bool = True
) -> Iterator[Callable[[], None]]:
    """BatchNorm layers re-estimating their statistics (cumulatively, from zero) and ``quantizers`` measuring.

    Yields ``after_batch``, to call after each batch: it freezes every quantizer that has seen a non-zero
    input. On exit the statistics are kept, every quantizer is frozen and the model is in eval mode.
    """
    bns = _tracking_bns(model) if bn else []
    model.eval()
    saved = []
    for m in bns:
        saved.append(m.momentum)
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all calibration batches
        m.train()
    for q in quantizers:
        q.calibrating = q.running = True
    statistics = _BatchStatistics(bns)

    def after_batch() -> None:
        # Ranges come from the first batch (a unit that has seen only zeros keeps looking) and are
        # frozen from then on, so every batch's statistics are measured with the final ranges.
        for q in quantizers:
            if q.max_abs > 0.0:
                q.calibrating = q.running = False

    try:
        yield after_batch
    finally:
        statistics.remove()
        for q in quantizers:
            q.calibrating = q.running = False
        for m, mom in zip(bns, saved):
            m.momentum = mom
            m.eval()


def recalibrate_bn(
    model: nn.Module, batches: Sequence[torch.Tensor], quantizers: Sequence[ActivationQuantizer] = ()
) -> None:
    """Re-estimate BatchNorm running statistics on ``batches`` (adaptive BN, EagleEye, Li et al. 2020).

    Only the BatchNorm layers run in train mode (on CPU with their batch statistics reduced by
    :class:`_BatchStatistics`); dropout and the rest stay in eval mode. Activation
    ``quantizers`` given here are calibrated in the same pass (``amc.quantize``'s running calibration):
    each unit's range is measured on the first batch, on what the re-normalising BatchNorm layers and
    the quantized units before it produce, then frozen, so every batch's statistics are measured with
    the final ranges. One pass instead of two (ranges, then statistics), and the ranges no longer come
    from the statistics that are about to be replaced. Against a fixed point of the two (re-measured in
    turn until each is measured under the other) on 30 random joint policies it is the closer one:
    Spearman 0.988 against 0.962 for ranges-then-statistics, largest difference 8.4 points against 17.9
    (``python experiments/calibration_fidelity.py --policies 30``).

    Args:
        model: the model, modified in place and left in eval mode.
        batches: input batches.
        quantizers: activation quantizers attached to ``model`` to calibrate in the same pass (fresh
            ones; a unit whose first batch was all zeros keeps measuring until it sees a non-zero input).
    """
    if not _tracking_bns(model) or not batches:
        if quantizers:  # ranges alone (none without batches: the quantizers then pass their inputs through)
            calibrate_ranges(model, quantizers, batches, running=True)
        return
    with torch.no_grad(), _calibrating(model, quantizers) as after_batch:
        for x in batches:
            model(x)
            after_batch()


def search_calibration_sample(n: int, size: int, seed: int) -> torch.Tensor:
    """Which search-split images calibrate a model under ``env.calibration_set=search``: sorted indices.

    A seeded random ``min(n, size)`` of the ``n`` images, not the first ones: a split stored class by
    class (an image folder's order) would otherwise calibrate on one class.

    Args:
        n: search-split size.
        size: images wanted (the evaluation batch size).
        seed: the compressor's seed.
    """
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=gen)[: min(n, size)].sort().values


def calibrate_on_search_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device | str,
    bn: bool = True,
    seed: int = 0,
) -> float:
    """Search accuracy of a model whose BN statistics and activation ranges come from one batch of the split itself.

    ``env.calibration_set=search``: instead of a separate pass over training images
    (:func:`recalibrate_bn`), one batch of the search split (``batch_size`` images drawn by
    :func:`search_calibration_sample`) calibrates the model in the evaluation's own forward pass
    (prediction-time BatchNorm, Nado et al. 2020, "Evaluating prediction-time batch normalization for
    robustness under covariate shift"; the labels are not used). That batch is evaluated first,
    normalised by its own statistics (biased variance, as BatchNorm does in training), which become the
    running statistics (unbiased) for the rest of the split; each activation quantizer quantizes it with
    the range it measures on it. Every image is evaluated once: an episode costs one evaluation.

    Args:
        model: a compressed model whose BatchNorm layers and activation quantizers are still to be
            calibrated (``Compressor.apply(..., calibrate=False)``); calibrated here in place.
        x: search-split inputs, ``[N, ...]``.
        y: their labels, ``[N]``.
        batch_size: evaluation batch size, also the calibration batch's (``min(N, batch_size)`` images).
        device: where to run.
        bn: re-estimate the BatchNorm statistics (``env.bn_recalibration``); the ranges are measured
            either way.
        seed: seed of the calibration batch's draw.

    Returns:
        top-1 accuracy in [0, 1], or NaN when any output is NaN/inf (as
        :func:`amc.evaluate.search_accuracy`).
    """
    n = len(y)
    if n == 0:
        raise ValueError("no samples to evaluate")
    model.to(device)
    sample = search_calibration_sample(n, batch_size, seed)
    rest = torch.ones(n, dtype=torch.bool)
    rest[sample] = False
    others_idx = torch.nonzero(rest).squeeze(1).to(x.device)
    idx = sample.to(x.device)
    fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) else None

    def gather(j: torch.Tensor) -> torch.Tensor:  # in the split's memory order (index_select makes it NCHW)
        xb = x.index_select(0, j)
        return xb.contiguous(memory_format=fmt) if fmt is not None else xb

    # The other images in their order, in full batches, each gathered (copied) only when it is evaluated.
    batches = ((gather(j), y.index_select(0, j)) for j in others_idx.split(batch_size))
    quantizers = [q for q in activation_quantizers(model).values() if q.calibrating]
    with _calibrating(model, quantizers, bn) as after_batch:
        first = accuracy(model, [(gather(idx), y[idx])], device, train_mode=True)
        after_batch()
        others = accuracy(model, batches, device) if len(others_idx) else None
    if first["nonfinite"] or (others is not None and others["nonfinite"]):
        return float("nan")
    k = len(sample)
    return (first["top1"] * k + (others["top1"] * (n - k) if others is not None else 0.0)) / n


@dataclass
class _Features:
    x: torch.Tensor  # [S, in_channels * k] sampled (unfolded) dense inputs
    y: torch.Tensor  # [S, out_channels] dense outputs without bias
    k: int


@dataclass
class Compressor:
    """Turns policies into compressed copies of a dense model.

    Args:
        model: the dense, trained model (never modified).
        graph: its graph.
        selection: channel selection method (``l1``, ``l2``, ``bn``, ``thinet``).
        calibration: input batches from the training data, used for activation ranges, BN
            recalibration, ThiNet and reconstruction features.
        bn_recalibration: re-estimate BatchNorm statistics after compression.
        reconstruction: least-squares reconstruction of each pruned layer's consumers (AMC).
        reconstruction_samples: sampled positions for the least-squares problems.
        symmetric: symmetric (default) or asymmetric weight quantization.
        seed: seed of the position sampling.
        finetune_batches: labelled training batches for a short fine-tune inside every episode (HAQ's
            per-episode fine-tune; empty: off). It runs after quantization with the fake-quant ops'
            straight-through gradients, and the weights are re-quantized afterwards.
        finetune_lr: SGD learning rate of that fine-tune.
        calibration_set: where a search episode measures the BN statistics and activation ranges of
            its model: ``train`` (the ``calibration`` batches, a pass of their own in :meth:`apply`) or
            ``search`` (one batch of the search split, inside the evaluation:
            :func:`calibrate_on_search_batch`). Only the search's scoring reads it
            (:func:`amc.envs.pool.measure_accuracy`); :meth:`apply` always calibrates on ``calibration``
            unless told not to, so fine-tuned and exported models never depend on it.
        channels_last: put every compressed model's 4-D weights in channels-last (NHWC) memory order,
            for inputs in that order (``env.memory_format``, chosen by :func:`amc.envs.make_env`).
    """

    model: nn.Module
    graph: ModelGraph
    selection: str = "l1"
    calibration: list[torch.Tensor] = field(default_factory=list)
    bn_recalibration: bool = True
    reconstruction: bool = False
    reconstruction_samples: int = 2000
    symmetric: bool = True
    seed: int = 0
    finetune_batches: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)
    finetune_lr: float = 0.01
    calibration_set: str = "train"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.calibration_set not in ("train", "search"):
            raise AmcError(
                f"env.calibration_set={self.calibration_set!r} is not an option; choose one of train, search"
            )
        self.model.eval()
        self.scores = channel_scores(self.selection, self.model, self.graph, self.calibration)
        self.example = torch.zeros((1, *self.graph.input_shape), device=next(self.model.parameters()).device)
        self._features: dict[int, _Features] = self._capture_features() if self.reconstruction else {}

    def keep(self, policy: Policy) -> list[torch.Tensor]:
        """Indices of the channels each group keeps under ``policy``."""
        return keep_indices(self.scores, policy.kept)

    def apply(
        self,
        policy: Policy,
        timing: dict[str, float] | None = None,
        calibrate: bool = True,
        channels_last: bool | None = None,
    ) -> nn.Module:
        """A compressed copy of the model (in eval mode) for ``policy``.

        Args:
            policy: the decision.
            timing: when given, seconds spent per phase are added to it (selection, reconstruction,
                quantization: the weights, finetune, calibration: BN statistics and activation ranges).
            calibrate: measure the BN statistics and activation ranges on the calibration batches;
                ``False`` leaves them to the caller (:func:`calibrate_on_search_batch`), except the
                ranges a per-episode fine-tune needs before it starts.
            channels_last: the model's memory order (``None``: the compressor's ``channels_last``). The
                search's test accuracy asks for NCHW, so that it is the number ``amc.finetune`` reports
                for the same policy whatever ``env.memory_format`` the search ran in.
        """
        nhwc = self.channels_last if channels_last is None else channels_last
        calibration, finetune = self.calibration, self.finetune_batches
        if nhwc != self.channels_last:  # the batches in the model's order, so the arithmetic is that order's
            order = torch.channels_last if nhwc else torch.contiguous_format
            calibration = [x.contiguous(memory_format=order) if x.dim() == 4 else x for x in calibration]
            finetune = [(x.contiguous(memory_format=order) if x.dim() == 4 else x, y) for x, y in finetune]
        timing = timing if timing is not None else {}
        t = time.perf_counter()
        model = copy.deepcopy(self.model)
        keep = self.keep(policy)
        prune_model(model, self.graph, keep, self.example)
        t = _lap(timing, "selection", t)
        if self.reconstruction:
            self._reconstruct(model, keep, policy)
        if nhwc:
            model = model.to(memory_format=torch.channels_last)
        t = _lap(timing, "reconstruction", t)
        names = [u.name for u in self.graph.units]
        quantizers: list[ActivationQuantizer] = []
        if any(b < FP32 for b in list(policy.w_bits) + list(policy.a_bits)):
            quantize_model(model, names, policy.w_bits, policy.a_bits, None, self.symmetric)
            quantizers = [q for q in activation_quantizers(model).values() if q.calibrating]
            # Ranges are measured in the BatchNorm pass below when there is one and nothing runs in between.
            if quantizers and (finetune or (calibrate and not self.bn_recalibration)):
                calibrate_ranges(model, quantizers, calibration, running=True)
                quantizers = []
        t = _lap(timing, "quantization", t)
        if finetune:
            self._short_finetune(model, policy, finetune)
        t = _lap(timing, "finetune", t)
        if not calibrate:
            model.eval()
            return model
        if self.bn_recalibration:
            recalibrate_bn(model, calibration, quantizers)
        _lap(timing, "calibration", t)
        model.eval()
        return model

    def _short_finetune(
        self, model: nn.Module, policy: Policy, batches: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        opt = torch.optim.SGD(model.parameters(), lr=self.finetune_lr, momentum=0.9)
        model.train()
        # Dropout draws from torch's generator: seed it here (and leave the caller's untouched), so a policy
        # always scores the same, as the evaluation cache and seeded reruns assume.
        # torch.manual_seed reseeds every CUDA device, so fork them all (an agent's networks may live on one).
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        with torch.random.fork_rng(devices=cuda), torch.enable_grad():
            torch.manual_seed(self.seed)
            for x, y in batches:
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        modules = dict(model.named_modules())
        with torch.no_grad():  # back onto the quantization grid
            for u, wb in zip(self.graph.units, policy.w_bits):
                if wb < FP32:
                    w = modules[u.name].weight
                    w.copy_(quantize_weight(w, int(wb), self.symmetric))

    def _reconstructable(self) -> list[int]:
        out = set()
        for g in self.graph.groups:
            if g.prunable:
                out.update(
                    ui for ui in g.consumers if not self.graph.units[ui].depthwise and self.graph.units[ui].groups == 1
                )
        return sorted(out)

    def _capture_features(self) -> dict[int, _Features]:
        """Sampled dense inputs and outputs of every reconstructable unit, for the least-squares problems.

        ``reconstruction_samples`` rows per unit, sampled per calibration image as the images pass
        (:func:`amc.selection.sample_unit_inputs`): memory never holds a unit's whole input.
        """
        units = self._reconstructable()
        if not units:
            return {}
        modules = dict(self.model.named_modules())
        gen = torch.Generator().manual_seed(self.seed)
        sampled = sample_unit_inputs(self.model, self.graph, units, self.calibration, self.reconstruction_samples, gen)
        feats = {}
        for ui in units:
            u = self.graph.units[ui]
            m = modules[u.name]
            xs = sampled[ui]
            w = m.weight.detach().float().cpu().reshape(m.weight.shape[0], -1)
            feats[ui] = _Features(x=xs, y=xs @ w.T, k=u.kernel_size[0] * u.kernel_size[1])
        return feats

    def _reconstruct(self, model: nn.Module, keep: list[torch.Tensor], policy: Policy) -> None:
        modules = dict(model.named_modules())
        for ui, f in self._features.items():
            u = self.graph.units[ui]
            cols = u.kept_inputs(keep)
            if len(cols) == u.in_channels:
                continue
            rows = keep[u.out_group] if u.out_group is not None else torch.arange(u.out_channels)
            col_idx = (torch.as_tensor(cols).unsqueeze(1) * f.k + torch.arange(f.k)).flatten()
            a = f.x[:, col_idx].double()
            b = f.y[:, rows].double()
            # Ridge-stabilised normal equations: well-posed even with fewer samples than columns.
            gram = a.T @ a
            gram += 1e-6 * gram.diagonal().mean().clamp_min(1e-12) * torch.eye(gram.shape[0], dtype=gram.dtype)
            sol = torch.linalg.solve(gram, a.T @ b)  # [cols*k, rows]
            m = modules[u.name]
            with torch.no_grad():
                m.weight.copy_(sol.T.reshape(m.weight.shape).to(m.weight.dtype))


def _lap(timing: dict[str, float], key: str, t0: float) -> float:
    t = time.perf_counter()
    timing[key] = timing.get(key, 0.0) + t - t0
    return t
