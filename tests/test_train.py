"""``python -m amc.train`` and ``python -m amc.report``: outputs, TensorBoard, resume after SIGKILL, sweeps, errors.

Everything runs on a tiny Fashion-MNIST stand-in (600 images) with a baseline pretrained once per session.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig
from test_pretrain import make_fmnist, tiny_data_args

from amc.compress import Policy
from amc.errors import AmcError
from amc.graph import build_graph
from amc.models import build_model
from amc.pretrain import load_or_pretrain
from amc.train import train

REPO = Path(__file__).resolve().parents[1]


def tiny(root: Path) -> list[str]:
    """Overrides for the tiny data under ``root`` (its own cache)."""
    return [
        *tiny_data_args(root, epochs=3),
        "env.calibration_batches=2",
        "env.calibration_batch_size=32",
        "callbacks.progress_bar=false",
    ]


@pytest.fixture(scope="package")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny data and its pretrained baseline, shared by the tests of this module."""
    root = tmp_path_factory.mktemp("amc_train")
    make_fmnist(root / "fm")
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        load_or_pretrain(compose("train", overrides=[*tiny(root), "output_dir=unused"]))
    return root


@pytest.fixture
def cfg_for(tiny_root: Path, tmp_path: Path) -> Callable[..., DictConfig]:
    """Compose the train config for the tiny setup, writing into this test's ``tmp_path``."""

    def make(*overrides: str) -> DictConfig:
        with initialize_config_module(config_module="amc.conf", version_base="1.3"):
            return compose("train", overrides=[*tiny(tiny_root), f"output_dir={tmp_path}", *overrides])

    return make


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


AGENT_ARGS = {
    # A uniform demonstration (1-3 episodes) keeps the tiny search short; the default also runs greedy's scan.
    "ddpg": [
        "episodes=8",
        "agent.demos=[{_target_:amc.agents.UniformSearch}]",
        "agent.warmup=2",
        "callbacks.image_every=2",
        "callbacks.checkpoint_every=2",
    ],
    "ddpg_cold": ["episodes=6", "agent.warmup=2"],
    "td3": ["episodes=6", "agent.demos=[{_target_:amc.agents.UniformSearch}]", "agent.exploit=1"],
    "random": ["episodes=4"],
    "uniform": ["episodes=4"],
    "greedy": ["episodes=22", "agent.keep_levels=[0.5]", "agent.bit_levels=[4]"],
    "ilp": ["episodes=22", "agent.keep_levels=[0.5]", "agent.bit_levels=[4]"],
}


@pytest.mark.parametrize("agent", list(AGENT_ARGS))
def test_search_writes_every_output(agent: str, cfg_for: Callable[..., DictConfig], tmp_path: Path) -> None:
    summary = train(cfg_for(f"agent={agent}", *AGENT_ARGS[agent]))
    best = json.loads((tmp_path / "best_policy.json").read_text())
    assert best["agent"] == {"ddpg_cold": "ddpg"}.get(agent, agent) and best["budgets"]["latency"]["target"] == 0.5
    assert best["budgets"]["latency"]["achieved"] <= 0.5
    assert {"accuracy", "reward", "episode", "config_hash", "test_accuracy", "metrics", "ratios"} <= set(best)
    graph = build_graph(build_model("fmnist_cnn", num_classes=10, in_channels=1), (1, 28, 28))
    policy = Policy.load(tmp_path / "best_policy.json", graph)
    assert len(policy.kept) == len(graph.groups)
    rows = list(csv.DictReader((tmp_path / "episodes.csv").open()))
    assert len(rows) == summary["episodes"]
    assert {"reward", "accuracy", "ratio/latency", "ratio/macs", "seconds", "cached"} <= set(rows[0])
    assert float(rows[-1]["best_reward"]) == pytest.approx(best["reward"])
    assert (tmp_path / "checkpoints" / "latest.json").is_file() and (tmp_path / "best_policy.png").is_file()
    assert "| latency" in summary["table"] and "dense" in summary["table"]


def test_tensorboard_has_search_policy_train_and_hparams(
    cfg_for: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    import amc.agents.callbacks as callbacks
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    drawn_on = []  # the real drawing, watched: which thread draws each policy image
    draw = callbacks.policy_image
    monkeypatch.setattr(
        callbacks, "policy_image", lambda *a, **k: drawn_on.append(threading.current_thread().name) or draw(*a, **k)
    )
    train(cfg_for("agent=ddpg", *AGENT_ARGS["ddpg"]))
    assert drawn_on and all(name.startswith("amc-tensorboard-images") for name in drawn_on), drawn_on
    assert not [t for t in threading.enumerate() if t.name.startswith("amc-tensorboard-images")], "thread left"
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    scalars = set(tags["scalars"])
    assert {
        "search/reward",
        "search/accuracy",
        "search/ratio/latency",
        "search/ratio/macs",
        "search/best_reward",
        "policy/mean_keep",
        "policy/mean_w_bits",
        "train/noise_sigma",
        "train/actor_loss",
        "train/critic_loss",
        "hparam/best_reward",
    } <= scalars
    assert [e.step for e in events.Scalars("search/reward")] == list(range(1, 9))
    assert {"policy/best", "policy/episode"} <= set(tags["images"])
    assert [e.step for e in events.Images("policy/episode")] == [2, 4, 6, 8]
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(events.PluginTagToContent("hparams"))


def _run_args(root: Path, *extra: str, warmup: int = 3) -> list[str]:
    return [
        "-m",
        "amc.train",
        *tiny(root),
        "episodes=14",
        "agent.demos=[{_target_:amc.agents.UniformSearch}]",
        f"agent.warmup={warmup}",
        "callbacks.checkpoint_every=4",
        *extra,
    ]


@pytest.fixture(scope="module")
def straight(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted search every kill-and-resume test must end up equal to."""
    run = tmp_path_factory.mktemp("straight") / "run"
    done = cli(*_run_args(tiny_root, f"hydra.run.dir={run}"))
    assert done.returncode == 0, done.stderr[-2000:]
    return run


def _same_search(killed: Path, straight: Path) -> None:
    a, b = (json.loads((d / "best_policy.json").read_text()) for d in (killed, straight))
    assert a["policy"] == b["policy"] and a["episode"] == b["episode"] and a["reward"] == b["reward"]
    assert a["config_hash"] == b["config_hash"]
    rows = [
        [
            {k: v for k, v in r.items() if k not in ("seconds", "cached")}
            for r in csv.DictReader((d / "episodes.csv").open())
        ]
        for d in (killed, straight)
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 14


def sigkill_after_checkpoint(args: list[str], run_dir: Path, episode: int, settle: float = 0.0) -> int:
    """Run ``python *args``, SIGKILL it once ``run_dir`` holds a checkpoint of ``episode`` or later (after
    ``settle`` more seconds, to stop it mid-episode); returns the episode of the checkpoint left behind."""
    proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest, deadline = run_dir / "checkpoints" / "latest.json", time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if latest.exists() and json.loads(latest.read_text())["episode"] >= episode:
            time.sleep(settle)
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    return int(json.loads(latest.read_text())["episode"])


def _kill_and_resume(root: Path, killed: Path, tmp_path: Path, *extra: str, warmup: int = 3) -> None:
    """Start the search, SIGKILL it after its episode-4 checkpoint (mid-episode), resume it with ``resume=``."""
    args = _run_args(root, f"hydra.run.dir={killed}", *extra, warmup=warmup)
    stopped_at = sigkill_after_checkpoint(args, killed, 4, settle=0.2)
    assert 4 <= stopped_at < 14

    resumed = cli("-m", "amc.train", f"resume={killed}", f"hydra.run.dir={tmp_path / 'resume_log'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def test_resume_after_sigkill_ends_with_the_same_best_policy(tiny_root: Path, straight: Path, tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    _kill_and_resume(tiny_root, killed, tmp_path)
    _same_search(killed, straight)


# td3 stands for the off-policy family in the default run; sac and ppo (resumed in-process by
# test_parallel too) are marked slow to keep the default run under 6 minutes.
@pytest.mark.parametrize(
    "agent", ["td3", pytest.param("sac", marks=pytest.mark.slow), pytest.param("ppo", marks=pytest.mark.slow)]
)
def test_other_sb3_agents_resume_after_sigkill_with_the_same_best_policy(
    agent: str, tiny_root: Path, tmp_path: Path
) -> None:
    """TD3, SAC and PPO through ``amc.train``: killed mid-search, resumed with ``resume=``, as if uninterrupted."""
    warmup = 0 if agent == "ppo" else 3  # PPO has no warm-up (on-policy)
    straight = tmp_path / "straight"
    done = cli(*_run_args(tiny_root, f"agent={agent}", f"hydra.run.dir={straight}", warmup=warmup))
    assert done.returncode == 0, done.stderr[-2000:]
    killed = tmp_path / "killed"
    _kill_and_resume(tiny_root, killed, tmp_path, f"agent={agent}", warmup=warmup)
    _same_search(killed, straight)


@pytest.mark.slow  # 20 s; tests/test_parallel.py kills an n_envs=2 search and its workers in the default run
def test_resume_after_sigkill_with_parallel_episodes(tiny_root: Path, tmp_path: Path) -> None:
    """``agent.n_envs=2`` (two workers, lockstep episodes) through the command: kill, ``resume=``, same search."""
    straight = tmp_path / "straight"
    done = cli(*_run_args(tiny_root, f"hydra.run.dir={straight}", "agent.n_envs=2"))
    assert done.returncode == 0, done.stderr[-2000:]
    killed = tmp_path / "killed"
    _kill_and_resume(tiny_root, killed, tmp_path, "agent.n_envs=2")
    _same_search(killed, straight)


# Runs amc.train with an os.replace that SIGKILLs the process just before the nth rename onto a file named
# `target`: atomic writes are "write a temporary file, then os.replace", so this is the last moment of a write.
KILLER = """
import os, runpy, signal, sys
target, nth = sys.argv[1], int(sys.argv[2])
real, seen = os.replace, [0]
def replace(src, dst, *args, **kwargs):
    if os.path.basename(os.fspath(dst)) == target:
        seen[0] += 1
        if seen[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *args, **kwargs)
os.replace = replace
sys.argv = ["amc.train", *sys.argv[3:]]
runpy.run_module("amc.train", run_name="__main__", alter_sys=True)
"""


def _killed_at(target: str, nth: int, *args: str) -> None:
    proc = cli("-c", KILLER, target, str(nth), *args)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def test_kills_inside_the_checkpoint_writes_resume_to_the_same_search(
    tiny_root: Path, straight: Path, tmp_path: Path
) -> None:
    killed = tmp_path / "killed"
    ckpts = killed / "checkpoints"
    # 1. Killed while the second checkpoint (episode 8) writes its RNG state inside its temporary directory.
    _killed_at("rng.pt", 2, *_run_args(tiny_root, f"hydra.run.dir={killed}")[2:])
    assert json.loads((ckpts / "latest.json").read_text())["episode"] == 4  # the first checkpoint still holds
    assert any(p.name.startswith(".episode_000008.") for p in ckpts.iterdir())
    # 2. Resumed from episode 4 and killed after episode_000012 was renamed into place but before
    #    latest.json names it (this run's checkpoints: 8, then 12).
    _killed_at("latest.json", 2, f"resume={killed}", f"hydra.run.dir={tmp_path / 'log1'}")
    assert json.loads((ckpts / "latest.json").read_text())["episode"] == 8
    assert (ckpts / "episode_000012").is_dir()
    # 3. Resumed again from episode 8: it ends exactly where the uninterrupted search did.
    resumed = cli("-m", "amc.train", f"resume={killed}", f"hydra.run.dir={tmp_path / 'log2'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_search(killed, straight)
    # Nothing half-written is left: neither a checkpoint directory nor a killed write's .latest.json.*.tmp file.
    assert sorted(p.name for p in ckpts.iterdir()) == ["episode_000014", "latest.json"]


def test_joblib_multirun_and_report(tiny_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    run = cli(
        "-m",
        "amc.train",
        "-m",
        *tiny(tiny_root),
        "agent=random,uniform",
        "episodes=3",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=job${hydra.job.num}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in run.stdout + run.stderr
    assert sorted(p.parent.name for p in sweep.glob("*/best_policy.json")) == ["job0", "job1"]
    report = cli("-m", "amc.report", str(sweep))
    assert report.returncode == 0, report.stderr[-2000:]
    text = (sweep / "report.md").read_text()
    assert "random" in text and "uniform" in text and "latency=0.5" in text
    assert "±" not in text.split("\n\n", 2)[2], text  # one seed per agent: values without a spread
    assert (sweep / "pareto.png").stat().st_size > 1000 and (sweep / "report.csv").is_file()


def test_default_sweep_folder_holds_every_job(tiny_root: Path, tmp_path: Path) -> None:
    """The default hydra.sweep.dir is computed once per sweep, not once per job with the job's overrides."""
    logs = tmp_path / "logs"
    run = cli("-m", "amc.train", "-m", *tiny(tiny_root), "agent=random,uniform", "episodes=2", f"paths.log_dir={logs}")
    assert run.returncode == 0, run.stderr[-3000:]
    sweeps = list((logs / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1 and sorted(p.parent.name for p in sweeps[0].glob("*/best_policy.json")) == ["0", "1"]


def test_bad_overrides_fail_with_one_line(cfg_for: Callable[..., DictConfig], tiny_root: Path, tmp_path: Path) -> None:
    zero = cli(*_run_args(tiny_root, "episodes=0", f"hydra.run.dir={tmp_path / 'zero'}"))
    assert zero.returncode == 2 and zero.stderr.strip().splitlines()[-1] == (
        "error: episodes=0 must be positive; set episodes=N with N >= 1"
    )
    unknown = cli(*_run_args(tiny_root, "agent=sarsa", f"hydra.run.dir={tmp_path / 'unknown'}"))
    assert unknown.returncode != 0 and "sarsa" in unknown.stderr
    with pytest.raises(
        AmcError, match=r"agent.warmup \(5\) \+ agent.exploit \(0\) episodes leave none to learn in episodes=5"
    ):
        train(cfg_for("episodes=5", "agent.warmup=5"))
    with pytest.raises(AmcError, match=r"budget latency=0.01 is unreachable: the smallest reachable ratio is 0\.\d+"):
        train(cfg_for("budgets.latency=0.01", "agent=random", "episodes=2"))
    with pytest.raises(AmcError, match="is not an amc.train run directory"):  # episodes=0 wrote nothing
        train(cfg_for(f"resume={tmp_path / 'zero'}"))


def test_submitit_launchers(tiny_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        slurm = compose(
            "train", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True
        )
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher") and slurm.hydra.launcher.partition == "gpu"
    sweep = tmp_path / "sweep"
    run = cli(
        "-m",
        "amc.train",
        "-m",
        *tiny(tiny_root),
        "hydra/launcher=submitit_local_run",
        "agent=random,uniform",
        "episodes=2",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=job${hydra.job.num}",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.glob("*/best_policy.json")) == ["job0", "job1"]


def test_report_shows_a_spread_only_over_several_seeds() -> None:
    from amc.report import aggregate

    base = {"model": "m", "mode": "joint", "hardware": "h", "budgets": {"latency": {"target": 0.5}}}
    runs = [
        {**base, "agent": "ddpg", "accuracy": 0.90, "test_accuracy": 0.80, "reward": 1.0, "ratios": {"latency": 0.4}},
        {**base, "agent": "ddpg", "accuracy": 0.80, "test_accuracy": 0.70, "reward": 0.0, "ratios": {"latency": 0.5}},
        {
            **base,
            "agent": "uniform",
            "accuracy": 0.70,
            "test_accuracy": None,
            "reward": 2.0,
            "ratios": {"latency": 0.5},
        },
    ]
    headers, rows = aggregate(runs)
    cells = {row[headers.index("agent")]: dict(zip(headers, row)) for row in rows}
    assert cells["ddpg"]["seeds"] == 2 and cells["ddpg"]["search acc"] == "0.8500 ± 0.0707"
    assert cells["uniform"]["seeds"] == 1 and cells["uniform"]["search acc"] == "0.7000"
    assert cells["uniform"]["test acc"] == "-" and cells["uniform"]["latency ratio"] == "0.5000"

