"""``agent=ilp``: budgets hold through the wall, the ILP is the brute-force optimum where exact, resume, CLI."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from amc.agents import GreedySearch, ILPSearch, SearchCallback
from amc.agents.base import Agent
from amc.envs import CompressionEnv
from test_agents import Recorder, small_env
from test_env import make_small_env
from test_pretrain import make_fmnist
from test_train import cli, sigkill_after_checkpoint, tiny

from amc.compress import Policy


def synthetic_scan(agent: ILPSearch, env: CompressionEnv, seed: int) -> None:
    """Plan ``agent``'s scan on ``env`` and give it random accuracies (whole images), as if it had run."""
    agent.setup(env, 10_000)
    n = len(env.search_y)
    rng = np.random.default_rng(seed)
    agent.scan_accuracy = [1.0, *(rng.integers(0, n, len(agent.scans) - 1) / n)]


@pytest.mark.parametrize(
    ("mode", "budgets"),
    [
        ("quantize", {"latency": 0.4}),
        ("prune", {"latency": 0.6}),
        ("prune", {"macs": 0.5}),
        ("joint", {"latency": 0.3}),
        ("joint", {"macs": 0.4, "latency": 0.5}),
    ],
)
def test_final_episode_meets_every_budget_unclipped(mode: str, budgets: dict[str, float]) -> None:
    env, agent, rec = make_small_env(mode, budgets, preset="bitfusion_edge"), ILPSearch([0.5], [4]), Recorder()
    result = agent.search(env, agent.scan_episodes(env) + 1, rec)
    assert [r.phase for r in rec.records] == ["scan"] * (len(rec.records) - 1) + ["ilp"]
    assert result.best is rec.records[-1] and result.best.eligible
    for name, target in budgets.items():
        assert result.best.budgets[name]["achieved"] <= target * (1 + 1e-9)
    # The allocation itself fits (the re-solves found it), so the wall played it as allocated.
    config = agent.config(env, agent.allocate(env))
    assert env.wall.feasible(*config)
    policy = Policy.from_dict(result.best.policy, env.graph)
    assert list(policy.kept) == list(config[0]) and list(policy.w_bits) == list(config[1])
    assert list(policy.a_bits) == list(config[2])


@pytest.mark.parametrize(
    ("budgets", "preset", "bit_levels", "env_kwargs"),
    [
        ({"latency": 0.6}, "bitfusion_edge", [4], {}),  # a unit's latency depends on its (w, a) pair
        ({"bitops": 0.06, "size": 0.2}, None, [4], {}),  # bitops: MACs x w x a
        ({"size": 0.18}, None, [6, 4, 2], {"a_bits": (32, 32)}),  # weights only, four levels each
    ],
)
def test_quantize_allocation_is_the_brute_force_optimum(
    budgets: dict[str, float], preset: str | None, bit_levels: list[int], env_kwargs: dict
) -> None:
    env = make_small_env("quantize", budgets, preset=preset, **env_kwargs)
    agent = ILPSearch(keep_levels=[], bit_levels=bit_levels)
    agent.setup(env, 10_000)
    combos = np.array(list(itertools.product(*(range(len(values)) for _, _, values in agent.dims))))
    assert 1_000 < len(combos) <= 20_000
    feasible = np.array([env.wall.feasible(*agent.config(env, lv)) for lv in combos])
    assert 0 < feasible.sum() < len(combos)
    for seed in range(3):
        synthetic_scan(agent, env, seed)
        drops = agent.drops()
        totals = np.array([sum(drops[d][lv] for d, lv in enumerate(row)) for row in combos[feasible]])
        levels = agent.allocate(env)
        assert env.wall.feasible(*agent.config(env, levels))
        assert agent.objective(levels) == pytest.approx(totals.min(), abs=1e-9)
        greedy = GreedySearch(bit_levels=bit_levels)
        greedy.dims, greedy.scans, greedy.scan_accuracy = agent.dims, agent.scans, agent.scan_accuracy
        assert agent.objective(levels) <= agent.objective(greedy.allocate(env)) + 1e-9


class Interrupted(Exception):
    pass


class SaveAndStop(SearchCallback):
    """Save the agent at episode ``at`` and stop the search there (as a kill right after a checkpoint)."""

    def __init__(self, at: int, directory: Path) -> None:
        self.at, self.directory = at, directory

    def on_safe_point(self, agent: Agent, episodes_done: int) -> None:
        if episodes_done == self.at:
            agent.save(self.directory)
            raise Interrupted("stopped after a checkpoint")


def test_saved_state_continues_like_an_uninterrupted_search(tmp_path: Path) -> None:
    def make() -> ILPSearch:
        return ILPSearch(keep_levels=[0.5], bit_levels=[4])

    env = small_env()
    episodes = make().scan_episodes(env) + 1
    straight = make().search(env, episodes)

    with pytest.raises(Interrupted, match=r"^stopped after a checkpoint$"):
        make().search(small_env(), episodes, SaveAndStop(8, tmp_path / "ckpt"))
    env2 = small_env()
    resumed = make()
    resumed.load(tmp_path / "ckpt", env2, episodes)
    assert resumed.episodes_done == 8
    rest = resumed.search(env2, episodes)
    strip = [
        [{k: v for k, v in row.items() if k not in ("seconds", "cached")} for row in r.episodes]
        for r in (straight, rest)
    ]
    assert strip[0] == strip[1]
    assert rest.best is not None and straight.best is not None
    assert rest.best.policy == straight.best.policy and rest.best.phase == "ilp"


def test_train_cli_runs_agent_ilp(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "fm")
    run_dir = tmp_path / "run"
    done = cli(
        "-m",
        "amc.train",
        *tiny(tmp_path),
        "agent=ilp",
        "episodes=40",  # more than the scan plus one: the search ends after its final episode
        "agent.keep_levels=[0.5]",
        "agent.bit_levels=[4]",
        f"hydra.run.dir={run_dir}",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    best = json.loads((run_dir / "best_policy.json").read_text())
    assert best["agent"] == "ilp" and best["budgets"]["latency"]["achieved"] <= best["budgets"]["latency"]["target"]
    phases = [row["phase"] for row in csv.DictReader((run_dir / "episodes.csv").open())]
    assert phases[-1] == "ilp" and set(phases[:-1]) == {"scan"} and best["episode"] == len(phases)


def test_train_cli_ilp_resumes_after_sigkill_with_the_same_best_policy(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "fm")
    args = [*tiny(tmp_path), "agent=ilp", "episodes=40", "agent.keep_levels=[0.5]", "agent.bit_levels=[4]"]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = cli("-m", "amc.train", *args, f"hydra.run.dir={straight}")
    assert done.returncode == 0, done.stderr[-2000:]
    killed_args = ["-m", "amc.train", *args, "callbacks.checkpoint_every=4", f"hydra.run.dir={killed}"]
    assert sigkill_after_checkpoint(killed_args, killed, 8) < 40
    resumed = cli("-m", "amc.train", f"resume={killed}", f"hydra.run.dir={tmp_path / 'resume_log'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (json.loads((d / "best_policy.json").read_text()) for d in (killed, straight))
    assert a["policy"] == b["policy"] and a["episode"] == b["episode"] and a["reward"] == b["reward"]
    rows = [
        [
            {k: v for k, v in r.items() if k not in ("seconds", "cached")}
            for r in csv.DictReader((d / "episodes.csv").open())
        ]
        for d in (killed, straight)
    ]
    assert rows[0] == rows[1]
