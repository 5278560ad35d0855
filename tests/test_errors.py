"""Bad input across every command: one line naming the problem and the fix, a non-zero exit, nothing lost.

Each case runs the real command as a subprocess on tiny data. amc's own checks print exactly one
``error: ...`` line and exit with status 2; Hydra's composition errors (an unknown config group
option, a misspelled key) exit with status 1 and name the bad value plus the available options.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from test_pretrain import make_fmnist, tiny_data_args

from amc.finetune import finetune
from amc.models import build_model
from amc.pretrain import load_or_pretrain
from amc.train import train

REPO = Path(__file__).resolve().parents[1]


def data_args(root: Path) -> list[str]:
    return [*tiny_data_args(root), "data.eval_batch_size=200"]


def train_args(root: Path) -> list[str]:
    return [
        *data_args(root),
        "env.calibration_batches=1",
        "env.calibration_batch_size=32",
        "callbacks.progress_bar=false",
        "episodes=2",
        "agent=random",
        "budgets.latency=null",
        "budgets.macs=0.6",
    ]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny data, its baseline, a finished search, a finished fine-tuning and a collection of bad files."""
    root = tmp_path_factory.mktemp("errors")
    make_fmnist(root / "fm", n_train=500, n_test=100)
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        load_or_pretrain(compose("pretrain", overrides=data_args(root)))
        train(compose("train", overrides=[*train_args(root), f"output_dir={root / 'search'}"]))
        ft = compose(
            "finetune",
            overrides=[
                *data_args(root),
                f"policy={root / 'search'}",
                "epochs=0",
                "export.onnx=false",
                "export.latency_repeats=2",
            ],
        )
    finetune(ft, out_dir=root / "ft")
    bad = root / "bad"
    bad.mkdir()
    good = (root / "ft" / "compressed.pt").read_bytes()
    (bad / "truncated.pt").write_bytes(good[: len(good) // 2])
    (bad / "text.pt").write_text("not a checkpoint")
    (bad / "evil.pt").write_bytes(pickle.dumps(Evil()))
    torch.save(build_model("resnet20", num_classes=10, in_channels=1).state_dict(), bad / "resnet20.pt")
    (bad / "fm").mkdir()
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (bad / "fm" / f"{name}.gz").write_bytes(b"\x1f\x8b\x08 not gzip")
    policy = json.loads((root / "search" / "best_policy.json").read_text())
    for g in policy["policy"]["groups"]:
        g["kept"] = g["channels"]  # keeps everything: breaks its 0.6 MACs budget
    for u in policy["policy"]["units"]:
        u["in_channels"], u["out_channels"] = u["dense_in_channels"], u["dense_out_channels"]
    (bad / "edited").mkdir()
    (bad / "edited" / "best_policy.json").write_text(json.dumps(policy))
    (bad / "policy.json").write_text("{ not json")
    (bad / "list.json").write_text(json.dumps([policy["policy"]]))
    (bad / "afile").write_text("a file where a run directory should go")
    (bad / "null_ratios").mkdir()
    (bad / "null_ratios" / "best_policy.json").write_text(json.dumps({**policy, "ratios": None}))
    bomb_weights(bad / "bomb.pt")
    ddpg_checkpoints(root)
    return root


def bomb_weights(path: Path) -> None:
    """A 120 MB state dict stored as one deflated zip entry: a ~120 kB file that torch.load would unpack whole."""
    buf = io.BytesIO()
    torch.save({"features.0.0.weight": torch.zeros(30_000_000)}, buf)
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            method = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            zout.writestr(info.filename, zin.read(info.filename), compress_type=method)


def ddpg_checkpoints(root: Path) -> None:
    """DDPG searches (joint and prune) with a checkpoint, and joint copies with a damaged or foreign one."""
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        base = [*train_args(root), "agent=ddpg", "episodes=4", "agent.warmup=1", "agent.batch_size=4"]
        keys = compose("train", overrides=[*base, "output_dir=unused"]).agent
        base += [o for k, o in (("demos", "agent.demos=[]"), ("exploit", "agent.exploit=0")) if k in keys]
        for mode in ("joint", "prune"):
            train(compose("train", overrides=[*base, f"env={mode}", f"output_dir={root / f'ddpg_{mode}'}"]))
    ckpt = "checkpoints/episode_000004"
    for name in ("agent.zip", "replay_buffer.pt", "rng.pt", "rng.json"):
        shutil.copytree(root / "ddpg_joint", root / f"resume_{name}")
        target = root / f"resume_{name}" / ckpt / name
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    shutil.copytree(root / "ddpg_joint", root / "resume_foreign")
    shutil.rmtree(root / "resume_foreign" / "checkpoints")
    shutil.copytree(root / "ddpg_prune" / "checkpoints", root / "resume_foreign" / "checkpoints")


def cli(module: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


# (command, argument builder, expected regex of the error, exit status). {root} is the world directory.
CASES: dict[str, tuple[str, list[str], str, int]] = {
    "pretrain-unknown-model": ("amc.pretrain", ["model=resnet9000"], r"Could not find 'model/resnet9000'", 1),
    "pretrain-unknown-dataset": ("amc.pretrain", ["data=svhn"], r"Could not find 'data/svhn'", 1),
    "pretrain-misspelled-override": ("amc.pretrain", ["epochs=3"], r"Could not override 'epochs'", 1),
    "pretrain-dataset-missing": (
        "amc.pretrain",
        ["data=cifar10", "data.root={root}/nowhere"],
        r"CIFAR-10 not found under .*nowhere.*data.download=true",
        2,
    ),
    "train-dataset-corrupt": ("amc.train", ["data.root={root}/bad/fm"], r"not a valid IDX file.*delete it", 2),
    "pretrain-split-too-large": (
        "amc.pretrain",
        ["data.search_size=5000"],
        r"data.search_size=5000 does not fit the 500 training images .* between 0 and 499",
        2,
    ),
    "pretrain-weights-truncated": (
        "amc.pretrain",
        ["pretrain.weights={root}/bad/truncated.pt"],
        r"not a readable checkpoint: truncated, corrupt",
        2,
    ),
    "pretrain-weights-not-a-checkpoint": (
        "amc.pretrain",
        ["pretrain.weights={root}/bad/text.pt"],
        r"not a readable checkpoint",
        2,
    ),
    "pretrain-weights-other-architecture": (
        "amc.pretrain",
        ["pretrain.weights={root}/bad/resnet20.pt"],
        r"do not fit model .*use the checkpoint trained for this architecture",
        2,
    ),
    "pretrain-weights-malicious-pickle": (
        "amc.pretrain",
        ["pretrain.weights={root}/bad/evil.pt"],
        r"refused for safety",
        2,
    ),
    "pretrain-forward-fails-on-input-shape": (
        "amc.pretrain",
        ["model=vgg16"],
        r"forward fails on an input of shape",
        2,
    ),
    "pretrain-no-compressible-layer": (
        "amc.pretrain",
        ["model._target_=torch.nn.Flatten", "~model.num_classes", "~model.in_channels"],
        r"has no Conv2d or Linear layer",
        2,
    ),
    "train-unknown-preset": ("amc.train", ["hardware=tpu9"], r"Could not find 'hardware/tpu9'", 1),
    "train-unknown-agent": ("amc.train", ["agent=sarsa"], r"Could not find 'agent/sarsa'", 1),
    "train-unknown-reward": ("amc.train", ["reward=fun"], r"Could not find 'reward/fun'", 1),
    "train-unknown-mode": ("amc.train", ["env.mode=shrink"], r"unknown mode 'shrink'", 2),
    "train-unreachable-budget": (
        "amc.train",
        ["budgets.macs=0.001"],
        r"budget macs=0.001 is unreachable: the smallest reachable ratio is 0\.\d+",
        2,
    ),
    "train-budget-not-a-ratio": ("amc.train", ["budgets.macs=1.5"], r"must be a ratio in \(0, 1\]", 2),
    "train-min-bits-above-max": ("amc.train", ["env=joint", "env.w_bits=[8,2]"], r"bit range 8..2 is invalid", 2),
    "train-bits-beyond-preset": (
        "amc.train",
        ["env=joint", "hardware=npu_int8_int4", "env.w_bits=[2,16]"],
        r"runs at most 8-bit integers .* set env.w_bits and env.a_bits to at most 8",
        2,
    ),
    "train-keep-ratio-zero": ("amc.train", ["env.min_keep=0"], r"min_keep=0(\.0)? must be in \(0, 1\]", 2),
    "train-keep-ratio-above-one": ("amc.train", ["env.min_keep=1.5"], r"min_keep=1.5 must be in \(0, 1\]", 2),
    "train-episodes-not-above-warmup": (
        "amc.train",
        ["agent=ddpg", "episodes=5", "agent.warmup=5"],
        r"agent.warmup \(5\) \+ agent.exploit \(0\) episodes leave none to learn in episodes=5; lower them",
        2,
    ),
    "train-finished-run-dir": (
        "amc.train",
        ["hydra.run.dir={root}/search"],
        r"already holds a finished search; continue it with resume=.*overwrite=true",
        2,
    ),
    "train-resume-not-a-run": ("amc.train", ["resume={root}/fm"], r"is not an amc.train run directory", 2),
    "finetune-policy-edited-beyond-budget": (
        "amc.finetune",
        ["policy={root}/bad/edited"],
        r"breaks its own budgets \(macs 1.0000 > 0.6\)",
        2,
    ),
    "finetune-policy-not-json": ("amc.finetune", ["policy={root}/bad/policy.json"], r"cannot read policy", 2),
    "finetune-policy-missing": ("amc.finetune", ["policy={root}/nowhere"], r"does not exist", 2),
    "finetune-finished-run-dir": (
        "amc.finetune",
        ["policy={root}/search", "hydra.run.dir={root}/ft"],
        r"already holds a finished fine-tuning .*overwrite=true",
        2,
    ),
    "hardware-unknown-preset": ("amc.hardware", ["hardware=tpu9"], r"Could not find 'hardware/tpu9'", 1),
    "train-model-target-unimportable": (
        "amc.train",
        ["model._target_=mynet.DoesNotExist"],
        r"cannot import _target_ 'mynet.DoesNotExist': check its spelling.*PYTHONPATH",
        2,
    ),
    "hardware-policy-missing": (
        "amc.hardware",
        ["policy={root}/nowhere.json", "plots=false"],
        r"policy file .*nowhere.json not found; pass policy=",
        2,
    ),
    "report-not-a-directory": ("amc.report", ["{root}/nowhere"], r"is not a directory", 2),
    "report-no-runs": ("amc.report", ["{root}/fm"], r"no best_policy.json under", 2),
    # Every value has a declared type and range (amc/schema.py), checked before anything is trained or written.
    "train-seed-negative": ("amc.train", ["seed=-1"], r"seed=-1 must be >= 0; set seed=N with N >= 0", 2),
    "train-seed-not-a-number": ("amc.train", ["seed=abc"], r"seed=abc is not a whole number; set seed=N", 2),
    "train-episodes-not-a-number": ("amc.train", ["episodes=abc"], r"episodes=abc is not a whole number", 2),
    "train-episodes-zero": ("amc.train", ["episodes=0"], r"episodes=0 must be positive; set episodes=N with N >= 1", 2),
    "train-episodes-fractional": ("amc.train", ["episodes=2.7"], r"episodes=2.7 is not a whole number", 2),
    "train-search-size-zero": ("amc.train", ["data.search_size=0"], r"data.search_size=0 must be positive", 2),
    "train-batch-size-not-a-number": ("amc.train", ["data.batch_size=abc"], r"data.batch_size=abc is not a whole", 2),
    "train-min-keep-not-a-number": ("amc.train", ["env.min_keep=abc"], r"env.min_keep=abc is not a finite number", 2),
    "train-bits-not-a-pair": ("amc.train", ["env.w_bits=[8]"], r"env.w_bits=\[8\] is not a \[min, max\] pair", 2),
    "train-eval-batch-size-zero": (
        "amc.train",
        ["env.eval_batch_size=0"],
        r"env.eval_batch_size=0 must be positive",
        2,
    ),
    "train-budget-not-a-number": (
        "amc.train",
        ["budgets.macs=abc"],
        r"budgets.macs=abc is not a finite number; set budgets.macs=R with 0 < R <= 1 .* or budgets.macs=null",
        2,
    ),
    "train-calibration-batches-zero": (
        "amc.train",
        ["env.calibration_batches=0"],
        r"env.calibration_batches=0 must be positive; .*need calibration data",
        2,
    ),
    "train-channel-multiple-negative": (
        "amc.train",
        ["env.channel_multiple=-8"],
        r"channel_multiple=-8 must be pos",
        2,
    ),
    "train-channel-multiple-too-large": (
        "amc.train",
        ["env.channel_multiple=1000"],
        r"channel_multiple=1000 is not below any prunable layer's width \(widest \d+ channels\).*channel_multiple=8",
        2,
    ),
    "train-unknown-wall": ("amc.train", ["env.wall=brick"], r"unknown wall 'brick' for env.wall; .*repair", 2),
    "train-unknown-memory-format": (
        "amc.train",
        ["env.memory_format=nhwc"],
        r"unknown memory_format 'nhwc' for env.memory_format; .*channels_last",
        2,
    ),
    "train-unknown-calibration-set": (
        "amc.train",
        ["env.calibration_set=val"],
        r"unknown calibration_set 'val' for env.calibration_set; .*train.*search",
        2,
    ),
    "train-threads-negative": ("amc.train", ["threads=-1"], r"threads=-1 must be >= 0; set threads=N", 2),
    "train-run-dir-unwritable": (
        "amc.train",
        ["hydra.run.dir={root}/bad/afile/run"],
        r"cannot write the run directory .*afile is a file, not a directory.*point hydra.run.dir to a writable",
        2,
    ),
    "train-model-wrong-classes": (
        "amc.train",
        ["model.num_classes=5"],
        r"outputs \(2, 5\) .* has 10 classes .* set model.num_classes=10",
        2,
    ),
    "train-model-compiled": (
        "amc.train",
        [
            "model._target_=torch.compile",
            "~model.num_classes",
            "~model.in_channels",
            "+model.model._target_=amc.models.small.fmnist_cnn",
            "+model.model.num_classes=10",
            "+model.model.in_channels=1",
        ],
        r"torch.compile'd FmnistCNN; give amc the plain model",
        2,
    ),
    "train-resume-with-overrides": (
        "amc.train",
        ["resume={root}/search", "episodes=5", "seed=3"],
        r"resume= continues a search with its saved config, so episodes, seed would be ignored",
        2,
    ),
    "train-resume-truncated-agent-zip": (
        "amc.train",
        ["resume={root}/resume_agent.zip"],
        r"resume_agent.zip/checkpoints/episode_000004 .*delete .*checkpoints and resume again to restart",
        2,
    ),
    "train-resume-truncated-replay-buffer": (
        "amc.train",
        ["resume={root}/resume_replay_buffer.pt"],
        r"episode_000004 .*delete .*checkpoints and resume again",
        2,
    ),
    "train-resume-truncated-rng-json": (
        "amc.train",
        ["resume={root}/resume_rng.json"],
        r"episode_000004 .*delete .*checkpoints and resume again",
        2,
    ),
    "train-resume-truncated-rng-pt": (
        "amc.train",
        ["resume={root}/resume_rng.pt"],
        r"episode_000004 .*delete .*checkpoints and resume again",
        2,
    ),
    "train-resume-prune-checkpoint-as-joint": (
        "amc.train",
        ["resume={root}/resume_foreign"],
        r"delete .*resume_foreign/checkpoints and resume again to restart the search from episode 0",
        2,
    ),
    "pretrain-weights-zip-bomb": (
        "amc.pretrain",
        ["pretrain.weights={root}/bad/bomb.pt"],
        r"bomb.pt unpacks to 11\d\.\d MiB, more than weights for model FmnistCNN can take .* not loaded",
        2,
    ),
    "finetune-rounds-not-a-number": ("amc.finetune", ["policy={root}/search", "rounds=two"], r"rounds=two is not a", 2),
    "finetune-epochs-negative": (
        "amc.finetune",
        ["policy={root}/search", "epochs=-1"],
        r"epochs=-1 must be >= 0; set epochs=N with N >= 0",
        2,
    ),
    "finetune-policy-is-a-list": (
        "amc.finetune",
        ["policy={root}/bad/list.json"],
        r"list.json holds a list, not a policy mapping",
        2,
    ),
    "report-ratios-null": (
        "amc.report",
        ["{root}/bad/null_ratios"],
        r"is not a best_policy.json as amc.train writes it \(ratios is null",
        2,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case: str, world: Path, tmp_path: Path) -> None:
    module, args, expected, code = CASES[case]
    args = [a.replace("{root}", str(world)) for a in args]
    if module == "amc.train" and args[0].startswith("resume="):
        pass  # a resume takes everything from the run's saved config
    elif module == "amc.train":
        args = [*train_args(world), *args]
    elif module in ("amc.pretrain", "amc.finetune"):
        args = [*data_args(world), *args]
    if module != "amc.report" and not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    before = {p: p.stat().st_mtime_ns for p in world.rglob("*") if p.is_file()}
    res = cli(module, *args)
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    if code == 2:
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, res.stderr[-3000:]
        message = errors[0]
    else:  # Hydra: the message names the problem; options or the fix follow
        message = res.stderr
        assert "Available options" in message or "+" in message or "not in struct" in message, message
    assert re.search(expected, message), message
    if module == "amc.hardware":  # refused before any table is printed
        assert res.stdout == "", res.stdout[-2000:]
    # Nothing already written was lost or modified (the finished search and fine-tuning above included).
    after = {p: p.stat().st_mtime_ns for p in world.rglob("*") if p.is_file()}
    changed = [str(p) for p, t in before.items() if after.get(p) != t]
    assert not changed, changed
    assert "pwned" not in res.stdout
    # A command refused before it did anything leaves no run directory behind (Hydra made one).
    run = tmp_path / "run"
    if code == 2 and run.is_dir():
        log = run / f"{module.split('.')[-1]}.log"
        assert {p.name for p in run.iterdir()} - {".hydra", log.name, ".amc.lock"} or log.stat().st_size, (
            f"{run} was left holding only Hydra's files"
        )


def test_overwrite_replaces_a_finished_search(world: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(world / "search", run)
    res = cli("amc.train", *train_args(world), f"hydra.run.dir={run}", "overwrite=true")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["episodes"] == 2
    assert not list(run.glob(".replaced-*"))  # the replaced search is gone once the new one finished


def _digests(run: Path) -> dict[str, str]:
    """Content hash of every file amc wrote in ``run`` (the lock file and Hydra's own bookkeeping left out)."""
    skip = (".amc.lock", ".hydra", "train.log", "finetune.log")
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and not any(part in skip for part in p.relative_to(run).parts)
    }


def test_overwrite_with_an_invalid_config_keeps_the_old_outputs(world: Path, tmp_path: Path) -> None:
    search, ft = tmp_path / "search", tmp_path / "ft"
    shutil.copytree(world / "search", search)
    shutil.copytree(world / "ft", ft)
    before = (_digests(search), _digests(ft))
    # Unreachable only once the model is built: the check runs after pretraining, before the first episode.
    res = cli("amc.train", *train_args(world), f"hydra.run.dir={search}", "overwrite=true", "budgets.macs=0.001")
    assert res.returncode == 2 and "is unreachable" in res.stderr, res.stderr[-2000:]
    res = cli("amc.train", *train_args(world), f"hydra.run.dir={search}", "overwrite=true", "seed=abc")
    assert res.returncode == 2 and "seed=abc" in res.stderr, res.stderr[-2000:]
    res = cli("amc.finetune", *data_args(world), f"policy={world}/serach", f"hydra.run.dir={ft}", "overwrite=true")
    assert res.returncode == 2 and "does not exist" in res.stderr, res.stderr[-2000:]
    res = cli(
        "amc.finetune", *data_args(world), f"policy={world}/bad/list.json", f"hydra.run.dir={ft}", "overwrite=true"
    )
    assert res.returncode == 2 and "holds a list" in res.stderr, res.stderr[-2000:]
    assert (_digests(search), _digests(ft)) == before
    assert not list(search.glob(".replaced-*")) and not list(ft.glob(".replaced-*"))


def _popen(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _rows(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "episodes.csv").open())) if (run / "episodes.csv").is_file() else []


def test_two_runs_into_one_directory_one_proceeds(world: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*train_args(world), "episodes=12", f"hydra.run.dir={run}"]
    procs = [_popen("amc.train", *args) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    errors = [ln for ln in loser.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in loser, loser[-2000:]
    # Started together it meets the lock; started a little later, the finished search.
    assert re.search(rf"another amc search is running in {run}|{run} already holds a finished search", errors[0])
    assert len(_rows(run)) == 12 and json.loads((run / "summary.json").read_text())["episodes"] == 12
    assert not list(run.glob(".replaced-*"))


def test_search_killed_before_its_first_checkpoint_resumes_from_episode_0(world: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [*train_args(world), "episodes=40", "callbacks.checkpoint_every=1000", f"hydra.run.dir={run}"]
    proc = _popen("amc.train", *args)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and len(_rows(run)) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the search finished before it could be killed"
    assert _rows(run) and not (run / "checkpoints" / "latest.json").exists()
    again = cli("amc.train", *args)  # a new run into that directory points at resume=
    assert again.returncode == 2 and f"resume={run}" in again.stderr, again.stderr[-2000:]
    resumed = cli("amc.train", f"resume={run}", f"hydra.run.dir={tmp_path / 'log'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "restarting its search from episode 0" in resumed.stdout + resumed.stderr
    assert [int(r["episode"]) for r in _rows(run)] == list(range(1, 41))
    assert json.loads((run / "summary.json").read_text())["episodes"] == 40
    assert not list(run.glob(".replaced-*"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_prints_one_line_saying_how_to_resume(sig: signal.Signals, world: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _popen("amc.train", *train_args(world), "episodes=400", f"hydra.run.dir={run}")
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline and len(_rows(run)) < 2:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], err[-2000:]
    assert f"python -m amc.train resume={run}`" in errors[0]


def test_interrupted_pretraining_says_to_run_the_command_again(world: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # A baseline not in the cache (another pretraining seed), long enough to be interrupted while it trains.
    args = [*train_args(world), "pretrain.seed=11", "pretrain.epochs=500", f"hydra.run.dir={run}"]
    proc = _popen("amc.train", *args)
    deadline = time.time() + 120
    log = run / "train.log"
    while proc.poll() is None and time.time() < deadline and "training baseline" not in _text(log):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "run the same command again" in errors[0] and "resume=" not in errors[0], err[-2000:]
    assert not (run / "config.yaml").exists()


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def test_finetune_takes_the_hardware_the_command_line_chose(world: Path, tmp_path: Path) -> None:
    # The search ran on bitfusion_edge; ~hardware on the command line drops the simulated rows instead.
    out = tmp_path / "ft"
    args = [f"policy={world / 'search'}", "epochs=0", "export.onnx=false", "export.latency_repeats=2"]
    res = cli("amc.finetune", *args, "~hardware", f"hydra.run.dir={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "report.json").read_text())["hardware"] is None
    log = (out / "finetune.log").read_text()
    assert "| CPU latency, batch 1" in log and "sim. latency" not in log, log[-2000:]


def test_hardware_report_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    # `amc-hardware ... | head -1`: the reader goes away; here it is gone before the first line is written.
    proc = _popen("amc.hardware", "model=fmnist_cnn", "plots=false", f"hydra.run.dir={tmp_path / 'hw'}")
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "Error" not in err, err[-2000:]


def test_hardware_report_reads_a_search_policy(world: Path, tmp_path: Path) -> None:
    for policy in (world / "search", world / "search" / "best_policy.json"):
        res = cli("amc.hardware", f"policy={policy}", f"hydra.run.dir={tmp_path / policy.name}", "plots=false")
        assert res.returncode == 0, res.stderr[-2000:]
        assert f"policy {policy}" in res.stdout


def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from amc import utils
    from amc.checkpoint import load_file
    from amc.errors import AmcError

    path = tmp_path / "state.pt"
    utils.atomic_torch_save({"epoch": torch.tensor(1)}, path)
    real_save = torch.save

    def full_disk(obj, f, *a, **k):  # writes half a file, then the disk is full
        real_save(obj, f, *a, **k)
        Path(f).write_bytes(Path(f).read_bytes()[:10])
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(utils.torch, "save", full_disk)
    with pytest.raises(AmcError, match=r"cannot write .*state.pt .*free disk space"):
        utils.atomic_torch_save({"epoch": torch.tensor(2)}, path)
    monkeypatch.setattr(utils.torch, "save", real_save)

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(utils.os, "replace", read_only)
    with pytest.raises(AmcError, match="Read-only file system"):
        utils.atomic_write_bytes(tmp_path / "report.json", b"{}")
    assert int(load_file(path)["epoch"]) == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]  # no temp file, no half-written report
