"""Hard budgets and the legal-action wall.

Every budget is a ratio of the uncompressed model (float32, all channels) for one metric:
``macs``, ``params``, ``size`` (bits), ``bitops``, ``latency`` and ``energy`` (the last two from the
hardware model). The wall keeps one invariant through an episode: the configuration made of the
decisions so far, with every undecided choice at its minimum, meets every budget. At each step it
picks the largest legal value not above the agent's wish, so the invariant survives and the final
configuration always meets every budget, channel rounding included (candidates are rounded counts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from amc.cost import FP32, CostModel
from amc.errors import AmcError

METRICS = ("macs", "params", "size", "bitops", "latency", "energy")
HARDWARE_METRICS = ("latency", "energy")
MIN_BITS = 2  # the fewest bits amc quantizes to (amc.envs.compression.bit_levels)


class HardwareCostFn(Protocol):
    """What the wall needs from a hardware model: whole-model latency and energy for a configuration."""

    def model_cost(
        self, c_in: Sequence[int], c_out: Sequence[int], w_bits: Sequence[int], a_bits: Sequence[int]
    ) -> Any: ...


class CostEvaluator:
    """Absolute metrics of a configuration (closed-form costs plus, when given, the hardware model).

    Args:
        cost_model: closed-form costs of the graph.
        hardware: a hardware model answering ``model_cost`` (needed for latency/energy).
    """

    def __init__(self, cost_model: CostModel, hardware: HardwareCostFn | None = None) -> None:
        self.cost_model = cost_model
        self.hardware = hardware
        n = cost_model.n_units
        self.dense = self.metrics(cost_model.full_channels, np.full(n, FP32), np.full(n, FP32))

    def metrics(
        self,
        kept: Sequence[int] | np.ndarray,
        w_bits: Sequence[int] | np.ndarray,
        a_bits: Sequence[int] | np.ndarray,
        names: Sequence[str] = METRICS,
    ) -> dict[str, float]:
        """The requested metrics (absolute values) of a configuration.

        Args:
            kept: kept channels per group.
            w_bits: weight bits per unit.
            a_bits: activation bits per unit.
            names: which metrics (hardware ones are skipped without a hardware model).
        """
        c = self.cost_model.cost(kept, w_bits, a_bits)
        out = {"macs": float(c.macs), "params": float(c.params), "size": float(c.size_bits), "bitops": float(c.bitops)}
        if self.hardware is not None and any(n in HARDWARE_METRICS for n in names):
            c_in, c_out = self.cost_model.unit_channels(kept)
            hw = self.hardware.model_cost(
                c_in.tolist(), c_out.tolist(), [int(b) for b in w_bits], [int(b) for b in a_bits]
            )
            out["latency"] = float(hw.latency_s)
            out["energy"] = float(hw.energy_j)
        return {k: v for k, v in out.items() if k in names}


class BudgetWall:
    """Checks configurations against hard budgets.

    Args:
        evaluator: computes metrics.
        budgets: target ratio per metric, e.g. ``{"latency": 0.5}``.
    """

    def __init__(self, evaluator: CostEvaluator, budgets: Mapping[str, float]) -> None:
        self.evaluator = evaluator
        self.budgets = {str(k): float(v) for k, v in budgets.items() if v is not None}
        for name, ratio in self.budgets.items():
            if name not in METRICS:
                raise AmcError(f"unknown budget {name!r}; choose among {', '.join(METRICS)}")
            if name in HARDWARE_METRICS and evaluator.hardware is None:
                raise AmcError(f"a {name} budget needs a hardware model; set hardware=<preset> or drop the budget")
            if not 0.0 < ratio <= 1.0:
                raise AmcError(f"budget {name}={ratio} must be a ratio in (0, 1] of the uncompressed model")
        self.names = tuple(self.budgets)
        self.limits = {n: self.budgets[n] * evaluator.dense[n] for n in self.names}

    def ratios(
        self, kept: Sequence[int] | np.ndarray, w_bits: Sequence[int] | np.ndarray, a_bits: Sequence[int] | np.ndarray
    ) -> dict[str, float]:
        """Budgeted metrics of a configuration as ratios of the dense model."""
        m = self.evaluator.metrics(kept, w_bits, a_bits, self.names)
        return {n: m[n] / self.evaluator.dense[n] for n in self.names}

    def feasible(
        self, kept: Sequence[int] | np.ndarray, w_bits: Sequence[int] | np.ndarray, a_bits: Sequence[int] | np.ndarray
    ) -> bool:
        """Whether a configuration meets every budget."""
        if not self.names:
            return True
        m = self.evaluator.metrics(kept, w_bits, a_bits, self.names)
        return all(m[n] <= self.limits[n] * (1 + 1e-12) for n in self.names)

    def check_reachable(self, kept: Sequence[int], w_bits: Sequence[int], a_bits: Sequence[int]) -> None:
        """Raise a one-line :class:`AmcError` when even the all-minimum configuration misses a budget.

        The message gives the smallest reachable ratio, the groups kept whole (and why), and only the
        advice that can help: a lower ``min_keep`` when pruning every prunable group to one channel would
        lower the ratio, lower bits when 2-bit units would, and, when neither (nor both) can reach the
        budget, only a higher budget.
        """
        ratios = self.ratios(kept, w_bits, a_bits)
        for n in self.names:
            if ratios[n] > self.budgets[n] * (1 + 1e-12):
                raise AmcError(self._unreachable(n, ratios[n], kept, w_bits, a_bits))

    def _unreachable(
        self, name: str, ratio: float, kept: Sequence[int], w_bits: Sequence[int], a_bits: Sequence[int]
    ) -> str:
        graph = self.evaluator.cost_model.graph
        target = self.budgets[name]
        # The most the action limits could ever give: one channel per prunable group, 2-bit units.
        fewest = [1 if g.prunable else int(k) for g, k in zip(graph.groups, kept)]
        pruned = self.ratios(fewest, w_bits, a_bits)[name]
        low = [MIN_BITS if b < FP32 else b for b in w_bits], [MIN_BITS if b < FP32 else b for b in a_bits]
        narrow = self.ratios(kept, *low)[name]
        floor = self.ratios(fewest, *low)[name]
        quantized = any(b < FP32 for b in list(w_bits) + list(a_bits))
        if not quantized and name not in ("macs", "params"):  # float units: quantizing would lower it
            narrow = self.ratios(kept, [MIN_BITS] * len(w_bits), [MIN_BITS] * len(a_bits))[name]
            floor = self.ratios(fewest, [MIN_BITS] * len(w_bits), [MIN_BITS] * len(a_bits))[name]
        whole = [g for g in graph.groups if not g.prunable and g.reason]
        listed = "; ".join(f"{g.root!r}: {g.reason}" for g in whole[:4])
        more = f"; and {len(whole) - 4} more" if len(whole) > 4 else ""
        kept_whole = f"; groups kept whole: {listed}{more}" if whole else ""
        advice = [f"raise the budget to at least {ratio:.4f}"]
        if floor <= target * (1 + 1e-12):
            pruning = any(g.prunable and int(k) < g.channels for g, k in zip(graph.groups, kept))
            if pruned < ratio * (1 - 1e-9):
                advice.append("lower env.min_keep" + (" (or env.channel_multiple)" if pruning else " or prune too"))
            if narrow < ratio * (1 - 1e-9):
                advice.append("lower the min bits (env.w_bits/env.a_bits)" if quantized else "quantize too")
        else:
            advice[0] += f" (one channel per prunable group and 2-bit units would still give {floor:.4f})"
        return (
            f"budget {name}={target:g} is unreachable: the smallest reachable ratio is {ratio:.4f} with these "
            f"action limits{kept_whole}; {', or '.join(advice)}"
        )

    @staticmethod
    def largest_legal(choices: Sequence[int], wish: int, legal: Any) -> int:
        """The largest value in ascending ``choices`` that is <= ``wish`` and legal (the first is assumed legal).

        Binary search that only ever moves its lower end to legal values, so the answer is legal
        even for a hardware model that is not monotone (it is then a legal value, not always the largest).

        Args:
            choices: candidate values, ascending; ``choices[0]`` is legal by the wall's invariant.
            wish: the agent's value.
            legal: predicate on a value.
        """
        hi = int(np.searchsorted(choices, wish, side="right")) - 1
        if hi <= 0:
            return int(choices[0])
        if legal(choices[hi]):
            return int(choices[hi])
        lo = 0  # choices[lo] legal, choices[hi] not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if legal(choices[mid]):
                lo = mid
            else:
                hi = mid
        return int(choices[lo])
