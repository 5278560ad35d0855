"""``amc/Compression-v0``: one episode walks the compressible units and decides channels and bits.

Step t handles unit t of the graph (forward order). Its action, in ``Box(-1, 1)``, is mapped inside
the env:

- ``prune`` mode: 1 dim, the keep ratio of the channel group this unit produces (in [min_keep, 1]);
  bits stay float32.
- ``quantize`` mode: 2 dims, weight bits and activation bits of this unit (levels min..max bits, plus
  float32 when ``allow_fp32``); channels stay whole.
- ``joint`` mode (default): 3 dims, keep ratio, weight bits, activation bits.

A coupled group is decided once, by its first producer in forward order; for the other units (and
for groups that cannot be pruned) the keep dimension is ignored and the observation says so. The
budget wall (:mod:`amc.envs.budget`) clips every decision so the final configuration meets every
budget. At the last step the policy is applied (:class:`amc.compress.Compressor`), the compressed
model is evaluated on the search split, and the reward function turns the metrics into the reward.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from amc.envs.budget import METRICS, BudgetWall, CostEvaluator, HardwareCostFn
from amc.envs.features import FeatureBuilder

from amc.compress import Compressor, Policy
from amc.cost import FP32, CostModel
from amc.errors import AmcError
from amc.evaluate import accuracy, tensor_batches
from amc.graph import round_channels
from amc.rewards import AccuracyReward

log = logging.getLogger(__name__)

MODES = ("prune", "quantize", "joint")


def bit_levels(min_bits: int, max_bits: int, allow_fp32: bool = False) -> list[int]:
    """The bitwidths an action can choose, ascending; float32 is an explicit extra level.

    Args:
        min_bits: fewest bits.
        max_bits: most bits (<= 16); ``min_bits == max_bits == 32`` keeps the operand float.
        allow_fp32: append ``FP32`` (unquantized) as the top level.
    """
    if min_bits == max_bits == FP32:
        return [FP32]  # this operand stays float (e.g. HAQ's weight-only setting: a_bits=[32, 32])
    if not 1 <= min_bits <= max_bits <= 16:
        raise AmcError(
            f"bit range {min_bits}..{max_bits} is invalid; use 1 <= min_bits <= max_bits <= 16 (or [32, 32]: float)"
        )
    return list(range(min_bits, max_bits + 1)) + ([FP32] if allow_fp32 else [])


def action_to_level(a: float, n: int) -> int:
    """Map an action in [-1, 1] to an index in 0..n-1 (equal-width bins, HAQ's continuous-to-discrete)."""
    return int(min(n - 1, max(0, math.floor((float(a) + 1.0) / 2.0 * n))))


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
        eval_batch_size: batch size of the search-split evaluation.
        device: where the compressed model is evaluated.
        dense_accuracy: the baseline's search accuracy (measured at construction when omitted).
        nonfinite: what an episode whose compressed model outputs NaN/inf does: ``skip`` (logged, reward 0,
            never the best, the search goes on) or ``fail`` (stop with an error).
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
        eval_batch_size: int = 1000,
        device: str | torch.device = "cpu",
        dense_accuracy: float | None = None,
        nonfinite: str = "skip",
    ) -> None:
        super().__init__()
        if nonfinite not in ("skip", "fail"):
            raise AmcError(f"nonfinite={nonfinite!r} is not an option; use skip (log and continue) or fail")
        self.nonfinite, self.nonfinite_episodes = nonfinite, 0
        if mode not in MODES:
            raise AmcError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        if not 0.0 < min_keep <= 1.0:
            raise AmcError(f"min_keep={min_keep} must be in (0, 1]")
        self.compressor = compressor
        self.graph = compressor.graph
        self.mode = mode
        self.prune = mode in ("prune", "joint")
        self.quantize = mode in ("quantize", "joint")
        self.reward_fn = reward if reward is not None else AccuracyReward()
        self.device = torch.device(device)
        self.search_x, self.search_y = search_data
        self.eval_batch_size = int(eval_batch_size)
        self.min_keep = float(min_keep)
        self.channel_multiple = max(1, int(channel_multiple))
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
        self.min_w = np.full(self.n_units, self.w_levels[0], dtype=np.int64)
        self.min_a = np.full(self.n_units, self.a_levels[0], dtype=np.int64)
        self.wall.check_reachable(self.min_kept, self.min_w, self.min_a)

        self.action_dim = {"prune": 1, "quantize": 2, "joint": 3}[mode]
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(self.action_dim,), dtype=np.float32)
        self.features = FeatureBuilder(self.graph, self.wall.names)
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(self.features.size,), dtype=np.float32)
        self.dense_accuracy = dense_accuracy if dense_accuracy is not None else self._evaluate(compressor.model)
        if not math.isfinite(self.dense_accuracy):
            raise AmcError(
                "the uncompressed model gives NaN/inf outputs on the search split; its weights are broken "
                "(retrain it with pretrain.force=true or pass other pretrain.weights)"
            )
        self._t = 0
        self._reset_state()

    # --- episode state -------------------------------------------------------------------------
    def _reset_state(self) -> None:
        self._t = 0
        self.kept = self.min_kept.copy()
        self.w = self.min_w.copy()
        self.a = self.min_a.copy()
        self.ratio_actions = np.ones(self.n_units)
        self._prev = (1.0, 1.0, 1.0)
        self._wall_seconds = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Start an episode at the first unit."""
        super().reset(seed=seed)
        self._reset_state()
        return self._observation(), {}

    def _observation(self) -> np.ndarray:
        t = min(self._t, self.n_units - 1)
        dense = self.evaluator.dense
        unit_macs, _ = self.cost_model.unit_macs_params(self.kept)
        ratios = self.wall.ratios(self.kept, self.w, self.a) if self.wall.names else {}
        return self.features.build(
            t=t,
            decides=t in self.decides,
            macs_before=float(unit_macs[:t].sum()) / dense["macs"],
            prev=self._prev,
            budget_use={n: ratios[n] / self.wall.budgets[n] for n in self.wall.names},
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

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Decide unit t's channels and bits (clipped by the budget wall); evaluate after the last unit."""
        self.decide(action)
        if self._t < self.n_units:
            return self._observation(), 0.0, False, False, {}
        info = self._finish()
        return self._observation(), float(info["reward"]), True, False, info

    def decide(self, action: np.ndarray) -> None:
        """Apply one step's action through the budget wall and move to the next unit (no evaluation).

        ``step`` calls this; baselines and tests that only need the legal policy may call it directly.
        """
        if self._t >= self.n_units:
            raise RuntimeError("episode is over; call reset()")
        t0 = time.perf_counter()
        keep_a, w_a, a_a = self._split_action(action)
        t = self._t
        keep_ratio = 1.0
        if keep_a is not None and t in self.decides:
            gi = self.decides[t]
            channels = self.graph.groups[gi].channels
            keep_ratio = self.min_keep + (keep_a + 1.0) / 2.0 * (1.0 - self.min_keep)
            wish = round_channels(
                keep_ratio * channels, channels, self.channel_multiple, math.ceil(self.min_keep * channels)
            )

            def legal_k(k: int) -> bool:
                kept = self.kept.copy()
                kept[gi] = k
                return self.wall.feasible(kept, self.w, self.a)

            self.kept[gi] = BudgetWall.largest_legal(self.channel_choices[gi], wish, legal_k)
            keep_ratio = self.kept[gi] / channels
        if w_a is not None:
            wish_w = self.w_levels[action_to_level(w_a, len(self.w_levels))]

            def legal_w(b: int) -> bool:
                w = self.w.copy()
                w[t] = b
                return self.wall.feasible(self.kept, w, self.a)

            self.w[t] = BudgetWall.largest_legal(self.w_levels, wish_w, legal_w)
        if a_a is not None:
            wish_a = self.a_levels[action_to_level(a_a, len(self.a_levels))]

            def legal_a(b: int) -> bool:
                a = self.a.copy()
                a[t] = b
                return self.wall.feasible(self.kept, self.w, a)

            self.a[t] = BudgetWall.largest_legal(self.a_levels, wish_a, legal_a)
        self.ratio_actions[t] = keep_ratio
        self._prev = (keep_ratio, self.w[t] / max(self.w_levels), self.a[t] / max(self.a_levels))
        self._t += 1
        self._wall_seconds += time.perf_counter() - t0

    # --- end of episode ------------------------------------------------------------------------
    def policy(self) -> Policy:
        """The current episode's decisions as a :class:`Policy`."""
        return Policy([int(k) for k in self.kept], [int(b) for b in self.w], [int(b) for b in self.a])

    def _evaluate(self, model: torch.nn.Module) -> float:
        """Search accuracy; NaN when any output is NaN/inf (the episode then fails, see ``nonfinite``)."""
        model.to(self.device)
        res = accuracy(model, tensor_batches(self.search_x, self.search_y, self.eval_batch_size), self.device)
        return float("nan") if res["nonfinite"] else res["top1"]

    def _finish(self) -> dict[str, Any]:
        return self.evaluate(self.policy(), {"wall_and_features": self._wall_seconds})

    def evaluate(self, policy: Policy, timing: dict[str, float] | None = None) -> dict[str, Any]:
        """Compress, evaluate and reward ``policy``: the end-of-episode ``info``.

        The budget wall is not consulted, so baselines can also score configurations outside it
        (sensitivity scans); ``info["budgets"]`` still reports each target and achieved ratio.

        Args:
            policy: the configuration.
            timing: seconds per phase are added to it (and returned as ``info["timing"]``).
        """
        timing = timing if timing is not None else {}
        model = self.compressor.apply(policy, timing)
        t = time.perf_counter()
        acc = self._evaluate(model)
        timing["evaluation"] = time.perf_counter() - t
        metrics = self.evaluator.metrics(policy.kept, policy.w_bits, policy.a_bits)
        info: dict[str, Any] = {"accuracy": acc, "dense_accuracy": self.dense_accuracy}
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


__all__ = ["METRICS", "MODES", "CompressionEnv", "action_to_level", "bit_levels"]


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
            (x.to(device), y.to(device))
            for x, y in (
                data.calibration_batches(finetune_batches, calibration_batch_size, seed + 1) if finetune_batches else []
            )
        ],
        finetune_lr=finetune_lr,
    )
    x, y = data.search_tensors(device)
    return CompressionEnv(
        compressor, (x, y), reward=reward, budgets=budgets, hardware=hardware, device=device, **env_kwargs
    )
