"""Every paper configuration of ``conf/experiment/`` composes and runs a search on tiny stand-in data.

CIFAR experiments get a tiny CIFAR-10 in the real pickle format; ImageNet ones (which need torchvision
and the dataset) swap the data for the tiny Fashion-MNIST stand-in, so the model, env, agent, reward,
hardware and budgets of the experiment are exercised as configured. One experiment also runs the
``experiments/paper.py`` runner end to end (search, fine-tune, export, result file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from test_pretrain import make_fmnist

from amc.data.cifar import write_cifar_batch
from amc.train import train

REPO = Path(__file__).resolve().parents[1]
PAPER = sorted(
    p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml") if p.stem.startswith(("amc_", "haq_", "ours_"))
)


def make_cifar10(root: Path, n_train: int = 300, n_test: int = 100) -> Path:
    """A tiny CIFAR-10 in the python-pickle layout (five training batches and a test batch)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    per = n_train // 5
    for i in range(1, 6):
        labels = [int(v) for v in rng.integers(0, 10, per)]
        data = rng.integers(0, 255, (per, 3 * 32 * 32)).astype(np.uint8)
        write_cifar_batch(folder / f"data_batch_{i}", {b"labels": labels, b"data": data})
    labels = [int(v) for v in rng.integers(0, 10, n_test)]
    write_cifar_batch(
        folder / "test_batch", {b"labels": labels, b"data": rng.integers(0, 255, (n_test, 3072)).astype(np.uint8)}
    )
    return root


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("paper")
    make_fmnist(root / "fm", n_train=400, n_test=100)
    make_cifar10(root / "cifar10")
    return root


def tiny(root: Path, name: str, out: Path) -> list[str]:
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"])
    data = ["data.root=" + str(root / "cifar10")]
    if "ImageNet" in str(cfg.data._target_):
        data = ["data=fashion_mnist", f"data.root={root / 'fm'}"]
    extra = ["++env.finetune_batches=1"] if cfg.env.get("finetune_batches") else []
    return [
        f"experiment={name}",
        f"paths.root_dir={root}",
        *data,
        "data.search_size=40",
        "data.batch_size=32",
        "data.eval_batch_size=50",
        "env.calibration_batches=1",
        "env.calibration_batch_size=16",
        "env.eval_batch_size=50",
        *extra,
        "episodes=2",
        "agent.warmup=1",
        "pretrain.epochs=1",
        "pretrain.auto=true",
        "callbacks.progress_bar=false",
        "callbacks.test_best=false",
        f"output_dir={out}",
    ]


def test_every_paper_experiment_is_covered() -> None:
    assert {"amc_plain20_cifar10", "amc_resnet56_cifar10", "haq_mobilenet_v2_bismo_cloud"} <= set(PAPER)
    assert all((REPO / "experiments" / f"{name}.sh").is_file() for name in PAPER)


@pytest.mark.parametrize("name", PAPER)
def test_paper_experiment_runs_one_search(name: str, stand_in: Path, tmp_path: Path) -> None:
    overrides = tiny(stand_in, name, tmp_path)
    paper = compose_paper(name)
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert cfg.paper.source and set(cfg.finetune) >= {"epochs", "lr"}
    summary = train(cfg)
    assert summary["episodes"] == 2
    best = json.loads((tmp_path / "best_policy.json").read_text())
    for metric, target in paper["budgets"].items():
        assert best["budgets"][metric]["achieved"] <= target + 1e-9, (metric, best["budgets"])


def compose_paper(name: str) -> dict:
    """The experiment's own search settings (no stand-in overrides)."""
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"])
    return {"budgets": {k: float(v) for k, v in cfg.budgets.items() if v is not None}}


def test_paper_runner_searches_finetunes_and_reports(stand_in: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [a for a in tiny(stand_in, "amc_plain20_cifar10", run_dir) if not a.startswith("output_dir=")]
    res = subprocess.run(
        [
            sys.executable,
            str(REPO / "experiments" / "paper.py"),
            "amc_plain20_cifar10",
            *args[1:],
            f"--run-dir={run_dir}",
            "--",
            "epochs=1",
            "export.onnx=false",
            "export.latency_repeats=2",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((run_dir / "paper_result.json").read_text())
    assert result["paper"]["compressed"] == 90.2
    assert result["ours"]["macs_ratio"] <= 0.5 + 1e-9
    assert 0.0 <= result["ours"]["compressed_top1"] <= 100.0
    # The fine-tune compressed the very baseline the search used (from the search's cache dir).
    meta = torch.load(run_dir / "finetune" / "compressed.pt", weights_only=True)["meta"]
    assert Path(meta["baseline"]).resolve().is_relative_to(stand_in.resolve()), meta


def _fmnist_cpu():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fmnist_cpu", REPO / "experiments" / "fmnist_cpu.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("model", ["fmnist_cnn", "resnet20"])
def test_cpu_tables_match_the_committed_runs(model, tmp_path):
    """The committed CPU runs aggregate into the tables and plots of experiments/README.md.

    Each table cell is recomputed here from the runs' own summary.json files, and every table line
    printed in experiments/README.md must be what the driver makes of the committed logs.
    """
    import statistics

    f = _fmnist_cpu()
    readme = (REPO / "experiments" / "README.md").read_text()
    for study, keys, ratios in (
        ("prune50", ("agent",), ("macs",)),
        ("latency50", ("agent", "mode"), ("latency", "energy", "macs", "size")),
    ):
        rows = f.load(study, model)
        assert len(rows) == 12, (study, model)  # 3 seeds x 4 agents / modes
        lines = f.table(rows, keys, ratios).splitlines()[2:]
        assert len(lines) == 4
        for line in lines:
            assert line in readme, line
        ddpg = [
            json.loads((d / "summary.json").read_text())["best_accuracy"]
            for d in f.run_dirs(study, model)
            if json.loads((d / "best_policy.json").read_text())["agent"] == "ddpg"
            and (study == "prune50" or "mode: quantize" in (d / "config.yaml").read_text())
        ]
        assert len(ddpg) == 3
        want = f"{statistics.mean(100 * a for a in ddpg):.2f} ± {statistics.stdev(100 * a for a in ddpg):.2f}"
        assert any(line.startswith("| ddpg |") and want in line for line in lines)
    rows = f.load("pareto", model)
    for line in f.table(rows, ("budget_latency", "agent"), ("latency", "energy"), by_key=True).splitlines()[2:]:
        assert line in readme, line
    refs = [r for r in f.load("latency50", model) if r["agent"] == "uniform 4-bit"]
    png = tmp_path / "pareto.png"
    f.pareto_plot(rows, png, model, refs)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
