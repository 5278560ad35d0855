"""Observation features: AMC's layer embedding, HAQ's additions, and the budget use so far.

Every feature lies in [0, 1] and has one definition, used at reset and at every step:

| # | feature | definition |
|---|---------|------------|
| 0 | index | t / (units - 1) |
| 1 | is_conv | 1 for Conv2d, 0 for Linear |
| 2 | depthwise | 1 for a depthwise conv (HAQ) |
| 3 | c_in | dense input channels / max over units |
| 4 | c_out | dense output channels / max over units |
| 5 | stride | stride / max over units |
| 6 | kernel | kernel height / max over units |
| 7 | params | log(1 + params) / log(1 + max params) |
| 8 | in_size | input height / max over units |
| 9 | macs | unit's dense MACs / dense model MACs |
| 10 | macs_before | MACs of units before t under the current decisions / dense MACs |
| 11 | macs_after | dense MACs of units after t / dense MACs (AMC's "remaining") |
| 12 | decides | 1 when this step's keep ratio applies (first producer of a prunable group) |
| 13 | prev_keep | previous step's kept ratio (1 at reset) |
| 14 | prev_w_bits | previous weight bits / max level (1 at reset; float32 counts as 1) |
| 15 | prev_a_bits | previous activation bits / max level |
| 16 | ref_keep | the reference policy's keep ratio of the group this unit decides (1 when none) |
| 17 | ref_w_bits | the reference's weight bits / max level (1 without a reference) |
| 18 | ref_a_bits | the reference's activation bits / max level |
| 19 | legal_keep | largest keep ratio the wall allows this unit now (1 with ``wall=repair``) |
| 20 | legal_w_bits | largest weight bits the wall allows now / max level |
| 21 | legal_a_bits | largest activation bits the wall allows now / max level |
| 22+ | budget use | per budget: ratio of (decisions so far + the rest at the wall's reserve) / target |
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from amc.graph import ModelGraph

STATIC = 12
DYNAMIC = 10  # decides, prev (3), reference (3), legal (3)


class FeatureBuilder:
    """Builds observation vectors for a graph.

    Args:
        graph: the model's graph.
        budget_names: the budgeted metrics, in the order their features appear.
    """

    def __init__(self, graph: ModelGraph, budget_names: Sequence[str]) -> None:
        units = graph.units
        self.n = len(units)
        self.budget_names = tuple(budget_names)
        self.size = STATIC + DYNAMIC + len(self.budget_names)
        max_c = max(max(u.in_channels, u.out_channels) for u in units)
        max_s = max(u.stride[0] for u in units)
        max_k = max(u.kernel_size[0] for u in units)
        max_p = max(u.params for u in units)
        max_hw = max(u.in_hw[0] for u in units)
        dense = sum(u.macs for u in units)
        after = np.cumsum([u.macs for u in units][::-1])[::-1]
        static = np.zeros((self.n, STATIC), dtype=np.float64)
        for u in units:
            static[u.index] = [
                u.index / max(1, self.n - 1),
                1.0 if u.kind == "conv" else 0.0,
                1.0 if u.depthwise else 0.0,
                u.in_channels / max_c,
                u.out_channels / max_c,
                u.stride[0] / max_s,
                u.kernel_size[0] / max_k,
                math.log1p(u.params) / math.log1p(max_p),
                u.in_hw[0] / max_hw,
                u.macs / dense,
                0.0,  # macs_before: dynamic
                (after[u.index] - u.macs) / dense,
            ]
        self.static = static

    def build(
        self,
        t: int,
        decides: bool,
        macs_before: float,
        prev: tuple[float, float, float],
        budget_use: Mapping[str, float],
        reference: tuple[float, float, float] = (1.0, 1.0, 1.0),
        legal: tuple[float, float, float] = (1.0, 1.0, 1.0),
    ) -> np.ndarray:
        """The observation of step ``t``.

        Args:
            t: unit index.
            decides: whether this step's keep ratio applies.
            macs_before: MACs of earlier units under current decisions, as a fraction of dense MACs.
            prev: previous (keep ratio, w_bits fraction, a_bits fraction).
            budget_use: per budget, (decided + reserve for the rest) / target.
            reference: the reference policy's (keep ratio, w_bits fraction, a_bits fraction) at ``t``.
            legal: the largest (keep ratio, w_bits fraction, a_bits fraction) the wall allows at ``t``.
        """
        obs = np.empty(self.size, dtype=np.float32)
        obs[:STATIC] = self.static[t]
        obs[10] = macs_before
        obs[STATIC] = 1.0 if decides else 0.0
        obs[STATIC + 1 : STATIC + 4] = prev
        obs[STATIC + 4 : STATIC + 7] = reference
        obs[STATIC + 7 : STATIC + 10] = legal
        for i, name in enumerate(self.budget_names):
            obs[STATIC + DYNAMIC + i] = budget_use[name]
        return np.clip(obs, 0.0, 1.0)
