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

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from amc.graph import ModelGraph

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
