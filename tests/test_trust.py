"""Nothing read from a file is built unless its ``_target_`` is trusted (issue #14).

Every payload here would create a marker file if Hydra built it (``test_payload_is_live`` proves it by
instantiating each one directly). Each route that builds what a file names -- a checkpoint's and a
compressed model's ``arch``, ``amc.train resume=<dir>``, ``amc.finetune policy=<dir>`` and the rounds of
an interrupted ``amc.finetune rounds=R`` -- must refuse it with one line naming the target, exit 2 on
the command line, and leave no marker. A user's own class passes when the caller names it in
``trust_targets``; a file naming it in its own ``trust_targets`` does not count.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_errors import data_args, train_args
from test_pretrain import make_fmnist

from amc.checkpoint import build_model_from_checkpoint, save_checkpoint
from amc.errors import AmcError
from amc.export import load_compressed, save_compressed
from amc.graph import build_graph
from amc.models import build_model
from amc.pretrain import load_or_pretrain
from amc.train import train
from amc.trust import check_targets, is_trusted, shipped_targets

REPO = Path(__file__).resolve().parents[1]
FMNIST = "amc.models.small.fmnist_cnn"

USER_MODULE = '''
import torch
from torch import nn


class Net(nn.Module):
    """A user's own model, outside amc."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean(dim=(2, 3)))
'''


class Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _payloads(tmp: Path, marker: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """name -> (an arch spec that creates ``marker`` when built, the target the refusal must name)."""
    evil = tmp / "evil.pkl"  # unpickling it runs `touch marker`
    evil.write_bytes(pickle.dumps(Evil(marker)))
    (tmp / "amcevil.py").write_text(f"def x():\n    open({str(marker)!r}, 'w').close()\n")
    load = {"_target_": "torch.load", "_args_": [str(evil)], "weights_only": False}
    return {
        "os.system": ({"_target_": "os.system", "_args_": [f"touch {marker}"]}, "os.system"),
        "builtins.exec": (
            {"_target_": "builtins.exec", "_args_": [f"open({str(marker)!r}, 'w').close()"]},
            "builtins.exec",
        ),
        "subprocess.call": ({"_target_": "subprocess.call", "_args_": [["touch", str(marker)]]}, "subprocess.call"),
        "pickle.loads": ({"_target_": "pickle.loads", "_args_": [evil.read_bytes()]}, "pickle.loads"),
        "torch.load": (load, "torch.load"),
        "prefix-lookalike": ({"_target_": "amcevil.x"}, "amcevil.x"),
        "amc-file-writer": (
            {"_target_": "amc.utils.atomic_write_bytes", "_args_": [str(marker), b"x"]},
            "amc.utils.atomic_write_bytes",
        ),
        "attribute-walk-out-of-amc": ({**load, "_target_": "amc.checkpoint.torch.load"}, "amc.checkpoint.torch.load"),
        "nested-kwarg": ({"_target_": FMNIST, "num_classes": load}, "torch.load"),
        "nested-in-args": ({"_target_": FMNIST, "_args_": [load]}, "torch.load"),
        "nested-in-list": ({"_target_": FMNIST, "num_classes": [{"a": load}]}, "torch.load"),
        "partial": ({**load, "_partial_": True}, "torch.load"),
        "interpolated-target": ({**load, "_target_": "${oc.env:AMC_TRUST_TEST_UNSET,torch.load}"}, "torch.load"),
    }


# Hydra 1.3.8 ships a deny-list of its own that stops these; amc must not depend on the installed Hydra having it.
HYDRA_DENIES = {"os.system", "builtins.exec", "subprocess.call", "pickle.loads"}


@pytest.fixture()
def payloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, tuple[dict, str]], Path]:
    monkeypatch.syspath_prepend(str(tmp_path))  # amcevil.py is importable, as an attacker's module would be
    marker = tmp_path / "pwned"
    return _payloads(tmp_path, marker), marker


def _one_line_refusal(exc: pytest.ExceptionInfo[AmcError], target: str) -> None:
    message = str(exc.value)
    assert "\n" not in message
    assert f"refusing to build '{target}'" in message and f"trust_targets=[{target}]" in message, message


PAYLOAD_NAMES = [
    "os.system",
    "builtins.exec",
    "subprocess.call",
    "pickle.loads",
    "torch.load",
    "prefix-lookalike",
    "amc-file-writer",
    "attribute-walk-out-of-amc",
    "nested-kwarg",
    "nested-in-args",
    "nested-in-list",
    "partial",
    "interpolated-target",
]


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_payload_is_live(name: str, payloads: tuple[dict, Path]) -> None:
    """Control: built directly by Hydra, each payload creates the marker (or Hydra's own deny-list stops it)."""
    cases, marker = payloads
    error = ""
    try:
        built = instantiate(cases[name][0])
        if callable(built) and not isinstance(built, torch.nn.Module):
            built()  # a _partial_ runs when it is called
    except Exception as exc:  # noqa: BLE001 -- an outer factory may fail on the nested result; the harm is done
        error = str(exc)
    assert marker.exists() or (name in HYDRA_DENIES and "blocklisted" in error), error[:300]


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_checkpoint_arch_is_refused(name: str, payloads: tuple[dict, Path], tmp_path: Path) -> None:
    cases, marker = payloads
    arch, target = cases[name]
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, build_model("fmnist_cnn"), {**arch, "trust_targets": [target]}, {"trust_targets": [target]})
    with pytest.raises(AmcError, match=r"refusing to build ") as exc:
        build_model_from_checkpoint(path)
    _one_line_refusal(exc, target)
    assert str(path) in str(exc.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_compressed_arch_is_refused(name: str, payloads: tuple[dict, Path], tmp_path: Path) -> None:
    cases, marker = payloads
    arch, target = cases[name]
    path = tmp_path / "compressed.pt"
    save_compressed(path, build_model("fmnist_cnn"), arch, [1, 28, 28], [], {}, {})
    with pytest.raises(AmcError, match=r"refusing to build ") as exc:
        load_compressed(path)
    _one_line_refusal(exc, target)
    assert not marker.exists()


def test_interpolations_are_resolved_before_the_check(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    decoded = {"_target_": FMNIST, "num_classes": f"${{oc.decode:'{{_target_: os.system, _args_: [touch {marker}]}}'}}"}
    with pytest.raises(AmcError, match=r"refusing to build ") as exc:
        check_targets(OmegaConf.create(decoded), "f.yaml")
    _one_line_refusal(exc, "os.system")
    with pytest.raises(AmcError, match=r"refusing to build '\$\{oc.env:X\}'"):  # escaped: not a dotted name
        check_targets(OmegaConf.create({"_target_": "\\${oc.env:X}"}), "f.yaml")
    with pytest.raises(AmcError, match="refusing to build '5'"):
        check_targets({"_target_": 5}, "f.yaml")
    with pytest.raises(AmcError, match="nested more than"):
        check_targets(OmegaConf.create({"a": {"b": "${oc.select:a}"}}), "f.yaml")  # resolves to itself, forever
    assert not marker.exists()


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "amcevil.x",
        "amc_evil.x",
        "amc.modelsevil.x",
        "amc",
        "amc.utils.atomic_write_bytes",
        "amc.utils.atomic_torch_save",
        "amc.checkpoint.save_checkpoint",
        "amc.data.write_cifar_batch",
        "amc.data.write_idx",
        "amc.data.download_file",
        "amc.data.safe_extract_tar",
        "amc.data.CifarUnpickler",
        "amc.data.__main__.main",
        "amc.hardware.save_table",
        "amc.hardware.load_preset",
        "amc.train.train",
        "amc.cli.run_cli",
        "amc.models.small.torch.load",
        "amc.models.MODELS",
        "amc.models.resnet20.__globals__",
        "amc.agents.ddpg.TD3",
        "amc.agents.callbacks.Checkpointer",
        "amc.models.small.nn.Module",
        " amc.models.small.fmnist_cnn",
    ],
)
def test_dangerous_or_foreign_names_are_not_components(name: str) -> None:
    assert not is_trusted(name)


def test_amc_components_and_shipped_targets_are_trusted() -> None:
    shipped = shipped_targets()
    assert FMNIST in shipped and "amc.agents.DDPGAgent" in shipped
    assert all(is_trusted(t) for t in shipped)
    for name in (
        "amc.models.resnet_cifar.cifar_resnet",  # a factory no shipped config names
        "amc.models.build_model",
        "amc.data.module.FashionMNIST",  # the class behind the re-export amc.data.FashionMNIST
        "amc.data.build_data",
        "amc.envs.make_env",
        "amc.rewards.BlendedReward",
        "amc.hardware.accelerators.SystolicArray",
    ):
        assert is_trusted(name), name
    assert is_trusted("my.pkg.Net", ["my.pkg.Net"]) and not is_trusted("my.pkg.Net2", ["my.pkg.Net"])
    assert not is_trusted("my.pkg.Net", ["my.pkg"])  # exact names, no prefixes


@pytest.fixture()
def user_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary package ``trustpkg`` with a model class ``trustpkg.net.Net``, on ``sys.path``."""
    root = tmp_path / "userlib"
    (root / "trustpkg").mkdir(parents=True)
    (root / "trustpkg" / "__init__.py").write_text("")
    (root / "trustpkg" / "net.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(root))
    return root


def test_trust_targets_lets_a_named_user_class_through(user_pkg: Path, tmp_path: Path) -> None:
    from trustpkg.net import Net

    arch = {"_target_": "trustpkg.net.Net", "num_classes": 10, "in_channels": 1}
    model = Net().eval()
    ckpt = tmp_path / "user.pt"
    save_checkpoint(ckpt, model, arch, {})
    with pytest.raises(AmcError, match=r"refusing to build ") as exc:
        build_model_from_checkpoint(ckpt)
    _one_line_refusal(exc, "trustpkg.net.Net")
    rebuilt, _ = build_model_from_checkpoint(ckpt, trust_targets=["trustpkg.net.Net"])
    assert type(rebuilt).__name__ == "Net"

    graph = build_graph(model, (1, 28, 28))
    keep = [torch.arange(c) for c in graph.full_channels()]
    path = tmp_path / "compressed.pt"
    save_compressed(path, model, arch, [1, 28, 28], keep, {}, {})
    with pytest.raises(AmcError, match=r"refusing to build ") as exc:
        load_compressed(path, trust_targets=["trustpkg.net"])
    _one_line_refusal(exc, "trustpkg.net.Net")
    reloaded, _ = load_compressed(path, trust_targets=("trustpkg.net.Net",))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(reloaded(x), model(x))


# --- the command-line routes: a subprocess on tiny data, as tests/test_errors.py does ---------------------------


def cli(module: str, *args: str, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=REPO, timeout=300, env=env
    )


def _refused_on_the_command_line(res: subprocess.CompletedProcess, target: str, marker: Path) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-3000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, res.stderr[-3000:]
    assert f"refusing to build '{target}'" in errors[0] and f"trust_targets=[{target}]" in errors[0], errors[0]
    assert not marker.exists()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny data, its baseline and a finished 2-episode search (``<root>/search``)."""
    root = tmp_path_factory.mktemp("trust")
    make_fmnist(root / "fm", n_train=500, n_test=100)
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        load_or_pretrain(compose("pretrain", overrides=data_args(root)))
        train(compose("train", overrides=[*train_args(root), f"output_dir={root / 'search'}"]))
    return root


def _poisoned_copy(world: Path, dest: Path, edit: dict[str, Any], config: str = "config.yaml") -> Path:
    """A copy of the finished search whose ``config`` has the keys in ``edit`` replaced (and trusts itself)."""
    shutil.copytree(world / "search", dest)
    saved = yaml.safe_load((dest / "config.yaml").read_text())
    for dotted, value in edit.items():
        node = saved
        *parents, last = dotted.split(".")
        for key in parents:
            node = node[key]
        node[last] = value
    saved["trust_targets"] = ["torch.load", "amcevil.x"]  # a file cannot trust itself
    if config != "config.yaml":
        (dest / "config.yaml").unlink()
        (dest / config).parent.mkdir(parents=True, exist_ok=True)
    (dest / config).write_text(yaml.safe_dump(saved))
    return dest


def _evil_load(tmp: Path, marker: Path) -> dict[str, Any]:
    """``torch.load`` of a pickle that runs ``touch marker``: not on Hydra 1.3.8's deny-list."""
    (tmp / "evil.pkl").write_bytes(pickle.dumps(Evil(marker)))
    return {"_target_": "torch.load", "_args_": [str(tmp / "evil.pkl")], "weights_only": False}


@pytest.mark.parametrize("where", ["model.num_classes", "agent", "reward"])
def test_train_resume_refuses_a_poisoned_config(where: str, world: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _evil_load(tmp_path, marker)
    if where == "reward":  # a partial that the environment would call
        payload["_partial_"] = True
    run = _poisoned_copy(world, tmp_path / "run", {where: payload})
    res = cli("amc.train", f"resume={run}", f"hydra.run.dir={tmp_path / 'log'}")
    _refused_on_the_command_line(res, "torch.load", marker)


@pytest.mark.parametrize("config", ["config.yaml", ".hydra/config.yaml"])
def test_finetune_refuses_a_poisoned_search_config(config: str, world: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "amcevil.py").write_text(f"def x(**kwargs):\n    open({str(marker)!r}, 'w').close()\n")
    run = _poisoned_copy(world, tmp_path / "run", {"hardware": {"_target_": "amcevil.x", "name": "x"}}, config)
    args = [*data_args(world), f"policy={run}", "epochs=0", "export.onnx=false", f"hydra.run.dir={tmp_path / 'ft'}"]
    res = cli("amc.finetune", *args, pythonpath=tmp_path / "lib")
    _refused_on_the_command_line(res, "amcevil.x", marker)


def test_finetune_rounds_refuse_a_planted_round(world: Path, tmp_path: Path) -> None:
    """An interrupted ``rounds=2`` run dir whose finished round 1 names a payload: resuming refuses to build it."""
    marker = tmp_path / "pwned"
    ft = tmp_path / "ft"
    (ft / "round1").mkdir(parents=True)
    arch = {"_target_": FMNIST, "num_classes": 10, "in_channels": _evil_load(tmp_path, marker)}
    save_compressed(ft / "round1" / "compressed.pt", build_model("fmnist_cnn"), arch, [1, 28, 28], [], {}, {})
    (ft / "round1" / "round.json").write_text('{"round": 1, "history": [], "test_after": 0.5}')
    args = [*data_args(world), f"policy={world / 'search'}", "rounds=2", "round_episodes=2", "epochs=0"]
    res = cli("amc.finetune", *args, "export.onnx=false", f"hydra.run.dir={ft}", "trust_targets=[subprocess.call]")
    _refused_on_the_command_line(res, "torch.load", marker)


def test_a_user_model_run_needs_trust_targets_on_the_command_line(world: Path, user_pkg: Path, tmp_path: Path) -> None:
    """A search of ``trustpkg.net.Net`` resumes and fine-tunes only when the command line names that class."""
    run = tmp_path / "search"
    model = ["model._target_=trustpkg.net.Net"]
    res = cli("amc.train", *train_args(world), *model, f"hydra.run.dir={run}", pythonpath=user_pkg)
    assert res.returncode == 0, res.stderr[-3000:]  # the command line's own model needs no trust
    marker = tmp_path / "none"  # nothing to create; the refusal must still be one line
    res = cli("amc.train", f"resume={run}", f"hydra.run.dir={tmp_path / 'log1'}", pythonpath=user_pkg)
    _refused_on_the_command_line(res, "trustpkg.net.Net", marker)
    res = cli(
        "amc.train",
        f"resume={run}",
        "trust_targets=[trustpkg.net.Net]",
        f"hydra.run.dir={tmp_path / 'log2'}",
        pythonpath=user_pkg,
    )
    assert res.returncode == 0, res.stderr[-3000:]

    ft_args = [*data_args(world), f"policy={run}", "epochs=0", "export.onnx=false", "export.latency_repeats=2"]
    res = cli("amc.finetune", *ft_args, f"hydra.run.dir={tmp_path / 'ft1'}", pythonpath=user_pkg)
    _refused_on_the_command_line(res, "trustpkg.net.Net", marker)
    res = cli(
        "amc.finetune",
        *ft_args,
        "trust_targets=[trustpkg.net.Net]",
        f"hydra.run.dir={tmp_path / 'ft2'}",
        pythonpath=user_pkg,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "ft2" / "compressed.pt").is_file()
