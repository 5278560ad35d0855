"""Pretraining, the checkpoint cache, resume after a kill, and checkpoint safety."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module

from amc.checkpoint import build_model_from_checkpoint, load_checkpoint, save_checkpoint
from amc.data.idx import write_idx
from amc.errors import AmcError
from amc.models import build_model
from amc.pretrain import load_or_pretrain, pretrain

REPO = Path(__file__).resolve().parents[1]


def make_fmnist(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """A small Fashion-MNIST stand-in in the real IDX format: classes are bright blobs at class-dependent places."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, c in enumerate(labels):
            r, col = 2 + (c // 5) * 12, 2 + (c % 5) * 5
            images[i, r : r + 10, col : col + 5] = 230
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def tiny_data_args(root: Path, epochs: int = 1) -> list[str]:
    """Overrides pointing a command at the stand-in ``make_fmnist(root / 'fm')``, with its own cache in ``root``."""
    return [
        f"paths.root_dir={root}",
        f"data.root={root / 'fm'}",
        "data.search_size=100",
        "data.batch_size=64",
        f"pretrain.epochs={epochs}",
    ]


def overrides(tmp: Path, *extra: str) -> list[str]:
    return [*tiny_data_args(tmp, epochs=2), "pretrain.lr=0.05", *extra]


def compose_cfg(tmp: Path, *extra: str):
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        return compose("pretrain", overrides=overrides(tmp, *extra))


def test_pretrain_trains_caches_and_reloads(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "fm", n_train=2000)
    cfg = compose_cfg(tmp_path, "pretrain.epochs=3")
    torch.manual_seed(0)
    meta = pretrain(cfg)
    assert not meta["cached"] and Path(meta["path"]).is_file()
    assert meta["test_top1"] > 0.3, meta  # chance is 0.1; the blobs are easy
    assert not Path(meta["path"]).with_suffix(".partial.pt").exists()
    t0 = time.perf_counter()
    again = pretrain(cfg)
    assert again["cached"] and again["path"] == meta["path"] and time.perf_counter() - t0 < 5
    assert again["test_top1"] == meta["test_top1"]
    model, ckpt = build_model_from_checkpoint(meta["path"])
    assert ckpt["arch"]["_target_"].endswith("fmnist_cnn")
    # Another recipe is another cache entry.
    other = compose_cfg(tmp_path, "pretrain.epochs=1")
    from hydra.utils import instantiate

    from amc.pretrain import checkpoint_path

    assert checkpoint_path(other, instantiate(other.data)) != Path(meta["path"])


def _run_pretrain(tmp: Path, *extra: str, wait_for: Path | None = None) -> subprocess.CompletedProcess | None:
    cmd = [sys.executable, "-m", "amc.pretrain", *overrides(tmp, *extra), f"hydra.run.dir={tmp / 'run'}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if wait_for is None:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    deadline = time.time() + 300
    while not list(wait_for.glob("*.partial.pt")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return None


def test_killed_pretraining_resumes_to_the_same_weights(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "fm", n_train=1500)
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "fm").parent.mkdir(parents=True, exist_ok=True)
        os.symlink(tmp_path / "fm", d / "fm")
    args = ("pretrain.epochs=4",)
    _run_pretrain(a, *args, wait_for=a / ".cache/amc/pretrained")
    partial = list((a / ".cache/amc/pretrained").glob("*.partial.pt"))
    assert partial, "the killed run left no resumable state"
    resumed = _run_pretrain(a, *args)
    assert resumed is not None and resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming pretraining" in resumed.stdout + resumed.stderr
    straight = _run_pretrain(b, *args)
    assert straight is not None and straight.returncode == 0, straight.stderr[-2000:]
    (ca,) = (a / ".cache/amc/pretrained").glob("*[!l].pt")
    (cb,) = (b / ".cache/amc/pretrained").glob("*[!l].pt")
    sa, sb = load_checkpoint(ca)["state_dict"], load_checkpoint(cb)["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_errors(tmp_path: Path) -> None:
    model = build_model("fmnist_cnn", num_classes=10, in_channels=1)
    arch = {"_target_": "amc.models.small.fmnist_cnn", "num_classes": 10, "in_channels": 1}
    good = tmp_path / "good.pt"
    save_checkpoint(good, model, arch, {"test_top1": 0.5})
    assert load_checkpoint(good, expect_arch=arch)["meta"]["test_top1"] == 0.5

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(AmcError, match="truncated, corrupt"):
        load_checkpoint(truncated)

    other_arch = {"_target_": "amc.models.resnet_cifar.resnet20", "num_classes": 10, "in_channels": 1}
    with pytest.raises(AmcError, match="is for architecture fmnist_cnn.*not resnet20"):
        load_checkpoint(good, expect_arch=other_arch)

    not_ckpt = tmp_path / "weights.pt"
    torch.save({"something": torch.zeros(2)}, not_ckpt)
    with pytest.raises(AmcError, match="not an amc model checkpoint"):
        load_checkpoint(not_ckpt)

    with pytest.raises(AmcError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/amc_pwned",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"format": "amc-checkpoint-v1", "arch": {}, "state_dict": Evil()}, fh)
    torch.save({"format": "amc-checkpoint-v1", "state_dict": {}, "arch": {}, "x": Evil()}, tmp_path / "evil2.pt")
    for path in (evil, tmp_path / "evil2.pt"):
        with pytest.raises(AmcError, match="refused for safety|truncated, corrupt"):
            load_checkpoint(path)
    assert not Path("/tmp/amc_pwned").exists()


def test_cached_checkpoint_for_other_architecture_is_refused(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "fm")
    cfg = compose_cfg(tmp_path, "pretrain.epochs=1")
    _, meta = load_or_pretrain(cfg)
    # Someone overwrote the cached file with a checkpoint of another model.
    other = build_model("resnet20", num_classes=10, in_channels=1)
    save_checkpoint(meta["path"], other, {"_target_": "amc.models.resnet_cifar.resnet20"}, {})
    with pytest.raises(AmcError, match="is for architecture resnet20"):
        load_or_pretrain(cfg)


def test_search_seeds_can_share_one_baseline(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from amc.pretrain import checkpoint_path

    make_fmnist(tmp_path / "fm")

    def path(*extra: str) -> Path:
        cfg = compose_cfg(tmp_path, *extra)
        return checkpoint_path(cfg, instantiate(cfg.data))

    assert path("seed=1") == path("seed=2") == path("seed=0")  # by default search seeds share one baseline
    assert path("seed=1", "pretrain.seed=0") == path("seed=0", "pretrain.seed=null")
    assert path("seed=1", "pretrain.seed=null") != path("seed=0")  # null: the baseline follows the run's seed
    assert path("pretrain.seed=1") != path("pretrain.seed=0")  # a sweep over baseline seeds


def test_users_own_weights_are_the_baseline(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "fm")
    torch.manual_seed(3)
    trained = build_model("fmnist_cnn", num_classes=10, in_channels=1)
    # A DataParallel-style checkpoint from another training script.
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()}}, tmp_path / "mine.pth")
    model, meta = load_or_pretrain(compose_cfg(tmp_path, f"pretrain.weights={tmp_path / 'mine.pth'}"))
    assert meta["user_weights"] and not (tmp_path / ".cache").exists()  # nothing trained, nothing cached
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    torch.save(build_model("resnet20", num_classes=10, in_channels=1).state_dict(), tmp_path / "other.pth")
    with pytest.raises(AmcError, match="do not fit model"):
        load_or_pretrain(compose_cfg(tmp_path, f"pretrain.weights={tmp_path / 'other.pth'}"))


def test_cli_errors_are_one_line_and_nonzero(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "fm")
    bad_shape = _run_pretrain(tmp_path, "model=vgg16_cifar")
    assert bad_shape is not None and bad_shape.returncode == 2
    last = bad_shape.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the model's forward fails on an input of shape (1, 1, 28, 28)")
    missing = _run_pretrain(tmp_path, "data=mnist", f"data.root={tmp_path / 'nowhere'}")
    assert missing is not None and missing.returncode == 2
    assert "files not found" in missing.stderr.strip().splitlines()[-1]
    unknown = _run_pretrain(tmp_path, "model=not_a_model")
    assert unknown is not None and unknown.returncode != 0 and "not_a_model" in unknown.stderr


def test_users_own_module_by_dotted_path(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "fm")
    # The user's class takes the same num_classes/in_channels keys the model configs pass.
    cfg = compose_cfg(tmp_path, "pretrain.epochs=1", "model._target_=conftest.ConcatNet")
    model, meta = load_or_pretrain(cfg)
    assert type(model).__name__ == "ConcatNet" and not meta["cached"]
    assert "ConcatNet" in Path(meta["path"]).name
