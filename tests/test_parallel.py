"""Parallel episodes (``agent.n_envs``): evaluation workers, baselines, DDPG, checkpoints and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from amc.agents import CallbackList, DDPGAgent, GreedySearch, RandomSearch, UniformSearch
from amc.agents.callbacks import Checkpointer, latest_checkpoint, restore_rng
from amc.envs.pool import EvaluationPool
from test_agents import _Stop, _StopAt, small_env
from test_train import sigkill_after_checkpoint

from amc.compress import Policy
from amc.errors import AmcError

REPO = Path(__file__).resolve().parents[1]


def _rows(episodes: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("seconds", "cached")} for row in episodes]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _random_policies(env, n: int) -> list[Policy]:
    return env.random_policies(n, seed=0)


@pytest.mark.parametrize("calibration_set", ["train", "search"])
def test_workers_measure_what_the_env_measures_and_leave_no_process(calibration_set: str) -> None:
    env = small_env()
    env.compressor.calibration_set = calibration_set  # the workers' copies calibrate where the env's does
    policies = _random_policies(env, 3)
    policies.append(policies[1])  # a repeat within the batch is measured once and answered by the cache
    expected = [env.evaluate(p) for p in policies]
    env._accuracies.clear()
    with env.parallel(2):
        pids = env.pool.pids
        assert len(pids) == 2 and env.workers == 2
        got = env.evaluate_many(policies)
        with pytest.raises(AmcError, match=r"^evaluation worker 0 failed: .*agent\.n_envs=1"):
            env.pool.accuracies([Policy([1], [8], [8])])  # a policy of another model
    strip = [[{k: v for k, v in i.items() if k != "timing"} for i in infos] for infos in (expected, got)]
    assert strip[0] == strip[1]
    assert [i["cached"] for i in got] == [False, False, False, True]
    assert env.pool is None and env.workers == 1
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_a_dead_worker_is_one_line() -> None:
    env = small_env()
    with EvaluationPool(env.compressor, (env.search_x, env.search_y), 1, 64, torch.device("cpu")) as pool:
        os.kill(pool.pids[0], signal.SIGKILL)
        with pytest.raises(AmcError, match=r"^evaluation worker 0 stopped \(exit code .*agent\.n_envs=1$"):
            pool.accuracies([env.policy()])


BASELINES = {
    "random": (lambda n: RandomSearch(seed=2, n_envs=n), 5),
    "uniform": (lambda n: UniformSearch(n_envs=n), 4),
    "greedy": (lambda n: GreedySearch(keep_levels=[0.5], bit_levels=[4], n_envs=n), 16),
}


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_give_the_same_search_for_any_n_envs(name: str) -> None:
    make, episodes = BASELINES[name]
    one, two = (make(n).search(small_env(), episodes) for n in (1, 2))
    assert _rows(one.episodes) == _rows(two.episodes)
    assert one.best is not None and two.best is not None and one.best.policy == two.best.policy


def ddpg2(**kw) -> DDPGAgent:
    return DDPGAgent(
        **{"demos": [UniformSearch()], "warmup": 2, "exploit": 1, "sigma": 0.5, "seed": 3, "n_envs": 2, **kw}
    )


def test_ddpg_n_envs_repeats_for_a_seed_and_keeps_the_budgets() -> None:
    runs = [ddpg2().search(small_env(), 11) for _ in range(2)]
    assert _rows(runs[0].episodes) == _rows(runs[1].episodes)
    assert runs[0].best is not None and runs[1].best is not None
    assert runs[0].best.policy == runs[1].best.policy
    rows = runs[0].episodes
    assert len(rows) == 11 and [r["episode"] for r in rows] == list(range(1, 12))
    # Demo, warm-up rounded to whole batches, learning in batches of 2, the odd one left to exploitation.
    phases = [r["phase"] for r in rows]
    assert phases[0].startswith("demo_") and phases[1:3] == ["warmup"] * 2
    assert phases[3:9] == ["explore"] * 6 and phases[9:] == ["exploit"] * 2
    for r in rows:
        if int(r["eligible"]):
            assert r["ratio/macs"] <= 0.5 + 1e-9 and r["ratio/size"] <= 0.15 + 1e-9
    assert len({r["reward"] for r in rows if r["phase"] == "explore"}) > 1  # the two envs explore differently


def test_ddpg_n_envs_resumes_exactly_from_a_checkpoint(tmp_path: Path) -> None:
    straight = ddpg2().search(small_env(), 11).episodes
    env = small_env()
    with pytest.raises(_Stop, match=r"^stopped at a safe point$"):
        ddpg2().search(env, 11, CallbackList([Checkpointer(tmp_path / "checkpoints", every=1, env=env), _StopAt(5)]))
    np.random.seed(123), torch.manual_seed(123)  # whatever happens in between must not matter
    env2, resumed = small_env(), ddpg2()
    ckpt = latest_checkpoint(tmp_path)
    resumed.load(ckpt, env2, 11)
    restore_rng(ckpt, env2)
    assert _rows(resumed.search(env2, 11).episodes) == _rows(straight)


# A search in its own process: fresh, or resumed from the run's latest checkpoint; writes its episodes and the
# evaluation workers' pids (so the test can see they go when the search is killed).
_SCRIPT = """
import json, sys, numpy as np, torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from test_agents import small_env
from test_parallel import ddpg2
from amc.agents import SearchCallback, CallbackList
from amc.agents.callbacks import Checkpointer, latest_checkpoint, restore_rng
run = {run!r}
class Pids(SearchCallback):
    def on_episode(self, agent, record, is_best):
        with open(run + "/pids.json", "w") as f:
            json.dump(env.pool.pids, f)
env, agent = small_env(), ddpg2()
if {resume}:
    ckpt = latest_checkpoint(run)
    agent.load(ckpt, env, 11)
    restore_rng(ckpt, env)
result = agent.search(env, 11, CallbackList([Checkpointer(run + "/checkpoints", every=1, env=env), Pids()]))
with open(run + "/episodes.json", "w") as f:
    json.dump(result.episodes, f)
"""


def test_ddpg_n_envs_resumes_after_sigkill(tmp_path: Path) -> None:
    straight = ddpg2().search(small_env(), 11).episodes
    run = tmp_path / "run"
    run.mkdir()

    def script(resume: bool) -> str:
        return _SCRIPT.format(tests=str(REPO / "tests"), run=str(run), resume=resume)

    assert 3 <= sigkill_after_checkpoint(["-c", script(False)], run, 3) < 11
    pids = json.loads((run / "pids.json").read_text())
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), "an evaluation worker outlived its killed search"

    resumed = subprocess.Popen([sys.executable, "-c", script(True)], cwd=REPO, stderr=subprocess.PIPE, text=True)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err[-2000:]
    assert _rows(json.loads((run / "episodes.json").read_text())) == _rows(straight)


def test_n_envs_is_checked_with_the_config_and_by_the_agents() -> None:
    from hydra import compose, initialize_config_module

    from amc.schema import check_config

    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("train", overrides=["agent=random", "agent.n_envs=0", "output_dir=unused"])
    with pytest.raises(AmcError, match=r"^agent\.n_envs=0 must be positive; set agent\.n_envs=N with N >= 1"):
        check_config(cfg, "train")
    with pytest.raises(AmcError, match=r"^agent\.n_envs=0 must be >= 1"):
        RandomSearch(n_envs=0).validate(4)


def ppo2(**kw):  # noqa: ANN201
    from amc.agents import PPOAgent

    return PPOAgent(
        **{"demos": [UniformSearch()], "episodes_per_rollout": 4, "exploit": 1, "seed": 3, "n_envs": 2, **kw}
    )


def test_ppo_n_envs_splits_each_rollout_repeats_and_resumes(tmp_path: Path) -> None:
    runs = [ppo2().search(small_env(), 12) for _ in range(2)]
    assert _rows(runs[0].episodes) == _rows(runs[1].episodes)
    assert runs[0].best is not None and runs[0].best.policy == runs[1].best.policy
    phases = [r["phase"] for r in runs[0].episodes]
    # 4 episodes per rollout, 2 per environment: two whole rollouts fit before the exploitation episodes.
    assert phases == ["demo_uniform"] + ["explore"] * 8 + ["exploit"] * 3
    assert len({r["reward"] for r in runs[0].episodes if r["phase"] == "explore"}) > 1
    assert ppo2(episodes_per_rollout=3).rollout_episodes_per_env == 2  # rounded up to whole batches
    # A checkpoint at the first rollout's end resumes into the same search.
    env = small_env()
    with pytest.raises(_Stop, match=r"^stopped at a safe point$"):
        ppo2().search(env, 12, CallbackList([Checkpointer(tmp_path / "checkpoints", every=1, env=env), _StopAt(5)]))
    np.random.seed(123), torch.manual_seed(123)
    env2, resumed = small_env(), ppo2()
    ckpt = latest_checkpoint(tmp_path)
    resumed.load(ckpt, env2, 12)
    restore_rng(ckpt, env2)
    assert _rows(resumed.search(env2, 12).episodes) == _rows(runs[0].episodes)


def test_one_noise_schedule_for_parallel_episodes() -> None:
    from amc.agents import TruncatedNormalNoise
    from amc.agents.vec_env import SharedScheduleNoise

    noise = SharedScheduleNoise(TruncatedNormalNoise(3, sigma=0.4, decay=0.5, warmup_steps=4, seed=0, n_envs=2))
    assert np.array_equal(noise(), np.zeros((2, 3))) and np.array_equal(noise(), np.zeros((2, 3)))  # 4 env steps
    draw = noise()
    assert draw.shape == (2, 3) and not np.array_equal(draw[0], draw[1])  # one generator, a draw per env
    noise.reset(indices=[0])
    noise.reset(indices=[1])  # SB3 resets each finished env: both episodes drew noise, so sigma decays twice
    assert noise.schedule.sigma == pytest.approx(0.1)
    noise.reset()  # learn()'s own call after an episode without noise decays nothing
    assert noise.schedule.sigma == pytest.approx(0.1)
