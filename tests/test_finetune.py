"""Fine-tuning a searched policy: same start as the search, QAT, distillation, resume, export and verification."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from test_pretrain import make_fmnist, tiny_data_args
from torch import nn

from amc.compress import Compressor, Policy
from amc.cost import FP32, CostModel
from amc.errors import AmcError
from amc.export import load_compressed, measure_cost
from amc.finetune import finetune
from amc.graph import build_graph
from amc.models import build_model
from amc.pretrain import load_or_pretrain
from amc.qat import WeightFakeQuant, prepare_qat, strip_qat
from amc.quantize import quantize_weight
from amc.training import kd_loss

REPO = Path(__file__).resolve().parents[1]


def overrides(root: Path, policy: Path, *extra: str) -> list[str]:
    return [
        *tiny_data_args(root),
        "data.eval_batch_size=200",
        "compress.calibration_batches=2",
        "compress.calibration_batch_size=32",
        "export.latency_repeats=3",
        f"policy={policy}",
        *extra,
    ]


def compose_cfg(root: Path, policy: Path, *extra: str):
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        return compose("finetune", overrides=overrides(root, policy, *extra))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny data, a cached one-epoch baseline and a policy that prunes and quantizes every unit."""
    root = tmp_path_factory.mktemp("ft")
    make_fmnist(root / "fm", n_train=1200, n_test=200)
    placeholder = root / "policy.json"
    cfg = compose_cfg(root, placeholder)
    data = instantiate(cfg.data)
    torch.manual_seed(0)
    dense, _ = load_or_pretrain(cfg, data)
    graph = build_graph(dense, data.input_shape)
    kept = [max(1, c // 2) if g.prunable else c for g, c in zip(graph.groups, graph.full_channels())]
    n = len(graph.units)
    policy = Policy(kept, [8 if i % 2 else 4 for i in range(n)], [8] * (n - 1) + [FP32])
    placeholder.write_text(json.dumps({"policy": policy.to_dict(graph)}))
    calib = [x for x, _ in data.calibration_batches(2, 32, int(cfg.seed))]
    return {
        "root": root,
        "policy_path": placeholder,
        "policy": policy,
        "dense": dense,
        "graph": graph,
        "data": data,
        "calib": calib,
    }


def _compressor(s: dict) -> Compressor:
    return Compressor(s["dense"], s["graph"], calibration=s["calib"], seed=0)


def test_qat_start_equals_compressor_apply(setup: dict) -> None:
    applied = _compressor(setup).apply(setup["policy"])
    model = copy.deepcopy(applied)
    prepare_qat(model, setup["graph"], setup["policy"].w_bits, True)
    x = setup["calib"][0]
    with torch.no_grad():
        torch.testing.assert_close(model(x), applied(x), rtol=0, atol=1e-5)
    # Straight-through: gradients reach the float shadow weights, the layer sees quantized ones.
    model.train()
    model(x).sum().backward()
    m = dict(model.named_modules())[setup["graph"].units[0].name]
    assert isinstance(m.parametrizations.weight[0], WeightFakeQuant)
    assert m.parametrizations.weight.original.grad is not None
    assert m.parametrizations.weight.original.grad.abs().sum() > 0
    strip_qat(model)
    assert not any(hasattr(mod, "parametrizations") for mod in model.modules())


def test_export_without_finetuning_reproduces_apply(setup: dict, tmp_path: Path) -> None:
    cfg = compose_cfg(setup["root"], setup["policy_path"], "epochs=0", "hardware=bitfusion_edge")
    report = finetune(cfg, out_dir=tmp_path)
    applied = _compressor(setup).apply(setup["policy"])
    reloaded, obj = load_compressed(tmp_path / "compressed.pt")
    x = setup["calib"][1]
    with torch.no_grad():
        assert torch.equal(reloaded(x), applied(x))
    expected = CostModel(setup["graph"]).cost(setup["policy"].kept, setup["policy"].w_bits, setup["policy"].a_bits)
    assert measure_cost(reloaded, setup["data"].input_shape) == {"macs": expected.macs, "params": expected.params}
    assert report["compressed"]["macs"] == expected.macs < report["dense"]["macs"]
    assert report["compressed"]["latency_s"] < report["dense"]["latency_s"]
    assert report["accuracy"]["before_finetune"] == report["accuracy"]["after_finetune"]
    assert json.loads((tmp_path / "report.json").read_text())["compressed"]["params"] == expected.params
    assert obj["policy"] == setup["policy"].to_dict(setup["graph"])


def test_finetune_with_kd_improves_and_exports_onnx(
    setup: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    caplog.set_level(logging.INFO)
    kl_calls: list[int] = []
    real_kl_div = nn.functional.kl_div

    def spy(*args, **kwargs) -> torch.Tensor:
        kl_calls.append(1)
        return real_kl_div(*args, **kwargs)

    monkeypatch.setattr(nn.functional, "kl_div", spy)  # kd=true: every step distils from the dense model
    cfg = compose_cfg(setup["root"], setup["policy_path"], "epochs=2", "kd=true", "lr=0.02")
    report = finetune(cfg, out_dir=tmp_path)
    acc = report["accuracy"]
    assert len(kl_calls) >= 2 * 1000 // 64, len(kl_calls)  # every step of both epochs
    assert len(report["history"]) == 2
    reloaded, _ = load_compressed(tmp_path / "compressed.pt")
    # The one-epoch tiny baseline is near chance (accuracy cannot show it): distillation must bring the
    # student closer to its teacher, KL(dense || compressed) on held-out images, than before fine-tuning.
    before = _compressor(setup).apply(setup["policy"])
    x = torch.cat([xb for xb, _ in setup["data"].test_loader()])
    with torch.no_grad():
        teacher = nn.functional.log_softmax(setup["dense"](x), dim=1)
        kl = [
            real_kl_div(nn.functional.log_softmax(m(x), dim=1), teacher, reduction="batchmean", log_target=True).item()
            for m in (before, reloaded)
        ]
    assert kl[1] < 0.8 * kl[0], (kl, acc)
    # Fine-tuned weights stay on the quantization grid of their bits.
    m = dict(reloaded.named_modules())[setup["graph"].units[0].name]
    torch.testing.assert_close(quantize_weight(m.weight, setup["policy"].w_bits[0]), m.weight, rtol=0, atol=1e-6)
    try:
        import onnx
    except ImportError:
        assert report["files"]["onnx"] is None
        pytest.skip("onnx not installed")
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    # The exporters' step-by-step INFO lines stay out of the command's log (dozens per export).
    noisy = [r for r in caplog.records if r.name.split(".")[0] in ("onnxscript", "onnx_ir") and r.levelno < 40]
    assert report["files"]["onnx_qdq"] is not None and not noisy, [r.getMessage() for r in noisy[:3]]


def test_from_scratch_reinitialises_the_weights(setup: dict, tmp_path: Path) -> None:
    # A learning rate too small to move a weight: what differs from the compressed model is the re-initialisation.
    cfg = compose_cfg(
        setup["root"], setup["policy_path"], "epochs=1", "from_scratch=true", "lr=1e-9", "export.onnx=false"
    )
    report = finetune(cfg, out_dir=tmp_path)
    assert report["files"]["onnx"] is None and report["recipe"]["from_scratch"]
    applied = dict(_compressor(setup).apply(setup["policy"]).named_modules())
    reloaded = dict(load_compressed(tmp_path / "compressed.pt")[0].named_modules())
    for u in setup["graph"].units:
        start, end = applied[u.name].weight.detach(), reloaded[u.name].weight.detach()
        assert start.shape == end.shape
        assert (end - start).abs().mean() > 0.3 * start.abs().mean(), u.name


def test_kd_loss_decreases_on_a_toy_task() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    teacher = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    with torch.no_grad():
        t_logits = teacher(x)
    y = t_logits.argmax(1)
    student = nn.Linear(10, 5)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    losses = []
    for _ in range(60):
        loss = kd_loss(student(x), t_logits, y, temperature=4.0, alpha=0.9)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
    assert kd_loss(student(x), None, y).item() == pytest.approx(nn.functional.cross_entropy(student(x), y).item())


def _run(root: Path, policy: Path, run_dir: Path, *extra: str, kill_when: Path | None = None):
    cmd = [sys.executable, "-m", "amc.finetune", *overrides(root, policy, *extra), f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if kill_when is None:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO)
    deadline = time.time() + 200
    while not kill_when.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return None


def test_killed_finetuning_resumes_to_the_same_weights(setup: dict, tmp_path: Path) -> None:
    args = ("epochs=4", "kd=true", "export.onnx=false")
    a, b = tmp_path / "a", tmp_path / "b"
    _run(setup["root"], setup["policy_path"], a, *args, kill_when=a / "finetune_state.pt")
    assert (a / "finetune_state.pt").exists() and not (a / "compressed.pt").exists()
    resumed = _run(setup["root"], setup["policy_path"], a, *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming fine-tuning" in resumed.stdout + resumed.stderr
    straight = _run(setup["root"], setup["policy_path"], b, *args)
    assert straight.returncode == 0, straight.stderr[-2000:]
    sa = torch.load(a / "compressed.pt", weights_only=True)["state_dict"]
    sb = torch.load(b / "compressed.pt", weights_only=True)["state_dict"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_policy_of_another_model_is_one_line_error(setup: dict, tmp_path: Path) -> None:
    other = build_model("resnet20", num_classes=10, in_channels=1)
    graph = build_graph(other, (1, 28, 28))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"policy": Policy.dense(graph).to_dict(graph)}))
    res = _run(setup["root"], wrong, tmp_path / "run", "epochs=1")
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "another model" in lines[0], res.stderr[-2000:]


@pytest.fixture(scope="module")
def search_run(setup: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``amc.train`` run on the same tiny data, with non-default compressor options."""
    from amc.train import train

    run_dir = tmp_path_factory.mktemp("search")
    root = setup["root"]
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                *tiny_data_args(root),
                "data.eval_batch_size=200",
                "env=prune",
                "env.selection=l2",
                "env.reconstruction=true",
                "env.calibration_batches=2",
                "env.calibration_batch_size=32",
                "agent=random",
                "episodes=3",
                "budgets.latency=null",
                "budgets.macs=0.5",
                "callbacks.progress_bar=false",
                f"output_dir={run_dir}",
            ],
        )
    train(cfg)
    return run_dir


def test_finetune_of_a_search_run_starts_from_what_the_search_saw(
    setup: dict, search_run: Path, tmp_path: Path
) -> None:
    cfg = compose_cfg(setup["root"], search_run, "epochs=0", "export.onnx=false")
    report = finetune(cfg, out_dir=tmp_path)
    best = json.loads((search_run / "best_policy.json").read_text())
    # The search's compressor options (l2 selection, reconstruction), not finetune.yaml's defaults, were used.
    assert report["compress"]["selection"] == "l2" and report["compress"]["reconstruction"] is True
    assert report["accuracy"]["before_finetune"]["top1"] == pytest.approx(best["test_accuracy"], abs=1e-9)
    assert report["compressed"]["macs"] <= 0.5 * report["dense"]["macs"]


def test_rounds_name_round_episodes_when_the_agent_does_not_fit_them(
    setup: dict, search_run: Path, tmp_path: Path
) -> None:
    import shutil

    from omegaconf import OmegaConf

    run = tmp_path / "search"
    shutil.copytree(search_run, run)
    saved = OmegaConf.load(run / "config.yaml")
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        saved.agent = compose("train", overrides=["agent=ddpg"]).agent
    saved.agent.warmup = 2  # two warm-up episodes leave none to learn in 2
    OmegaConf.save(saved, run / "config.yaml")
    cfg = compose_cfg(setup["root"], run, "rounds=2", "round_episodes=2", "epochs=0", "export.onnx=false")
    with pytest.raises(AmcError, match=r"round_episodes=2.*raise round_episodes") as err:
        finetune(cfg, out_dir=tmp_path / "ft")
    assert " episodes=" not in str(err.value) and not (tmp_path / "ft" / "round1").exists()


def test_rounds_reach_the_target_iteratively_and_resume(setup: dict, search_run: Path, tmp_path: Path) -> None:
    args = ("rounds=2", "round_episodes=2", "epochs=1", "export.onnx=false")
    report = finetune(compose_cfg(setup["root"], search_run, *args), out_dir=tmp_path)
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    # Round 1 aims at 0.5 ** 0.5 of the original MACs, round 2 at 0.5, each relative to its own start.
    assert rounds[0]["budgets_of_current"]["macs"] == pytest.approx(0.5**0.5)
    r1 = rounds[0]["ratios_of_original"]["macs"]
    assert r1 <= 0.5**0.5 + 1e-9
    assert rounds[1]["budgets_of_current"]["macs"] == pytest.approx(min(1.0, 0.5 / r1), rel=1e-6)
    assert rounds[1]["ratios_of_original"]["macs"] <= 0.5 + 1e-9
    assert report["compressed"]["macs"] == pytest.approx(
        rounds[1]["ratios_of_original"]["macs"] * report["dense"]["macs"]
    )
    first = torch.load(tmp_path / "compressed.pt", weights_only=True)["state_dict"]
    # Killed during the final export: restarting in the same directory finds both rounds finished.
    (tmp_path / "report.json").unlink()
    again = finetune(compose_cfg(setup["root"], search_run, *args), out_dir=tmp_path)
    assert again["rounds"] == rounds
    second = torch.load(tmp_path / "compressed.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_rounds_need_a_search_run(setup: dict, tmp_path: Path) -> None:
    with pytest.raises(AmcError, match="amc.train run dir"):
        finetune(compose_cfg(setup["root"], setup["policy_path"], "rounds=2"), out_dir=tmp_path)
