"""``amc/Compression-v0``: one episode walks the compressible units and decides channels and bits.

Step t handles unit t of the graph (forward order). Its action, in ``Box(-1, 1)``, is mapped inside
the env:

- ``prune`` mode: 1 dim, the keep ratio of the channel group this unit produces (in [min_keep, 1]);
  bits stay float32.
- ``quantize`` mode: 2 dims, weight bits and activation bits of this unit (levels min..max bits, plus
  float32 when ``allow_fp32``); channels stay whole.
- ``joint`` mode (default): 3 dims, keep ratio, weight bits, activation bits.

A coupled group is decided once, by its first producer in forward order; for the other units (and
for groups that cannot be pruned) the keep dimension is ignored and the observation says so.

Three choices shape the problem the agent is given (each a constructor argument and a key of
``conf/env/*.yaml``):

- ``levels``: ``hardware`` offers each unit only the bitwidths that are not dominated: a level is
  dropped when a higher one costs no more in every metric that steers the search (each budget, and
  each metric the reward weighs), at the dense and at the smallest channel counts, computed from the
  cost and hardware models themselves (so it holds for every preset and lookup table). On BitFusion's
  2/4/8-bit bricks under a latency budget, 3 bits cost what 4 do and 5-7 what 8 do, leaving 2/4/8.
  ``all`` offers every level (HAQ's equal bins over ``min..max`` bits).
- ``wall``: how the hard budgets are kept (:mod:`amc.envs.budget`). ``front`` (AMC) clips each
  decision so that it and every undecided unit at its *minimum* fit, which lets the first units take
  what they ask and starves the last; ``reserve`` holds the undecided units at the *reference*
  policy instead (a fair share); ``repair`` lets the agent choose freely and, after the last unit,
  lowers bits (then channels) from the last unit backwards until every budget holds (HAQ).
- ``reference``: the policy the actions are centred on. Action 0 maps to the reference's level and
  keep ratio, -1 and +1 to the smallest and largest choice, piecewise linearly in between, so an
  actor whose output is 0 reproduces the reference. ``uniform`` uses the largest uniform policy that
  meets the budgets (cost model only, no episode); ``none`` uses HAQ's equal bins and AMC's linear keep
  map. Agents may replace it (:meth:`CompressionEnv.set_reference`), e.g. with the best demonstration.

Budgets always hold exactly for the configuration that is evaluated. At the last step the policy is
applied (:class:`amc.compress.Compressor`), the compressed model is evaluated on the search split, and
the reward function turns the metrics into the reward. Inside :meth:`CompressionEnv.parallel`
(``agent.n_envs``), :meth:`CompressionEnv.evaluate_many` measures several finished episodes' policies
at once in worker processes (:mod:`amc.envs.pool`); the decisions, the cache and the rewards stay here.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from amc.envs.budget import METRICS, BudgetWall, CostEvaluator, HardwareCostFn
from amc.envs.features import FeatureBuilder
from amc.envs.pool import EvaluationPool, measure_accuracy

from amc.compress import Compressor, Policy
from amc.cost import FP32, CostModel
from amc.errors import AmcError
from amc.evaluate import search_accuracy
from amc.graph import round_channels
from amc.rewards import AccuracyReward
from amc.utils import hold_freed_heap

log = logging.getLogger(__name__)

MODES = ("prune", "quantize", "joint")


def bit_levels(min_bits: int, max_bits: int, allow_fp32: bool = False) -> list[int]:
    """The bitwidths an action can choose, ascending; float32 is an explicit extra level.

    Args:
        min_bits: fewest bits.
        max_bits: most bits (<= 16); ``min_bits == max_bits == 32`` keeps the operand float.
        allow_fp32: append ``FP32`` (unquantized) as the top level.

    Raises:
        AmcError: a range outside 2..16 (1-bit is refused: amc has no binary quantizer).
    """
    if min_bits == max_bits == FP32:
        return [FP32]  # this operand stays float (e.g. HAQ's weight-only setting: a_bits=[32, 32])
    if not 1 <= min_bits <= max_bits <= 16:
        raise AmcError(
            f"bit range {min_bits}..{max_bits} is invalid; use 2 <= min_bits <= max_bits <= 16 (or [32, 32]: float)"
        )
    if min_bits < 2:  # linear fake-quant needs a sign and a magnitude; 1-bit (binary) nets are not supported
        raise AmcError(
            f"bit range {min_bits}..{max_bits} asks for 1-bit values, which amc does not quantize to; "
            f"use min_bits >= 2 (e.g. [2, {max(max_bits, 2)}])"
        )
    return list(range(min_bits, max_bits + 1)) + ([FP32] if allow_fp32 else [])


def policy_key(policy: Policy) -> tuple[tuple[int, ...], ...]:
    """The cache key of a configuration (kept channels, weight bits, activation bits)."""
    return (tuple(policy.kept), tuple(policy.w_bits), tuple(policy.a_bits))


def action_to_level(a: float, n: int) -> int:
    """Map an action in [-1, 1] to an index in 0..n-1 (equal-width bins, HAQ's continuous-to-discrete)."""
    return int(min(n - 1, max(0, math.floor((float(a) + 1.0) / 2.0 * n))))


def level_action(index: int, n: int) -> float:
    """The action in the middle of level ``index``'s bin (of ``n`` equal bins): inverse of :func:`action_to_level`."""
    return -1.0 + (2.0 * index + 1.0) / n


def anchored_position(a: float, ref: float, low: float, high: float) -> float:
    """Piecewise-linear map of an action in [-1, 1] onto [low, high] with 0 at ``ref``.

    -1 gives ``low``, 0 gives ``ref`` and 1 gives ``high``; each half is linear, so an actor that
    outputs 0 reproduces the reference exactly.
    """
    a = float(a)
    return ref + a * (high - ref) if a >= 0 else ref + a * (ref - low)


def anchored_action(pos: float, ref: float, low: float, high: float) -> float:
    """Inverse of :func:`anchored_position` (a position outside [low, high] is clipped)."""
    if pos >= ref:
        return 0.0 if high <= ref else float(min(1.0, (pos - ref) / (high - ref)))
    return 0.0 if ref <= low else float(max(-1.0, (pos - ref) / (ref - low)))


WALLS = ("front", "reserve", "repair")
LEVEL_SETS = ("hardware", "all")
REFERENCES = ("uniform", "none")


class CompressionEnv(gym.Env):
    """Gymnasium environment for pruning, quantization or both.

    Args:
        compressor: turns policies into compressed models (holds the dense model, graph, selection).
        search_data: (inputs, labels) tensors of the search split (never the test set).
        reward: callable on the metrics dict (see :mod:`amc.rewards`); accuracy by default.
        budgets: target ratio per metric (``macs``, ``params``, ``size``, ``bitops``, ``latency``,
            ``energy``); hard, enforced by the wall.
        hardware: hardware model for latency/energy (needed for those budgets and the metrics).
        mode: ``prune``, ``quantize`` or ``joint``.
        min_keep: smallest keep ratio of a prunable group.
        w_bits: (min, max) weight bits.
        a_bits: (min, max) activation bits.
        allow_fp32: let quantization actions choose float32 as the top level.
        channel_multiple: round kept channels to this multiple (e.g. the accelerator's array width).
        eval_batch_size: batch size of the search-split evaluation (256: on CPU, fmnist_cnn episodes ran 20-25%
            faster than with 1,000 and the transient activations are 4x smaller; a GPU may prefer more).
        device: where the compressed model is evaluated.
        dense_accuracy: the baseline's search accuracy (measured at construction when omitted).
        nonfinite: what an episode whose compressed model outputs NaN/inf does: ``skip`` (logged, reward 0,
            never the best, the search goes on) or ``fail`` (stop with an error).
        levels: ``hardware`` (drop bitwidths dominated on the hardware model) or ``all``.
        wall: ``front`` (AMC: undecided units at their minimum), ``reserve`` (undecided units at the
            reference) or ``repair`` (free choice, then HAQ's repair from the last unit).
        reference: ``uniform`` (actions centred on the largest uniform policy within budget) or ``none``
            (equal bins, linear keep map).
        eval_cache: how many evaluated configurations to remember (least recently used first out; 0: off).
            Compressing and evaluating is deterministic for a fixed environment (fixed calibration batches,
            search split and seed), so a configuration seen again (demonstrations, the noise-free exploit
            phase, a converged actor, baselines' repeated candidates) reuses its accuracy instead of
            recompressing; the reward and costs are recomputed. ``info["cached"]`` says which.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        compressor: Compressor,
        search_data: tuple[torch.Tensor, torch.Tensor],
        reward: Callable[[Mapping[str, float]], float] | None = None,
        budgets: Mapping[str, float] | None = None,
        hardware: HardwareCostFn | None = None,
        mode: str = "joint",
        min_keep: float = 0.2,
        w_bits: Sequence[int] = (2, 8),
        a_bits: Sequence[int] = (2, 8),
        allow_fp32: bool = False,
        channel_multiple: int = 1,
        eval_batch_size: int = 256,
        device: str | torch.device = "cpu",
        dense_accuracy: float | None = None,
        nonfinite: str = "skip",
        levels: str = "hardware",
        wall: str = "repair",
        reference: str = "uniform",
        eval_cache: int = 4096,
    ) -> None:
        super().__init__()
        if int(eval_cache) < 0:
            raise AmcError(
                f"env.eval_cache={eval_cache} is negative; use 0 (off) or the number of configurations to keep"
            )
        self.eval_cache = int(eval_cache)
        self._accuracies: OrderedDict[tuple[tuple[int, ...], ...], float] = OrderedDict()
        self.cache_hits = 0
        self.pool: EvaluationPool | None = None  # open inside parallel(): evaluate_many measures there
        if nonfinite not in ("skip", "fail"):
            raise AmcError(f"nonfinite={nonfinite!r} is not an option; use skip (log and continue) or fail")
        for key, value, options in (
            ("levels", levels, LEVEL_SETS),
            ("wall", wall, WALLS),
            ("reference", reference, REFERENCES),
        ):
            if value not in options:
                raise AmcError(f"env.{key}={value!r} is not an option; choose one of {', '.join(options)}")
        self.nonfinite, self.nonfinite_episodes = nonfinite, 0
        if mode not in MODES:
            raise AmcError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if not 0.0 < min_keep <= 1.0:
            raise AmcError(f"min_keep={min_keep} must be in (0, 1]")
        self.compressor = compressor
        self.graph = compressor.graph
        self.mode = mode
        hold_freed_heap()  # every episode's activations reuse the last one's memory (amc.utils.hold_freed_heap)
        self.prune = mode in ("prune", "joint")
        self.quantize = mode in ("quantize", "joint")
        self.reward_fn = reward if reward is not None else AccuracyReward()
        self.device = torch.device(device)
        self.search_x, self.search_y = search_data
        self.eval_batch_size = int(eval_batch_size)
        calibrating = min(self.eval_batch_size, len(self.search_y))
        if compressor.calibration_set == "search" and calibrating < 128:
            log.warning(
                "env.calibration_set=search calibrates every model on one evaluation batch: %d images here "
                "(env.eval_batch_size=%d, search split %d); BN statistics from fewer than 128 images make the "
                "scores noisy: raise env.eval_batch_size or use env.calibration_set=train",
                calibrating,
                self.eval_batch_size,
                len(self.search_y),
            )
        self.min_keep = float(min_keep)
        self.channel_multiple = max(1, int(channel_multiple))
        self.levels, self.wall_mode, self.reference_mode = levels, wall, reference
        self.w_levels = bit_levels(int(w_bits[0]), int(w_bits[1]), allow_fp32) if self.quantize else [FP32]
        self.a_levels = bit_levels(int(a_bits[0]), int(a_bits[1]), allow_fp32) if self.quantize else [FP32]

        accel = getattr(hardware, "accelerator", None)
        limit = getattr(accel, "max_bits", None)
        widest = max((b for b in self.w_levels + self.a_levels if b < FP32), default=None) if self.quantize else None
        if limit is not None and widest is not None and widest > limit:
            raise AmcError(
                f"preset {accel.name!r} runs at most {limit}-bit integers but the bit range reaches {widest}; "
                f"set env.w_bits and env.a_bits to at most {limit}"
            )
        self.cost_model = CostModel(self.graph)
        self.evaluator = CostEvaluator(self.cost_model, hardware)
        self.wall = BudgetWall(self.evaluator, budgets or {})
        units, groups = self.graph.units, self.graph.groups
        self.n_units = len(units)
        # The unit that decides each prunable group: its first producer in forward order.
        self.decides: dict[int, int] = {}
        if self.prune:
            for g in groups:
                if g.prunable:
                    self.decides[min(g.producers)] = g.index
        self.channel_choices = {
            gi: sorted(
                {
                    round_channels(
                        v, groups[gi].channels, self.channel_multiple, math.ceil(self.min_keep * groups[gi].channels)
                    )
                    for v in range(1, groups[gi].channels + 1)
                }
            )
            for gi in self.decides.values()
        }
        self.min_kept = np.array(
            [self.channel_choices[g.index][0] if g.index in self.channel_choices else g.channels for g in groups],
            dtype=np.int64,
        )
        self.full_kept = np.array([g.channels for g in groups], dtype=np.int64)
        # Bitwidths each unit may choose (ascending): the whole range, or the hardware's non-dominated ones.
        self.w_choices, self.a_choices = self._unit_levels()
        self.min_w = np.array([c[0] for c in self.w_choices], dtype=np.int64)
        self.min_a = np.array([c[0] for c in self.a_choices], dtype=np.int64)
        self.wall.check_reachable(self.min_kept, self.min_w, self.min_a)

        self.action_dim = {"prune": 1, "quantize": 2, "joint": 3}[mode]
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.action_dim,), dtype=np.float32)
        self.features = FeatureBuilder(self.graph, self.wall.names)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(self.features.size,), dtype=np.float32)
        self.reference: Policy | None = None
        self.reserve: Policy | None = None
        if reference == "uniform" or wall == "reserve":
            uniform = self.uniform_solution()
            self.reserve = uniform
            if reference == "uniform":
                self.reference = uniform
        self.dense_accuracy = dense_accuracy if dense_accuracy is not None else self._evaluate(compressor.model)
        if not math.isfinite(self.dense_accuracy):
            raise AmcError(
                "the uncompressed model gives NaN/inf outputs on the search split; its weights are broken "
                "(retrain it with pretrain.force=true or pass other pretrain.weights)"
            )
        self._t = 0
        self._reset_state()

    # --- action levels -------------------------------------------------------------------------
    def _unit_levels(self) -> tuple[list[list[int]], list[list[int]]]:
        """Per unit, the weight and activation bitwidths offered (see ``levels``)."""
        n = self.n_units
        w_all = [list(self.w_levels) for _ in range(n)]
        a_all = [list(self.a_levels) for _ in range(n)]
        # The costs that steer the search: the budgets and whatever the reward weighs (BlendedReward.weights).
        weighed = set(getattr(self.reward_fn, "weights", None) or {})
        names = [m for m in METRICS if m in self.wall.names or m in weighed]
        names = [m for m in names if m not in ("latency", "energy") or self.evaluator.hardware is not None]
        if self.levels == "all" or not self.quantize or not names:
            return w_all, a_all
        probes = [self.full_kept, self.min_kept]  # dominated at the dense and at the smallest channel counts
        base_w = np.full(n, FP32, dtype=np.int64)
        base_a = np.full(n, FP32, dtype=np.int64)

        def cost(t: int, w: int, a: int) -> np.ndarray:
            out = []
            for kept in probes:
                bw, ba = base_w.copy(), base_a.copy()
                bw[t], ba[t] = w, a
                m = self.evaluator.metrics(kept, bw, ba, names)
                out.extend(m[k] for k in names)
            return np.array(out)

        def keep(levels: list[int], others: list[int], t: int, weights: bool) -> list[int]:
            table = {b: np.concatenate([cost(t, b, o) if weights else cost(t, o, b) for o in others]) for b in levels}
            kept = []
            for b in levels:
                higher = [c for c in levels if c > b]
                if not any(np.all(table[c] <= table[b] * (1 + 1e-12) + 1e-30) for c in higher):
                    kept.append(b)
            return kept

        w_out, a_out = [], []
        for t in range(n):
            w_out.append(keep(self.w_levels, self.a_levels, t, True))
            a_out.append(keep(self.a_levels, self.w_levels, t, False))
        return w_out, a_out

    @staticmethod
    def snap(choices: Sequence[int], value: float) -> int:
        """The largest of ascending ``choices`` not above ``value`` (the smallest when none is)."""
        i = int(np.searchsorted(choices, value + 1e-9, side="right")) - 1
        return int(choices[max(0, i)])

    def uniform_config(self, ratio: float, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every decided group at (about) ``ratio`` of its channels; every unit at the largest level <= ``bits``."""
        kept = self.min_kept.copy()
        for gi in self.decides.values():
            choices = self.channel_choices[gi]
            kept[gi] = self.snap(choices, ratio * self.graph.groups[gi].channels)
        w = np.array([self.snap(c, bits) for c in self.w_choices], dtype=np.int64)
        a = np.array([self.snap(c, bits) for c in self.a_choices], dtype=np.int64)
        return kept, w, a

    def largest_uniform_ratio(self, bits: int, grid: int = 101) -> float | None:
        """The largest shared keep ratio meeting the budgets at ``bits`` (``None``: none does).

        Args:
            bits: the shared bitwidth (each unit takes its largest level not above it).
            grid: points of the keep-ratio grid scanned before bisection (a hardware model need not be
                monotone in channels, so the whole grid is scanned first).
        """

        def ok(r: float) -> bool:
            return self.wall.feasible(*self.uniform_config(r, bits))

        if not self.decides:
            return 1.0 if ok(1.0) else None
        points = np.linspace(self.min_keep, 1.0, grid)
        feasible = [r for r in points if ok(float(r))]
        if not feasible:
            return None
        lo = float(feasible[-1])
        if lo >= 1.0:
            return 1.0
        hi = float(points[np.searchsorted(points, lo, side="right")])
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if ok(mid) else (lo, mid)
        return lo

    def uniform_candidates(self, grid: int = 101) -> list[tuple[float, int]]:
        """(keep ratio, bits) pairs, highest bits first, each with the largest feasible shared keep ratio.

        Candidates that keep no more channels than one with more bits are dominated and dropped; the
        list stops at one that keeps every channel.
        """
        shared = sorted({b for c in self.w_choices + self.a_choices for b in c}, reverse=True)
        out: list[tuple[float, int]] = []
        for bits in shared:
            ratio = self.largest_uniform_ratio(bits, grid)
            if ratio is None or (out and ratio <= out[-1][0]):
                continue
            out.append((ratio, bits))
            if not self.decides or ratio >= 1.0:
                break
        return out

    def uniform_solution(self) -> Policy:
        """The uniform policy that keeps the most of the model within budget (cost model only).

        Among :meth:`uniform_candidates`, the one with the most bits whose keep ratio is at least 0.9 of
        the best ratio on offer, so neither channels nor bits are given away for a sliver of the other.
        Falls back to the all-minimum configuration (always legal) when no uniform policy fits.
        """
        candidates = self.uniform_candidates()
        if not candidates:
            return Policy.of(self.min_kept, self.min_w, self.min_a)
        best_ratio = max(r for r, _ in candidates)
        ratio, bits = next((r, b) for r, b in candidates if r >= 0.9 * best_ratio)
        kept, w, a = self.uniform_config(ratio, bits)
        return Policy.of(kept, w, a)

    def set_reference(self, policy: Policy | None) -> None:
        """Centre the actions on ``policy`` (and, with ``wall=reserve``, hold undecided units at it when it fits).

        Args:
            policy: kept channels among :attr:`channel_choices` and bits among each unit's levels;
                ``None``: no centre (HAQ's equal bins, AMC's linear keep map).

        Raises:
            AmcError: the policy is not made of this environment's choices.
        """
        if policy is None:
            self.reference = None
            self._reset_state()
            return
        policy = Policy.of(policy.kept, policy.w_bits, policy.a_bits)
        policy.validate(self.graph)
        for t in range(self.n_units):
            if policy.w_bits[t] not in self.w_choices[t] or policy.a_bits[t] not in self.a_choices[t]:
                raise AmcError(
                    f"reference bits {policy.w_bits[t]}/{policy.a_bits[t]} at unit {t} are not among its levels "
                    f"{self.w_choices[t]}/{self.a_choices[t]}; use a policy searched in this environment"
                )
        for gi, choices in self.channel_choices.items():
            if policy.kept[gi] not in choices:
                raise AmcError(f"reference keeps {policy.kept[gi]} channels in group {gi}, not one of its choices")
        self.reference = policy
        if self.wall_mode in ("reserve", "repair") and self.wall.feasible(policy.kept, policy.w_bits, policy.a_bits):
            self.reserve = policy
        self._reset_state()

    @contextlib.contextmanager
    def unclipped(self) -> Iterator[None]:
        """Within this block every wish is taken as it is and a configuration over budget is repaired at the end.

        For replaying a configuration known to fit (a baseline's or a demonstration's): the ``reserve``
        wall could otherwise lower an early unit that a later, smaller unit pays for. Budgets still hold.
        """
        saved = self.wall_mode
        self.wall_mode = "repair"
        try:
            yield
        finally:
            self.wall_mode = saved

    # --- episode state -------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._t = 0
        if self.wall_mode == "front" or self.reserve is None:
            self.kept, self.w, self.a = self.min_kept.copy(), self.min_w.copy(), self.min_a.copy()
        else:  # undecided units stand at the reserve (their fair share) until decided
            r = self.reserve
            self.kept = np.array(r.kept, dtype=np.int64)
            self.w, self.a = np.array(r.w_bits, dtype=np.int64), np.array(r.a_bits, dtype=np.int64)
        self.ratio_actions = np.ones(self.n_units)
        self._prev = (1.0, 1.0, 1.0)
        self._wall_seconds = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode at the first unit."""
        super().reset(seed=seed)
        self._reset_state()
        return self._observation(), {}

    def _legal_top(self, t: int) -> tuple[float, float, float]:
        """Largest legal keep ratio, weight bits and activation bits of unit ``t`` now (fractions of their maximum)."""
        keep = w = a = 1.0
        if self.wall_mode == "repair" or not self.wall.names:
            return keep, w, a
        if self.prune and t in self.decides:
            gi = self.decides[t]
            top = self._largest_legal_keep(gi, self.channel_choices[gi][-1])
            keep = top / self.graph.groups[gi].channels
        if self.quantize:
            w = self._largest_legal_bits(t, "w", self.w_choices[t][-1]) / max(self.w_levels)
            a = self._largest_legal_bits(t, "a", self.a_choices[t][-1]) / max(self.a_levels)
        return keep, w, a

    def observation(self) -> np.ndarray:
        """The observation of the current step (what ``reset``/``step`` return)."""
        return self._observation()

    def _observation(self) -> np.ndarray:
        t = min(self._t, self.n_units - 1)
        dense = self.evaluator.dense
        unit_macs, _ = self.cost_model.unit_macs_params(self.kept)
        ratios = self.wall.ratios(self.kept, self.w, self.a) if self.wall.names else {}
        ref = (1.0, 1.0, 1.0)
        if self.reference is not None:
            gi = self.decides.get(t)
            ref = (
                1.0 if gi is None else self.reference.kept[gi] / self.graph.groups[gi].channels,
                self.reference.w_bits[t] / max(self.w_levels),
                self.reference.a_bits[t] / max(self.a_levels),
            )
        return self.features.build(
            t=t,
            decides=t in self.decides,
            macs_before=float(unit_macs[:t].sum()) / dense["macs"],
            prev=self._prev,
            budget_use={n: ratios[n] / self.wall.budgets[n] for n in self.wall.names},
            reference=ref,
            legal=self._legal_top(t) if self._t < self.n_units else (1.0, 1.0, 1.0),
        )

    # --- actions -------------------------------------------------------------------------------
    def _split_action(self, action: np.ndarray) -> tuple[float | None, float | None, float | None]:
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.shape != (self.action_dim,):
            raise ValueError(f"expected an action of shape ({self.action_dim},), got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf: {a}")
        a = np.clip(a, -1.0, 1.0)
        if self.mode == "prune":
            return a[0], None, None
        if self.mode == "quantize":
            return None, a[0], a[1]
        return a[0], a[1], a[2]

    def keep_wish(self, group: int, action: float) -> int:
        """Kept channels an action asks for in ``group`` (before the wall), rounded to a channel choice."""
        channels = self.graph.groups[group].channels
        if self.reference is None:
            ratio = self.min_keep + (action + 1.0) / 2.0 * (1.0 - self.min_keep)
        else:
            ratio = anchored_position(action, self.reference.kept[group] / channels, self.min_keep, 1.0)
        wish = round_channels(ratio * channels, channels, self.channel_multiple, math.ceil(self.min_keep * channels))
        return int(wish)

    def bits_wish(self, t: int, kind: str, action: float) -> int:
        """Bits an action asks for at unit ``t`` (``kind`` ``w`` or ``a``), before the wall."""
        choices = self.w_choices[t] if kind == "w" else self.a_choices[t]
        if self.reference is None:
            return int(choices[action_to_level(action, len(choices))])
        ref = (self.reference.w_bits if kind == "w" else self.reference.a_bits)[t]
        r = choices.index(ref)
        pos = anchored_position(action, r, 0, len(choices) - 1)
        return int(choices[int(min(len(choices) - 1, max(0, math.floor(pos + 0.5))))])

    def _largest_legal_keep(self, gi: int, wish: int) -> int:
        def legal(k: int) -> bool:
            kept = self.kept.copy()
            kept[gi] = k
            return self.wall.feasible(kept, self.w, self.a)

        return BudgetWall.largest_legal(self.channel_choices[gi], wish, legal)

    def _largest_legal_bits(self, t: int, kind: str, wish: int) -> int:
        choices = self.w_choices[t] if kind == "w" else self.a_choices[t]

        def legal(b: int) -> bool:
            w, a = self.w.copy(), self.a.copy()
            (w if kind == "w" else a)[t] = b
            return self.wall.feasible(self.kept, w, a)

        return BudgetWall.largest_legal(choices, wish, legal)

    def actions_for(self, kept: Sequence[int], w_bits: Sequence[int], a_bits: Sequence[int]) -> np.ndarray:
        """Per-step actions (``(n_units, action_dim)``) that ask for exactly this configuration.

        Kept channels must be among :attr:`channel_choices` and bits among each unit's levels; the
        wall may still lower a wish that does not fit.
        """
        out = np.zeros((self.n_units, self.action_dim), dtype=np.float32)
        for t in range(self.n_units):
            parts: list[float] = []
            if self.prune:
                gi = self.decides.get(t)
                parts.append(0.0 if gi is None else self._keep_action(gi, int(kept[gi])))
            if self.quantize:
                parts.append(self._bits_action(t, "w", int(w_bits[t])))
                parts.append(self._bits_action(t, "a", int(a_bits[t])))
            out[t] = parts
        return out

    def _keep_action(self, gi: int, k: int) -> float:
        channels = self.graph.groups[gi].channels
        ratio = k / channels
        if self.reference is None:
            if self.min_keep >= 1.0:
                return 1.0
            return float(np.clip(2.0 * (ratio - self.min_keep) / (1.0 - self.min_keep) - 1.0, -1.0, 1.0))
        return anchored_action(ratio, self.reference.kept[gi] / channels, self.min_keep, 1.0)

    def _bits_action(self, t: int, kind: str, bits: int) -> float:
        choices = self.w_choices[t] if kind == "w" else self.a_choices[t]
        if bits not in choices:
            raise AmcError(f"{bits} {kind}-bits is not a level of unit {t} ({choices}); pick one of its levels")
        i = choices.index(bits)
        if self.reference is None:
            return level_action(i, len(choices))
        ref = (self.reference.w_bits if kind == "w" else self.reference.a_bits)[t]
        return anchored_action(i, choices.index(ref), 0, len(choices) - 1)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide unit t's channels and bits (through the budget wall); evaluate after the last unit."""
        self.decide(action)
        if self._t < self.n_units:
            return self._observation(), 0.0, False, False, {}
        info = self._finish()
        return self._observation(), float(info["reward"]), True, False, info

    def decide(self, action: np.ndarray) -> None:
        """Apply one step's action through the budget wall and move to the next unit (no evaluation).

        ``step`` calls this; baselines and tests that only need the legal policy may call it directly.
        With ``wall=repair`` the wish is taken as it is and :meth:`repair` runs after the last unit.
        """
        if self._t >= self.n_units:
            raise RuntimeError("episode is over; call reset()")
        t0 = time.perf_counter()
        keep_a, w_a, a_a = self._split_action(action)
        t = self._t
        free = self.wall_mode == "repair"
        keep_ratio = 1.0
        if keep_a is not None and t in self.decides:
            gi = self.decides[t]
            wish = self.keep_wish(gi, keep_a)
            self.kept[gi] = wish if free else self._largest_legal_keep(gi, wish)
            keep_ratio = self.kept[gi] / self.graph.groups[gi].channels
        if w_a is not None:
            wish = self.bits_wish(t, "w", w_a)
            self.w[t] = wish if free else self._largest_legal_bits(t, "w", wish)
        if a_a is not None:
            wish = self.bits_wish(t, "a", a_a)
            self.a[t] = wish if free else self._largest_legal_bits(t, "a", wish)
        self.ratio_actions[t] = keep_ratio
        self._prev = (keep_ratio, self.w[t] / max(self.w_levels), self.a[t] / max(self.a_levels))
        self._t += 1
        if self._t == self.n_units and free:
            self.repair()
        self._wall_seconds += time.perf_counter() - t0

    def repair(self) -> None:
        """HAQ's repair: from the last unit backwards, lower bits one level (then channels) until every budget holds.

        With a reference, what was asked *above* the reference is taken back first (from the last unit
        backwards, each dimension down to the reference's value), so exploring around a legal reference
        costs at most the reference's own choices; only then does HAQ's loop run. Each pass visits the
        units from last to first and lowers, one step at a time, the weight bits, the activation bits
        and (for a unit that decides a group) the kept channels by a tenth of the group's range,
        stopping as soon as the configuration fits. The all-minimum configuration fits (checked at
        construction), so the loop ends.
        """
        feasible = self.wall.feasible
        if feasible(self.kept, self.w, self.a):
            return
        ref = self.reference
        if ref is not None:  # first take back, from the last unit, what was asked above the reference
            for t in reversed(range(self.n_units)):
                gi = self.decides.get(t) if self.prune else None
                if gi is not None and self.kept[gi] > ref.kept[gi]:
                    self.kept[gi] = ref.kept[gi]
                    if feasible(self.kept, self.w, self.a):
                        return
                for arr, target in ((self.w, ref.w_bits[t]), (self.a, ref.a_bits[t])):
                    if self.quantize and arr[t] > target:
                        arr[t] = target
                        if feasible(self.kept, self.w, self.a):
                            return
        while not feasible(self.kept, self.w, self.a):
            changed = False
            for t in reversed(range(self.n_units)):
                for kind in ("w", "a"):
                    if not self.quantize:
                        continue
                    arr, choices = (self.w, self.w_choices[t]) if kind == "w" else (self.a, self.a_choices[t])
                    i = choices.index(int(arr[t]))
                    if i > 0:
                        arr[t] = choices[i - 1]
                        changed = True
                        if feasible(self.kept, self.w, self.a):
                            return
                gi = self.decides.get(t) if self.prune else None
                if gi is not None:
                    choices = self.channel_choices[gi]
                    step = max(1.0, 0.1 * (choices[-1] - choices[0]))
                    lower = self.snap(choices, self.kept[gi] - step)
                    if lower < self.kept[gi]:
                        self.kept[gi] = lower
                        changed = True
                        if feasible(self.kept, self.w, self.a):
                            return
            if not changed:
                raise AssertionError("repair reached the minimum configuration without meeting the budgets")

    # --- end of episode ------------------------------------------------------------------------
    def policy(self) -> Policy:
        """The current episode's decisions as a :class:`Policy`."""
        return Policy.of(self.kept, self.w, self.a)

    def random_policies(self, n: int, seed: int = 0) -> list[Policy]:
        """``n`` legal policies of uniformly random actions in [-1, 1], each through the budget wall; nothing evaluated.

        What experiments and benchmarks score to compare ways of scoring (same ``seed``, same policies).
        The current episode is reset.

        Args:
            n: how many.
            seed: seed of the actions (NumPy's ``default_rng``; float32 actions, as agents give).
        """
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(n):
            self.reset()
            for _ in range(self.n_units):
                self.decide(rng.uniform(-1, 1, self.action_dim).astype(np.float32))
            out.append(self.policy())
        self.reset()
        return out

    def _evaluate(self, model: torch.nn.Module) -> float:
        """Search accuracy; NaN when any output is NaN/inf (the episode then fails, see ``nonfinite``)."""
        return search_accuracy(model, self.search_x, self.search_y, self.eval_batch_size, self.device)

    def _finish(self) -> dict[str, Any]:
        info = self.evaluate(self.policy(), {"wall_and_features": self._wall_seconds})
        # The actions that ask for the evaluated configuration: after a repair they differ from the agent's,
        # and an agent may store these instead (the critic then learns the value of what was evaluated).
        info["actions"] = self.actions_for(self.kept, self.w, self.a)
        return info

    def evaluate(self, policy: Policy, timing: dict[str, float] | None = None) -> dict[str, Any]:
        """Compress, evaluate and reward ``policy``: the end-of-episode ``info``.

        The budget wall is not consulted, so baselines can also score configurations outside it
        (sensitivity scans); ``info["budgets"]`` still reports each target and achieved ratio.

        Args:
            policy: the configuration.
            timing: seconds per phase are added to it (and returned as ``info["timing"]``).
        """
        timing = timing if timing is not None else {}
        key = policy_key(policy)
        acc = self._recall(key)
        cached = acc is not None
        if acc is None:
            # The model is not kept: the next episode's copy need not coexist with this one.
            acc = measure_accuracy(
                self.compressor, policy, self.search_x, self.search_y, self.eval_batch_size, self.device, timing
            )
            self._remember(key, acc)
        return self.score(policy, acc, cached, timing)

    def _recall(self, key: tuple[tuple[int, ...], ...]) -> float | None:
        """The cached accuracy of a configuration (now the most recently used), or ``None``."""
        if key not in self._accuracies:
            return None
        self._accuracies.move_to_end(key)
        self.cache_hits += 1
        return self._accuracies[key]

    def _remember(self, key: tuple[tuple[int, ...], ...], acc: float) -> None:
        if self.eval_cache:
            self._accuracies[key] = acc
            if len(self._accuracies) > self.eval_cache:
                self._accuracies.popitem(last=False)

    def evaluate_many(
        self, policies: Sequence[Policy], timings: Sequence[dict[str, float]] | None = None
    ) -> list[dict[str, Any]]:
        """:meth:`evaluate` every policy, in order, with the open :meth:`parallel` workers measuring them at once.

        The result equals ``[self.evaluate(p) for p in policies]`` exactly (infos, ``cached`` flags, the
        cache's contents and order): the configurations the cache would not answer in that sequence are
        measured in parallel first (each distinct one once), then the sequence is replayed through the
        cache in order. Without workers it is that loop.

        Args:
            policies: the configurations.
            timings: one dict of phase seconds per policy (added to, as in :meth:`evaluate`).
        """
        timings = [dict(t) for t in timings] if timings is not None else [{} for _ in policies]
        if self.pool is None or len(policies) < 2:
            return [self.evaluate(p, t) for p, t in zip(policies, timings)]
        keys = [policy_key(p) for p in policies]
        # Measure each distinct configuration the cache does not hold now; one it holds now keeps its value
        # even if the inserts before its turn evict it (the sequential loop would measure the same number).
        known = {key: self._accuracies[key] for key in keys if key in self._accuracies}
        todo = {key: p for key, p in zip(keys, policies) if key not in known}
        measured = dict(zip(todo, self.pool.accuracies(list(todo.values()))))
        out = []
        for policy, key, timing in zip(policies, keys, timings):
            acc = self._recall(key)
            cached = acc is not None
            if acc is None:
                if key in measured:
                    acc, phases = measured.pop(key)
                    timing.update(phases)
                    known[key] = acc
                else:
                    acc = known[key]
                self._remember(key, acc)
            out.append(self.score(policy, acc, cached, timing))
        return out

    @contextlib.contextmanager
    def parallel(self, n: int, threads: int | None = None) -> Iterator[None]:
        """Within this block :meth:`evaluate_many` measures with ``n`` worker processes (``n <= 1``: none).

        Opens an :class:`~amc.envs.pool.EvaluationPool` on this environment's compressor, search split and
        device, and closes it at the end of the block (an error included). A block inside another one
        reuses the outer pool.

        Args:
            n: number of workers (``agent.n_envs``).
            threads: torch threads per worker (default: this process's, i.e. the run's ``threads``).
        """
        if int(n) <= 1 or self.pool is not None:
            yield
            return
        threads = torch.get_num_threads() if threads is None else int(threads)
        with EvaluationPool(
            self.compressor, (self.search_x, self.search_y), int(n), self.eval_batch_size, self.device, threads
        ) as pool:
            self.pool = pool
            try:
                yield
            finally:
                self.pool = None

    @property
    def workers(self) -> int:
        """Policies :meth:`evaluate_many` measures at once (1 without :meth:`parallel` workers)."""
        return 1 if self.pool is None else self.pool.n

    def score(self, policy: Policy, acc: float, cached: bool, timing: dict[str, float]) -> dict[str, Any]:
        """The end-of-episode ``info`` of ``policy`` measured at accuracy ``acc``: costs, ratios, budgets, reward.

        Args:
            policy: the configuration.
            acc: its search accuracy (NaN: the compressed model gave NaN/inf outputs, see ``nonfinite``).
            cached: whether the accuracy came from the cache.
            timing: phase seconds (returned as ``info["timing"]``).
        """
        metrics = self.evaluator.metrics(policy.kept, policy.w_bits, policy.a_bits)
        info: dict[str, Any] = {"accuracy": acc, "dense_accuracy": self.dense_accuracy, "cached": cached}
        for name, value in metrics.items():
            info[name] = value
            info[f"ratio/{name}"] = value / self.evaluator.dense[name]
        for name, target in self.wall.budgets.items():
            info[f"target/{name}"] = target
        info["budgets"] = {n: {"target": self.wall.budgets[n], "achieved": info[f"ratio/{n}"]} for n in self.wall.names}
        if math.isfinite(acc):
            info["reward"] = float(self.reward_fn(info))
        else:
            self.nonfinite_episodes += 1
            if self.nonfinite == "fail":
                raise AmcError(
                    f"the compressed model gave NaN/inf outputs (policy kept {list(policy.kept)}, w_bits "
                    f"{list(policy.w_bits)}, a_bits {list(policy.a_bits)}); set env.nonfinite=skip to log such "
                    "episodes and continue"
                )
            log.warning("episode policy gave NaN/inf outputs: reward 0, not eligible as best (env.nonfinite=skip)")
            info["reward"], info["failed"] = 0.0, "NaN/inf outputs"
        info["policy"] = policy.to_dict(self.graph)
        info["timing"] = timing
        return info

    # --- episodes played side by side (agent.n_envs) -------------------------------------------
    def episode_state(self) -> dict[str, Any]:
        """The current episode's state (step, decisions so far): what differs between parallel episodes."""
        return {
            "t": self._t,
            "kept": self.kept.copy(),
            "w": self.w.copy(),
            "a": self.a.copy(),
            "ratio_actions": self.ratio_actions.copy(),
            "prev": self._prev,
            "wall_seconds": self._wall_seconds,
        }

    def load_episode_state(self, state: Mapping[str, Any]) -> None:
        """Continue the episode :meth:`episode_state` returned (everything else stays shared)."""
        self._t = int(state["t"])
        self.kept, self.w, self.a = state["kept"].copy(), state["w"].copy(), state["a"].copy()
        self.ratio_actions = state["ratio_actions"].copy()
        self._prev = state["prev"]
        self._wall_seconds = float(state["wall_seconds"])

    def finish_many(self, states: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """The end-of-episode infos of finished episodes (:meth:`episode_state` after their last step), in order.

        What :meth:`step` returns at the last unit for each, with the policies measured together
        (:meth:`evaluate_many`).

        Args:
            states: the finished episodes' states.
        """
        policies = [Policy.of(s["kept"], s["w"], s["a"]) for s in states]
        infos = self.evaluate_many(policies, [{"wall_and_features": float(s["wall_seconds"])} for s in states])
        for info, s in zip(infos, states):
            info["actions"] = self.actions_for(s["kept"], s["w"], s["a"])
        return infos


__all__ = [
    "LEVEL_SETS",
    "METRICS",
    "MODES",
    "REFERENCES",
    "WALLS",
    "CompressionEnv",
    "action_to_level",
    "anchored_action",
    "anchored_position",
    "bit_levels",
    "level_action",
    "policy_key",
]


MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def use_channels_last(
    memory_format: str, model: torch.nn.Module, batches: Sequence[torch.Tensor], device: torch.device
) -> bool:
    """Whether the search evaluates compressed models in channels-last (NHWC) memory order.

    On CPU, oneDNN's convolutions and PyTorch's BatchNorm run faster on NHWC tensors: one evaluation of
    a 512-image split took 0.31 s against 0.43 s for ResNet-20 (3x32x32, quantized, one thread) and
    0.041 s against 0.068 s for fmnist_cnn (2026-11-30). The order changes the floating-point summation
    order, so a value on a quantization boundary can land on the other level: over 30 random policies
    of the trained fmnist_cnn (5,000 images) the search accuracy moved by 0.15 points on average (joint;
    0.17 quantize; at most 0.72). That is why ``contiguous`` is the default: the published search
    results were measured with it. The fine-tuned and exported models are not affected.

    ``auto`` picks channels-last on CPU for 4-D inputs when the dense model, given one calibration
    batch in both orders, runs and gives the same logits (a model that calls ``.view`` on a feature
    map fails in NHWC); ``contiguous`` on GPUs (not measured there). ``channels_last`` asks for it and
    raises when that check fails.

    Args:
        memory_format: ``auto``, ``channels_last`` or ``contiguous`` (``env.memory_format``).
        model: the dense model.
        batches: calibration batches (the first one, up to 16 images, is the check's input).
        device: the evaluation device.

    Raises:
        AmcError: an unknown value, or ``channels_last`` for a model or input it does not fit.
    """
    if memory_format not in MEMORY_FORMATS:
        raise AmcError(
            f"env.memory_format={memory_format!r} is not an option; choose one of {', '.join(MEMORY_FORMATS)}"
        )
    if memory_format == "contiguous" or (memory_format == "auto" and device.type != "cpu"):
        return False
    if not batches or batches[0].dim() != 4:
        if memory_format == "channels_last":
            raise AmcError(
                "env.memory_format=channels_last needs 4-D image inputs (N, C, H, W); use auto or contiguous"
            )
        return False
    probe = batches[0][:16]
    problem = None
    try:
        with torch.no_grad():
            ref = model(probe)
            alt = copy.deepcopy(model).to(memory_format=torch.channels_last)(
                probe.contiguous(memory_format=torch.channels_last)
            )
        scale = float(ref.abs().max()) if ref.numel() else 1.0
        if ref.shape != alt.shape or not torch.allclose(ref, alt, rtol=1e-3, atol=1e-4 * max(1.0, scale)):
            problem = "its outputs differ in NHWC order"
    except RuntimeError as exc:
        words = " ".join(str(exc).split())
        short = words if len(words) <= 100 else words[:100].rsplit(" ", 1)[0] + " ..."
        problem = f"it fails in NHWC order: {short}"
    if problem is None:
        log.info("env.memory_format=%s: compressed models are evaluated in channels_last (NHWC) order", memory_format)
        return True
    if memory_format == "channels_last":
        raise AmcError(f"env.memory_format=channels_last does not fit this model: {problem}; use auto or contiguous")
    log.info("env.memory_format=auto: contiguous, because %s", problem)
    return False


def make_env(
    model: torch.nn.Module,
    data: Any,
    hardware: Any | None = None,
    reward: Callable[[Mapping[str, float]], float] | None = None,
    budgets: Mapping[str, float] | None = None,
    selection: str = "l1",
    calibration_batches: int = 4,
    calibration_batch_size: int = 128,
    bn_recalibration: bool = True,
    reconstruction: bool = False,
    symmetric: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    finetune_batches: int = 0,
    finetune_lr: float = 0.01,
    calibration_set: str = "train",
    memory_format: str = "contiguous",
    **env_kwargs: Any,
) -> CompressionEnv:
    """Build the environment from a trained model and a data module (the path ``amc.train`` takes).

    Args:
        model: the trained dense model.
        data: a :class:`amc.data.DataModule` (search split and calibration batches come from it).
        hardware: an :class:`amc.hardware.Accelerator` (wrapped for this model's units), a ready
            hardware model with ``model_cost``, or ``None``.
        reward: reward callable.
        budgets: target ratios per metric.
        selection: channel selection method.
        calibration_batches: training batches used for BN recalibration, activation ranges, ThiNet and
            reconstruction features.
        calibration_batch_size: their batch size.
        bn_recalibration: recalibrate BatchNorm after compression.
        reconstruction: least-squares reconstruction of pruned layers' consumers.
        symmetric: symmetric weight quantization.
        seed: seed for calibration batch choice and feature sampling.
        device: evaluation device.
        finetune_batches: labelled training batches of a short fine-tune in every episode (HAQ; 0: off).
        finetune_lr: its learning rate.
        calibration_set: ``train`` (BN statistics and activation ranges of every episode's model measured
            on the calibration batches, a pass of their own) or ``search`` (on one seeded random batch
            of the search split, inside the evaluation pass: an episode costs one evaluation; see
            :func:`amc.compress.calibrate_on_search_batch`).
        memory_format: memory order of the compressed models and their inputs: ``channels_last`` (NHWC),
            ``contiguous`` (NCHW) or ``auto`` (see :func:`use_channels_last`).
        **env_kwargs: the remaining :class:`CompressionEnv` options (mode, min_keep, bits...).
    """
    from amc.graph import build_graph
    from amc.hardware import Accelerator, HardwareModel

    device = torch.device(device)
    model = model.to(device).eval()
    graph = build_graph(model, data.input_shape)
    if isinstance(hardware, Accelerator):
        hardware = HardwareModel(hardware, graph.units)
    calib = [x.to(device) for x, _ in data.calibration_batches(calibration_batches, calibration_batch_size, seed)]
    channels_last = use_channels_last(memory_format, model, calib, device)
    order = torch.channels_last if channels_last else torch.contiguous_format
    calib = [x.contiguous(memory_format=order) for x in calib]
    compressor = Compressor(
        model,
        graph,
        selection=selection,
        calibration=calib,
        bn_recalibration=bn_recalibration,
        reconstruction=reconstruction,
        symmetric=symmetric,
        seed=seed,
        finetune_batches=[
            (x.to(device).contiguous(memory_format=order), y.to(device))
            for x, y in (
                data.calibration_batches(finetune_batches, calibration_batch_size, seed + 1) if finetune_batches else []
            )
        ],
        finetune_lr=finetune_lr,
        calibration_set=calibration_set,
        channels_last=channels_last,
    )
    x, y = data.search_tensors(device)
    if channels_last:  # a copy in NHWC order; the data module's cached tensors stay as they are
        x = x.contiguous(memory_format=torch.channels_last)
    return CompressionEnv(
        compressor, (x, y), reward=reward, budgets=budgets, hardware=hardware, device=device, **env_kwargs
    )


def make(model: torch.nn.Module | None = None, data: Any | None = None, **kwargs: Any) -> CompressionEnv:
    """The entry point of ``gymnasium.make("amc/Compression-v0", ...)``: from a model and data, or from parts.

    ``gymnasium.make("amc/Compression-v0", model=model, data=data, budgets={"macs": 0.5})`` builds the
    environment as :func:`make_env` does (any of its arguments may be given); ``compressor=`` and
    ``search_data=`` build :class:`CompressionEnv` directly.

    Args:
        model: the trained dense model (with ``data``).
        data: its :class:`amc.data.DataModule`.
        **kwargs: the other arguments of :func:`make_env`, or of :class:`CompressionEnv` without ``model``.
    """
    if model is not None or data is not None:
        if model is None or data is None or "compressor" in kwargs:
            raise AmcError(
                "gymnasium.make('amc/Compression-v0') takes model= and data= together (or compressor= and "
                "search_data=, without model/data)"
            )
        return make_env(model, data, **kwargs)
    if "compressor" not in kwargs:
        raise AmcError(
            "gymnasium.make('amc/Compression-v0') needs a model and its data: pass model=<trained model> and "
            "data=<amc.data DataModule> (or compressor= and search_data=)"
        )
    return CompressionEnv(**kwargs)
