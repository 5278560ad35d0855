"""Closed-form cost of a compression policy: MACs, parameters, model size in bits, BitOps.

The environment asks for these inside every step, so the graph is flattened once into NumPy arrays and
a query is a handful of vector operations (tens of microseconds for a ResNet-56). The figures agree
exactly with ``torch.utils.flop_counter`` (MACs = FLOPs / 2) and with the parameter count of the model
that torch-pruning produces for the same kept channels; ``tests/test_cost.py`` checks it on random
policies.

Conventions: a policy is (kept channels per *group*, weight bits per *unit*, activation bits per
*unit*). ``FP32 = 32`` means "not quantized". Model size counts each unit's weights at its weight
bits and every other parameter (biases, BatchNorm, fixed layers) at 32 bits. BitOps = sum over units of
MACs x w_bits x a_bits.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from amc.errors import AmcError
from amc.graph import ModelGraph
from amc.pruning import prune_model

log = logging.getLogger(__name__)

FP32 = 32
"""Bit width that stands for "unquantized" (float32)."""


@dataclass(frozen=True)
class Cost:
    """Totals of one configuration (per sample).

    Attributes:
        macs: multiply-accumulates.
        params: parameters.
        size_bits: model size in bits (unit weights at their bits, everything else at 32).
        bitops: sum of MACs x w_bits x a_bits.
    """

    macs: int
    params: int
    size_bits: int
    bitops: int


class CostModel:
    """Closed-form costs for a :class:`~amc.graph.ModelGraph`.

    Args:
        graph: the model's compressible-layer graph.
    """

    def __init__(self, graph: ModelGraph) -> None:
        self.graph = graph
        units, groups = graph.units, graph.groups
        n_u, n_g = len(units), len(groups)
        self.n_units, self.n_groups = n_u, n_g
        self._out_group = np.array([u.out_group if u.out_group is not None else -1 for u in units], dtype=np.int64)
        self._has_out_group = self._out_group >= 0
        self._out_group_idx = np.where(self._has_out_group, self._out_group, 0)
        self._out_full = np.array([u.out_channels for u in units], dtype=np.int64)
        self._in_matrix = np.zeros((n_u, n_g), dtype=np.int64)
        for u in units:
            for gi, mult in u.in_groups:
                self._in_matrix[u.index, gi] += mult
        self._fixed_in = np.array([u.fixed_in for u in units], dtype=np.int64)
        self._depthwise = np.array([u.depthwise for u in units], dtype=bool)
        self._groups = np.array([u.groups for u in units], dtype=np.int64)
        self._kernel = np.array([u.kernel_size[0] * u.kernel_size[1] for u in units], dtype=np.int64)
        self._positions = np.array([u.positions for u in units], dtype=np.int64)
        self._bias = np.array([u.has_bias for u in units], dtype=np.int64)
        self._extra = np.array([g.extra_params_per_channel for g in groups], dtype=np.float64)
        self.full_channels = np.array(graph.full_channels(), dtype=np.int64)
        self.dense = self.cost(self.full_channels)

    def unit_channels(self, kept: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Kept (input, output) channels of every unit for kept channels per group.

        Args:
            kept: kept channels per group.
        """
        kept = np.asarray(kept, dtype=np.int64)
        if kept.shape != (self.n_groups,):
            raise ValueError(f"expected kept channels for {self.n_groups} groups, got shape {kept.shape}")
        c_out = np.where(self._has_out_group, kept[self._out_group_idx], self._out_full)
        c_in = self._fixed_in + self._in_matrix @ kept
        return c_in, c_out

    def unit_macs_params(self, kept: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-unit MACs and weight parameters (no bias) for kept channels per group.

        Args:
            kept: kept channels per group.
        """
        c_in, c_out = self.unit_channels(kept)
        groups = np.where(self._depthwise, c_out, self._groups)
        weights = c_out * (c_in // groups) * self._kernel
        return weights * self._positions, weights

    def cost(
        self,
        kept: Sequence[int] | np.ndarray,
        w_bits: Sequence[int] | np.ndarray | None = None,
        a_bits: Sequence[int] | np.ndarray | None = None,
    ) -> Cost:
        """Totals for kept channels per group and bits per unit (``None``: every unit at 32 bits).

        Args:
            kept: kept channels per group.
            w_bits: weight bits per unit.
            a_bits: activation bits per unit.
        """
        kept = np.asarray(kept, dtype=np.int64)
        macs, weights = self.unit_macs_params(kept)
        c_out = np.where(self._has_out_group, kept[self._out_group_idx], self._out_full)
        other = int((c_out * self._bias).sum()) + int(round(float(self._extra @ kept))) + self.graph.fixed_params
        wb = np.full(self.n_units, FP32, dtype=np.int64) if w_bits is None else np.asarray(w_bits, dtype=np.int64)
        ab = np.full(self.n_units, FP32, dtype=np.int64) if a_bits is None else np.asarray(a_bits, dtype=np.int64)
        return Cost(
            macs=int(macs.sum()),
            params=int(weights.sum()) + other,
            size_bits=int((weights * wb).sum()) + FP32 * other,
            bitops=int((macs * wb * ab).sum()),
        )


def verify_costs(model: nn.Module, graph: ModelGraph, pruned: bool = True, seed: int = 0) -> None:
    """Check the closed form against the real model; keep whole every group whose pruned copy disagrees.

    Dense model: every unit's closed-form MACs (from its groups' widths) must equal
    ``torch.utils.flop_counter`` on its module (MACs = FLOPs / 2), its weights and bias the module's
    parameter count, and the total the model's parameter count; a unit that disagrees is refused
    (:class:`AmcError` naming it), because no policy of this graph could be costed right.

    Pruned copies (``pruned``): every prunable group keeps a random subset of its channels in one copy,
    pruned with torch-pruning; the copy must run, give the dense output's shape, and match the closed
    form unit by unit and in total. When it does not, the groups at fault are found by bisection (a
    few more copies) and kept whole, with a reason naming their layers. One copy when all is well:
    about as much as one routing-check forward pass per group, see :func:`amc.graph.build_graph`.

    Args:
        model: the dense model ``graph`` was built from (left unchanged).
        graph: its graph; groups found at fault become not prunable.
        pruned: also check pruned copies (needed wherever the groups decide what gets pruned).
        seed: seed of the kept channel counts and indices of the pruned copies.
    """
    cost_model = CostModel(graph)
    was_training = model.training
    model.eval()
    try:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        example = torch.zeros((1, *graph.input_shape), device=device)
        shape, problem = _compare(model, graph, cost_model, cost_model.full_channels, example, None)
        if problem:
            raise AmcError(
                f"{problem}, so every policy of this model would be mis-costed; change how that layer's "
                "channels flow (or report the model)"
            )
        if not pruned:
            return
        rng = np.random.default_rng(seed)
        todo = [g.index for g in graph.groups if g.prunable and g.channels > 1]
        keep = {
            gi: np.sort(rng.choice(graph.groups[gi].channels, int(rng.integers(1, graph.groups[gi].channels)), False))
            for gi in todo
        }

        def trial(subset: list[int]) -> str | None:
            kept = cost_model.full_channels.copy()
            indices = [torch.arange(g.channels) for g in graph.groups]
            for gi in subset:
                kept[gi] = len(keep[gi])
                indices[gi] = torch.as_tensor(keep[gi])
            copy_ = copy.deepcopy(model)
            try:
                prune_model(copy_, graph, indices, example)
            except Exception as exc:  # noqa: BLE001 -- torch-pruning fails in many ways on what it cannot follow
                return f"torch-pruning fails ({_first_line(exc)})"
            return _compare(copy_, graph, cost_model, kept, example, shape)[1]

        while todo:
            problem = trial(todo)
            if problem is None:
                break
            bad = _bisect(todo, trial, problem)
            for gi, why in bad.items():
                g = graph.groups[gi]
                names = [graph.units[i].name for i in dict.fromkeys(g.producers + g.consumers)]
                g.prunable = False
                g.reason = f"with these channels pruned, {why} (its layers: {', '.join(names)})"
                log.info("group %s kept whole: %s", g.root, g.reason)
            todo = [gi for gi in todo if gi not in bad]
    finally:
        model.train(was_training)


def _bisect(todo: list[int], trial: Callable[[list[int]], str | None], problem: str) -> dict[int, str]:
    """The groups of ``todo`` (which fails with ``problem``) that fail on their own, with why."""
    if len(todo) == 1:
        return {todo[0]: problem}
    half = len(todo) // 2
    bad: dict[int, str] = {}
    for part in (todo[:half], todo[half:]):
        why = trial(part)
        if why is not None:
            bad.update(_bisect(part, trial, why))
    return bad or dict.fromkeys(todo, f"pruned together: {problem}")  # fails only in combination


def _compare(
    model: nn.Module,
    graph: ModelGraph,
    cost_model: CostModel,
    kept: np.ndarray,
    example: torch.Tensor,
    shape: tuple[int, ...] | None,
) -> tuple[tuple[int, ...] | None, str | None]:
    """Run ``model`` under the flop counter; (its output shape, the first disagreement with the closed form)."""
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            out = model(example)
    except Exception as exc:  # noqa: BLE001 -- a pruned copy may fail anywhere in the user's forward
        return None, f"the forward pass fails ({_first_line(exc)})"
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    if shape is not None and got != shape:
        return got, f"the model outputs shape {got}, not {shape}"
    flops = counter.get_flop_counts()
    modules = dict(model.named_modules())
    prefix = type(model).__name__
    macs, weights = cost_model.unit_macs_params(kept)
    _, c_out = cost_model.unit_channels(kept)
    for u in graph.units:
        m = modules[u.name]
        measured = sum(flops.get(f"{prefix}.{u.name}", {}).values()) // 2
        params = sum(p.numel() for p in m.parameters(recurse=False))
        closed = int(weights[u.index]) + (int(c_out[u.index]) if u.has_bias else 0)
        if measured != int(macs[u.index]) or params != closed:
            return got, (
                f"layer {u.name!r} costs {measured} MACs / {params} parameters in torch.utils.flop_counter but "
                f"{int(macs[u.index])} / {closed} in the closed form"
            )
    total = sum(p.numel() for p in model.parameters())
    closed_total = cost_model.cost(kept).params
    if total != closed_total:
        return got, f"the model has {total} parameters but the closed form counts {closed_total}"
    return got, None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
