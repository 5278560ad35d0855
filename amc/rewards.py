"""Reward functions, chosen by config (``reward=`` group, ``_target_``), never by evaluating strings.

Each reward is a small callable object: ``reward(metrics) -> float`` where ``metrics`` holds at least
``accuracy`` (search top-1 of the compressed model, fraction), ``dense_accuracy`` (the baseline's),
and ``ratio/<metric>`` (compressed / dense) plus ``target/<metric>`` for every budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


class AccuracyReward:
    """AMC's ``acc`` reward: accuracy alone, budgets being enforced by the action wall.

    Args:
        scale: multiplier (AMC uses accuracy in [0, 1]).
    """

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale

    def __call__(self, metrics: Mapping[str, float]) -> float:
        return self.scale * metrics["accuracy"]


class ErrorLogMacsReward:
    """AMC's resource-aware reward ``-error * log(MACs)`` (MACs of the compressed model, per sample)."""

    def __call__(self, metrics: Mapping[str, float]) -> float:
        return -(1.0 - metrics["accuracy"]) * math.log(max(metrics["macs"], 1.0))


class AccuracyDeltaReward:
    """HAQ's reward ``lambda * (acc_compressed - acc_original)``.

    Args:
        scale: lambda (HAQ uses 0.1 with accuracies in percent; 10.0 here with fractions is the same).
    """

    def __init__(self, scale: float = 10.0) -> None:
        self.scale = scale

    def __call__(self, metrics: Mapping[str, float]) -> float:
        return self.scale * (metrics["accuracy"] - metrics["dense_accuracy"])


class BlendedReward:
    """MnasNet-style blend for joint search: ``acc * prod_m (ratio_m / target_m) ** w_m``.

    A metric with a budget is measured against its target, one without against 1 (the dense model).
    With negative weights, beating a target raises the reward a little and missing one (only
    possible for metrics without a hard budget) lowers it.

    Args:
        weights: exponent per metric, e.g. ``{"latency": -0.07, "macs": -0.03}``.
    """

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = dict(weights) if weights is not None else {"latency": -0.07, "macs": -0.03}

    def __call__(self, metrics: Mapping[str, float]) -> float:
        value = metrics["accuracy"]
        for name, w in self.weights.items():
            ratio = metrics.get(f"ratio/{name}")
            if ratio is None or w == 0:
                continue
            target = metrics.get(f"target/{name}", 1.0)
            value *= (max(ratio, 1e-9) / target) ** w
        return value
