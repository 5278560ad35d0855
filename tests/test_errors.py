"""Bad input across every command: one line naming the problem and the fix, a non-zero exit, nothing lost.

Each case runs the real command as a subprocess on tiny data. amc's own checks print exactly one
``error: ...`` line and exit with status 2; Hydra's composition errors (an unknown config group
option, a misspelled key) exit with status 1 and name the bad value plus the available options.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
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
    return root


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
        r"agent.warmup=5 must be smaller than episodes=5",
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
    "report-not-a-directory": ("amc.report", ["{root}/nowhere"], r"is not a directory", 2),
    "report-no-runs": ("amc.report", ["{root}/fm"], r"no best_policy.json under", 2),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case: str, world: Path, tmp_path: Path) -> None:
    module, args, expected, code = CASES[case]
    args = [a.replace("{root}", str(world)) for a in args]
    if module == "amc.train":
        args = [*train_args(world), *args]
    elif module in ("amc.pretrain", "amc.finetune"):
        args = [*data_args(world), *args]
    if module != "amc.report" and not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    before = {p: p.stat().st_mtime_ns for p in world.rglob("*") if p.is_file()}
    res = cli(module, *args)
    assert res.returncode == code, (res.returncode, res.stderr[-3000:])
    if code == 2:
        errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1, res.stderr[-3000:]
        message = errors[0]
    else:  # Hydra: the message names the problem; options or the fix follow
        message = res.stderr
        assert "Available options" in message or "+" in message or "not in struct" in message, message
    assert re.search(expected, message), message
    # Nothing already written was lost or modified (the finished search and fine-tuning above included).
    after = {p: p.stat().st_mtime_ns for p in world.rglob("*") if p.is_file()}
    changed = [str(p) for p, t in before.items() if after.get(p) != t]
    assert not changed, changed
    assert "pwned" not in res.stdout


def test_overwrite_replaces_a_finished_search(world: Path, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(world / "search", run)
    res = cli("amc.train", *train_args(world), f"hydra.run.dir={run}", "overwrite=true")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["episodes"] == 2


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
