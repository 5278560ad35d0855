"""HAWQ-V3-style allocation: the greedy agent's sensitivity scan, then an exact integer linear program."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
from amc.agents.baselines import GreedySearch
from amc.envs import CompressionEnv

log = logging.getLogger(__name__)


class ILPSearch(GreedySearch):
    """Per-unit sensitivity scan, then the budget allocation that minimises the summed accuracy drop, exactly.

    HAWQ-V3 (Yao et al., ICML 2021, section "Mixed Precision and Integer Linear Programming") picks
    one bitwidth per layer by an integer linear program: minimise the sum of per-layer
    sensitivities subject to linear budgets (model size, BOPS, latency).
    Here the sensitivities are the ones :class:`GreedySearch` measures (its scan is reused as is):
    the search-split accuracy lost when one dimension alone (a group's keep ratio, a unit's weight
    bits, a unit's activation bits) is lowered to a scan level. HAWQ's additive assumption makes the
    objective the sum of those drops.

    The program (``scipy.optimize.milp``, HiGHS branch and bound, solved to a zero gap):

    - one binary per *block* and combination of its dimensions' levels, exactly one per block. A
      block is everything one unit decides: its weight bits, its activation bits and the keep ratio
      of the group it decides, because the unit's bitops, size and an accelerator's latency and
      energy depend on them jointly (products, max), not on each alone;
    - objective: the summed measured drops, in search-split images (so the solver's absolute gap
      tolerance, 1e-6, is far below one image), plus the tie-break below;
    - one constraint per budget: each choice's coefficient is the metric's change when only its
      block moves from the top configuration (cost model, no episode), over the budget's limit.

    These costs are exact when a metric is a sum over units of functions of the unit's own bits
    (quantize mode: size, bitops, latency, energy), so the optimum over the scan levels is found. A
    group's keep ratio also multiplies with its consumers' (another unit's block) in prune and
    joint modes, where the summed changes underestimate the cost. So the solution's exact cost is
    checked with the budget wall; while a budget is missed, its cap on the approximate cost is
    scaled by approximate / exact cost and the program solved again. Once a solution fits, the
    caps are bisected between the last that failed and the loosest that fit, and the best fitting
    solution is kept (at most ``max_rounds`` re-solves in all). If no solution fits (or the scan
    levels cannot meet the budgets), the wall lowers the rest in the final episode, with a
    warning. The final episode always goes through the wall, so the budgets always hold.

    Episodes: the scan (phase ``scan``, never eligible as the best), then one (phase ``ilp``).

    Args:
        keep_levels: keep ratios scanned per decided group (below ``min_keep`` they become ``min_keep``).
        bit_levels: bitwidths scanned per unit (levels the environment offers).
        tie_break: the most, in search-split images, that a tie-break may add to the objective: among
            solutions with equal summed drops it prefers the one that uses more of the budgets
            (summed over budgets, as fractions of each limit). Drops are whole numbers of images, so
            any value below 1 only orders ties; 0 turns it off.
        max_rounds: re-solves with tightened or bisected caps when a solution misses a budget (prune and
            joint modes; the bisection stops early once the caps agree to 1e-4 of each limit).
        seed: unused (the ILP is deterministic); kept for a common signature.
        n_envs: scan configurations evaluated in parallel (the results are the same for any value).
    """

    name = "ilp"

    def __init__(
        self,
        keep_levels: Sequence[float] = (0.75, 0.5, 0.25),
        bit_levels: Sequence[int] = (6, 4, 2),
        tie_break: float = 0.5,
        max_rounds: int = 20,
        seed: int = 0,
        n_envs: int = 1,
    ) -> None:
        super().__init__(keep_levels, bit_levels, seed, n_envs)
        if not 0.0 <= tie_break < 1.0:
            raise ValueError(f"tie_break={tie_break} must be in [0, 1) search-split images so it only breaks ties")
        self.tie_break = float(tie_break)
        self.max_rounds = int(max_rounds)

    def objective(self, levels: Sequence[int]) -> float:
        """Summed measured accuracy drop (fraction of the search split) of a scan level per dimension."""
        drop = self.drops()
        return float(sum(drop[d][lv] for d, lv in enumerate(levels)))

    def blocks(self, env: CompressionEnv) -> list[list[int]]:
        """Dimensions chosen together: each unit's weight bits, activation bits and the keep ratio it decides."""
        decider = {gi: t for t, gi in env.decides.items()}
        out: list[list[int]] = []
        of_unit: dict[int, int] = {}
        for d, (kind, index, _) in enumerate(self.dims):
            t = decider[index] if kind == "keep" else index
            if t not in of_unit:
                of_unit[t] = len(out)
                out.append([])
            out[of_unit[t]].append(d)
        return out

    def allocate(self, env: CompressionEnv) -> list[int]:
        """Scan level per dimension: the ILP optimum, re-solved with tighter caps until the wall accepts it."""
        drop = self.drops()
        top_levels = [0] * len(self.dims)
        names = env.wall.names
        if not names:
            return top_levels
        limits = np.array([env.wall.limits[n] for n in names])
        top_config = self.config(env, top_levels)
        top = np.array([env.evaluator.metrics(*top_config, names)[n] for n in names])

        # Columns: (block, levels of its dimensions), with drop and cost change from the top configuration.
        blocks = self.blocks(env)
        columns: list[tuple[int, tuple[int, ...]]] = []
        col_drop: list[float] = []
        col_cost: list[np.ndarray] = []
        for b, dims in enumerate(blocks):
            for combo in itertools.product(*(range(len(self.dims[d][2])) for d in dims)):
                levels = list(top_levels)
                for d, lv in zip(dims, combo):
                    levels[d] = lv
                m = env.evaluator.metrics(*self.config(env, levels), names)
                columns.append((b, combo))
                col_drop.append(sum(drop[d][lv] for d, lv in zip(dims, combo)))
                col_cost.append(np.array([m[n] for n in names]) - top)
        block_of = np.array([b for b, _ in columns])
        delta = np.array(col_cost).T / limits[:, None]  # (budgets, columns): change as a fraction of the limit
        n_images = len(env.search_y)
        c = np.array(col_drop) * n_images
        if self.tie_break > 0:
            saved = -delta.sum(axis=0)  # budget use given up, summed over budgets
            for b in range(len(blocks)):
                saved[block_of == b] -= saved[block_of == b].min()  # one choice per block: shifts change nothing
            worst = sum(saved[block_of == b].max() for b in range(len(blocks)))
            if worst > 0:
                c = c + saved * (self.tie_break / worst)
        one_each = np.zeros((len(blocks), len(columns)))
        one_each[block_of, np.arange(len(columns))] = 1.0
        from scipy.optimize import Bounds, LinearConstraint, milp  # here: 0.2 s off every command's start

        def solve(cap: np.ndarray) -> tuple[list[int], float, np.ndarray] | None:
            """Levels, objective and approximate cost per budget of the optimum under ``cap`` (None: none fits)."""
            res = milp(
                c,
                integrality=np.ones(len(columns)),
                bounds=Bounds(0, 1),
                constraints=[
                    LinearConstraint(one_each, 1, 1),
                    LinearConstraint(delta, -np.inf, (cap - top) / limits),
                ],
                options={"mip_rel_gap": 0.0},
            )
            if res.x is None:
                return None
            chosen = np.flatnonzero(res.x > 0.5)
            levels = list(top_levels)
            for j in chosen:
                for d, lv in zip(blocks[block_of[j]], columns[j][1]):
                    levels[d] = lv
            return levels, float(res.fun), top + delta[:, chosen].sum(axis=1) * limits

        # Caps on each budget's approximate (summed-change) cost. First tighten every missed budget's
        # cap by approximate / exact cost until the wall accepts the solution; then bisect between
        # that cap and the last one that failed, keeping the best solution the wall accepts.
        cap, failed, accepted = limits.copy(), None, None
        best: tuple[float, list[int]] | None = None
        last: list[int] | None = None
        solves = 0
        for _ in range(self.max_rounds + 1):
            sol, solves = solve(cap), solves + 1
            if sol is None and last is None:
                log.warning("ilp: the scan levels cannot meet the budgets; all go lowest and the wall lowers the rest")
                return [len(values) - 1 for _, _, values in self.dims]
            if sol is None:
                if accepted is None:
                    break  # tightened past every choice of scan levels
                failed = cap
            else:
                last, fun, approx = sol
                config = self.config(env, last)
                if env.wall.feasible(*config):
                    if best is None or fun <= best[0]:  # equal: the looser cap's, later
                        best = (fun, last)
                    accepted = cap
                elif accepted is None:
                    exact = np.array([env.evaluator.metrics(*config, names)[n] for n in names])
                    over = exact > limits * (1 + 1e-12)
                    failed = cap
                    shrunk = np.where(approx > 0, cap * approx / exact, approx - (exact - limits))
                    cap = np.where(over, shrunk, cap)
                else:
                    failed = cap
            if accepted is None:
                continue
            if failed is None or np.all(failed - accepted <= 1e-4 * limits):
                break
            cap = (accepted + failed) / 2
        if best is not None:
            log.info("ilp: predicted accuracy drop %.4f (%d solve(s))", self.objective(best[1]), solves)
            return best[1]
        assert last is not None
        log.warning("ilp: the allocation still misses a budget after %d solves; the wall lowers the rest", solves)
        return last
