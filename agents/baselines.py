"""Baselines behind the same interface and the same budget wall: random, uniform and sensitivity-greedy."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from amc.agents.base import (
    Agent,
    SearchCallback,
    actions_for,
    channels_at,
    evaluate_configs,
    run_episode,
    run_episodes,
)
from amc.envs import CompressionEnv

from amc.compress import Policy
from amc.errors import AmcError

log = logging.getLogger(__name__)

Config = tuple[np.ndarray, np.ndarray, np.ndarray]


class RandomSearch(Agent):
    """Random search: every action uniform in [-1, 1], the wall keeps each episode within budget.

    With ``n_envs`` workers the episodes go ``n_envs`` at a time: their actions are drawn in the same
    order from the same generator and evaluated together, so the results are the same for any ``n_envs``.

    Args:
        seed: seed of the agent's own generator.
        n_envs: episodes evaluated in parallel.
    """

    name = "random"

    def __init__(self, seed: int = 0, n_envs: int = 1) -> None:
        super().__init__(seed, n_envs)
        self.rng = np.random.default_rng(seed)

    def _search(self, env: CompressionEnv, episodes: int, callback: SearchCallback) -> None:
        while self.episodes_done < episodes:
            n = min(env.workers, episodes - self.episodes_done)
            t0 = time.perf_counter()
            actions = [self.rng.uniform(-1.0, 1.0, (env.n_units, env.action_dim)).astype(np.float32) for _ in range(n)]
            infos = run_episodes(env, actions)
            seconds = (time.perf_counter() - t0) / n
            for info in infos:
                self.record(info, "random", seconds, callback)
            callback.on_safe_point(self, self.episodes_done)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rng.bit_generator.state = dict(state["rng"])


class UniformSearch(Agent):
    """One keep ratio and one bitwidth for all units, each candidate the largest that meets every budget.

    For every bitwidth (weights and activations alike, highest first) the largest shared keep ratio
    whose uniform configuration meets the budgets is found on a grid refined by bisection, with
    cost-model dry runs only. Candidates that keep no more channels than one with more bits are
    dominated and dropped, and the list stops at one that keeps every channel. Each candidate then
    costs one episode through the environment. The search ends after the candidates
    (usually a handful of episodes), or earlier when the budget runs out.

    Args:
        grid: points of the initial keep-ratio grid.
        seed: unused (uniform is deterministic); kept for a common signature.
        n_envs: candidates evaluated in parallel.
    """

    name = "uniform"

    def __init__(self, grid: int = 101, seed: int = 0, n_envs: int = 1) -> None:
        super().__init__(seed, n_envs)
        self.grid = int(grid)
        self.candidates: list[tuple[float, int]] = []

    def setup(self, env: CompressionEnv, episodes: int) -> None:
        super().setup(env, episodes)
        if not self.candidates:
            self.candidates = self.find_candidates(env)
            if not self.candidates:
                raise AmcError(
                    "no uniform configuration meets the budgets; raise the budgets or lower min_keep/min bits"
                )

    def episodes_needed(self, env: CompressionEnv) -> int:
        """One episode per candidate."""
        return len(self.candidates or self.find_candidates(env))

    def find_candidates(self, env: CompressionEnv) -> list[tuple[float, int]]:
        """(keep ratio, bits) pairs, highest bits first, each with the largest feasible shared ratio."""
        return env.uniform_candidates(self.grid)

    def _search(self, env: CompressionEnv, episodes: int, callback: SearchCallback) -> None:
        end = min(episodes, len(self.candidates))
        while self.episodes_done < end:
            batch = self.candidates[self.episodes_done : self.episodes_done + env.workers][: end - self.episodes_done]
            t0 = time.perf_counter()
            configs = [env.uniform_config(ratio, bits) for ratio, bits in batch]
            infos = run_episodes(env, [actions_for(env, *c) for c in configs], [env.wall.feasible(*c) for c in configs])
            for config, info in zip(configs, infos):
                _check_unclipped(env, config, info)
            seconds = (time.perf_counter() - t0) / len(batch)
            for (ratio, bits), info in zip(batch, infos):
                self.record(info, "uniform", seconds, callback, extras={"uniform_keep": ratio, "uniform_bits": bits})
            callback.on_safe_point(self, self.episodes_done)


def _check_unclipped(env: CompressionEnv, config: Config, info: Mapping[str, Any]) -> None:
    """Warn when the evaluated policy (in the episode's ``info``) is not the legal ``config`` that was asked for."""
    policy = Policy.from_dict(info["policy"], env.graph)
    kept, w, a = config
    if not (list(kept) == policy.kept and list(w) == policy.w_bits and list(a) == policy.a_bits):
        log.warning("the budget wall changed a configuration that should be legal; the episode used the wall's version")


class GreedySearch(Agent):
    """Per-unit sensitivity scan, then a greedy allocation of the budget to the least sensitive choices.

    1. Scan (one episode each, evaluated outside the wall and never eligible as the best): the
       *top* configuration (all channels, the highest bit level), then every decision dimension of
       every unit (keep ratio of the group it decides, weight bits, activation bits) lowered alone
       to each scan level.
    2. Allocation (cost model only): from the top configuration, repeatedly lower the dimension
       (to any lower scan level) with the largest budget saving per unit of measured accuracy loss,
       until every budget is met; then raise back, best accuracy gain first, any dimension that
       still fits.
    3. One episode evaluates the result through the wall.

    Every scan episode counts against the episode budget, which must cover the scan plus one.

    Args:
        keep_levels: keep ratios scanned per decided group (below ``min_keep`` they become ``min_keep``).
        bit_levels: bitwidths scanned per unit (levels the environment offers).
        seed: unused (greedy is deterministic); kept for a common signature.
        n_envs: scan configurations evaluated in parallel (the results are the same for any value).
    """

    name = "greedy"

    def __init__(
        self,
        keep_levels: Sequence[float] = (0.75, 0.5, 0.25),
        bit_levels: Sequence[int] = (6, 4, 2),
        seed: int = 0,
        n_envs: int = 1,
    ) -> None:
        super().__init__(seed, n_envs)
        self.keep_levels = [float(r) for r in keep_levels]
        self.bit_levels = [int(b) for b in bit_levels]
        self.dims: list[tuple[str, int, list[int]]] = []  # (kind, unit or group, values from top to lowest)
        self.scans: list[tuple[int, int]] = []  # (dim, level) with (-1, 0) the top configuration
        self.scan_accuracy: list[float] = []

    # --- plan -----------------------------------------------------------------------------------
    def _plan(self, env: CompressionEnv) -> None:
        dims: list[tuple[str, int, list[int]]] = []
        for t in range(env.n_units):
            if t in env.decides:
                gi = env.decides[t]
                values = [env.graph.groups[gi].channels]
                for r in self.keep_levels:
                    c = channels_at(env, gi, max(r, env.min_keep))
                    if c < values[-1]:
                        values.append(c)
                if len(values) > 1:
                    dims.append(("keep", gi, values))
            if env.quantize:
                for kind, levels in (("w", env.w_choices[t]), ("a", env.a_choices[t])):
                    values = [levels[-1]] + [
                        b for b in sorted(set(self.bit_levels), reverse=True) if b in levels and b < levels[-1]
                    ]
                    if len(values) > 1:
                        dims.append((kind, t, values))
        self.dims = dims
        self.scans = [(-1, 0)] + [(d, lv) for d, (_, _, values) in enumerate(dims) for lv in range(1, len(values))]

    def scan_episodes(self, env: CompressionEnv) -> int:
        """Episodes the sensitivity scan of ``env`` takes."""
        if not self.scans:
            self._plan(env)
        return len(self.scans)

    def episodes_needed(self, env: CompressionEnv) -> int:
        """The sensitivity scan plus the allocation's episode."""
        return self.scan_episodes(env) + 1

    def setup(self, env: CompressionEnv, episodes: int) -> None:
        super().setup(env, episodes)
        need = self.scan_episodes(env) + 1
        if episodes < need:
            raise AmcError(
                f"{self.name} needs {need} episodes on this model (a {need - 1}-episode sensitivity scan plus "
                f"one); set episodes>={need} or scan fewer levels (agent.keep_levels, agent.bit_levels)"
            )

    def config(self, env: CompressionEnv, levels: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The configuration with dimension ``d`` at scan level ``levels[d]`` (0 = top)."""
        kept = env.min_kept.copy()
        for gi in env.decides.values():
            kept[gi] = env.graph.groups[gi].channels
        w = np.array([c[-1] for c in env.w_choices], dtype=np.int64)
        a = np.array([c[-1] for c in env.a_choices], dtype=np.int64)
        for (kind, index, values), lv in zip(self.dims, levels):
            {"keep": kept, "w": w, "a": a}[kind][index] = values[lv]
        return kept, w, a

    # --- search ---------------------------------------------------------------------------------
    def _search(self, env: CompressionEnv, episodes: int, callback: SearchCallback) -> None:
        while self.episodes_done < len(self.scans):
            batch = self.scans[self.episodes_done : self.episodes_done + env.workers]
            configs = []
            for d, lv in batch:
                levels = [0] * len(self.dims)
                if d >= 0:
                    levels[d] = lv
                configs.append(self.config(env, levels))
            t0 = time.perf_counter()
            infos = evaluate_configs(env, configs)
            seconds = (time.perf_counter() - t0) / len(batch)
            for info in infos:
                self.scan_accuracy.append(float(info["accuracy"]))
                self.record(info, "scan", seconds, callback, eligible=False)
            callback.on_safe_point(self, self.episodes_done)
        if self.episodes_done == len(self.scans):
            t0 = time.perf_counter()
            config = self.config(env, self.allocate(env))
            info = run_episode(env, actions_for(env, *config), legal=env.wall.feasible(*config))
            _check_unclipped(env, config, info)
            self.record(info, self.name, time.perf_counter() - t0, callback)  # the allocation's episode
            callback.on_safe_point(self, self.episodes_done)

    def drops(self) -> list[list[float]]:
        """Measured accuracy loss per dimension and level, relative to the top configuration (non-decreasing)."""
        top = self.scan_accuracy[0]
        out: list[list[float]] = [[0.0] for _ in self.dims]
        for (d, _), acc in zip(self.scans[1:], self.scan_accuracy[1:]):
            out[d].append(max(out[d][-1], top - acc))
        return out

    def allocate(self, env: CompressionEnv) -> list[int]:
        """Scan level per dimension: lower the cheapest-per-accuracy dimensions until the budgets hold, then refill."""
        drop = self.drops()
        levels = [0] * len(self.dims)
        names = env.wall.names

        def pressure(lv: Sequence[int]) -> float:
            ratios = env.wall.ratios(*self.config(env, lv))
            return sum(ratios[n] / env.wall.budgets[n] for n in names)

        while not env.wall.feasible(*self.config(env, levels)):
            now = pressure(levels)
            best: tuple[int, int] | None = None
            best_score = 0.0
            # Any lower level, not only the next: a cost model can be flat between levels (an 8-bit
            # datapath runs 6 bits as 8), so one step may save nothing where two save a lot.
            for d, (_, _, values) in enumerate(self.dims):
                for lv in range(levels[d] + 1, len(values)):
                    trial = list(levels)
                    trial[d] = lv
                    saving = now - pressure(trial)
                    if saving <= 0:
                        continue
                    score = saving / (drop[d][lv] - drop[d][levels[d]] + 1e-4)
                    if score > best_score:
                        best, best_score = (d, lv), score
            if best is None:
                log.warning("greedy: the scan levels cannot meet the budgets; the wall lowers the rest")
                break
            levels[best[0]] = best[1]
        refill = True
        while refill:
            refill = False
            lowered = [d for d in range(len(self.dims)) if levels[d] > 0]
            gains = sorted(((drop[d][levels[d]] - drop[d][levels[d] - 1], d) for d in lowered), reverse=True)
            for _, d in gains:
                trial = list(levels)
                trial[d] -= 1
                if env.wall.feasible(*self.config(env, trial)):
                    levels, refill = trial, True
                    break
        return levels

    def state_dict(self) -> dict[str, Any]:
        return {"scan_accuracy": self.scan_accuracy}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scan_accuracy = [float(a) for a in state["scan_accuracy"]]
