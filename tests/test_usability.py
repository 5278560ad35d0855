"""What a new user meets first (issue #17): run folders passed back as written, file modes, sweep reports,
``gymnasium.make`` with a model and data, console scripts, logs and exports.

Commands run as subprocesses on the tiny Fashion-MNIST stand-in of ``test_pretrain``.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_pretrain import make_fmnist, tiny_data_args

from amc.errors import AmcError
from amc.report import report
from amc.utils import atomic_torch_save, atomic_write_bytes, format_si

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_atomic_writes_get_the_umask_mode(tmp_path: Path, umask_022: None) -> None:
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "b.pt")
    for name in ("a.json", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


# --- run folders: the README's commands, as written ----------------------------------------------
def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python <args>`` in ``cwd`` with ``AMC_HOME=cwd`` (so ``outputs/...`` in the README resolves there)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "AMC_HOME": str(cwd)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def search_args(root: Path) -> list[str]:
    return [
        *tiny_data_args(root),
        "env.calibration_batches=1",
        "env.calibration_batch_size=32",
        "callbacks.progress_bar=false",
        "episodes=2",
        "agent=random",
    ]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny data and one finished ``amc.train`` run in the default run folder under ``<root>/outputs``."""
    root = tmp_path_factory.mktemp("usability")
    make_fmnist(root / "fm", n_train=500, n_test=100)
    # With the progress bar on (the default): in a pipe, as here, it is not drawn (the log tells the progress).
    run = cli("-m", "amc.train", *(a for a in search_args(root) if a != "callbacks.progress_bar=false"), cwd=root)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not re.search(r"\d/2 \[|ep/s", run.stdout + run.stderr), run.stderr[-3000:]
    return root


def search_run(root: Path) -> Path:
    """The fixture's search run folder (a resume's own Hydra folder beside it holds no best policy)."""
    (run_dir,) = (p for p in (root / "outputs" / "train" / "runs").iterdir() if (p / "best_policy.json").is_file())
    return run_dir


def readme_commands(prefix: str) -> list[str]:
    """The README's command lines that start with ``prefix`` (comments dropped)."""
    lines = [line.split("  #")[0].strip() for line in README.read_text().splitlines()]
    return [line for line in lines if line.startswith(prefix)]


def test_readme_policy_and_resume_commands_run_as_written(searched: Path) -> None:
    run_dir = search_run(searched)
    assert not set("=,") & set(run_dir.name) and len(run_dir.name) < 48, run_dir.name
    assert (run_dir / ".hydra" / "overrides.yaml").read_text().count("agent=random") == 1
    commands = readme_commands("python -m amc.finetune policy=outputs/train/runs/<run>")
    commands += readme_commands("python -m amc.train resume=outputs/train/runs/<run>")
    assert len(commands) >= 3, commands
    for command in commands:
        small = re.sub(r"\bepochs=\d+", "epochs=1", command.replace("<run>", run_dir.name))
        small = re.sub(r"\bround_episodes=\d+", "round_episodes=2", small)
        run = cli(*shlex.split(small)[1:], cwd=searched)
        assert run.returncode == 0, f"{small}\n{run.stderr[-3000:]}"
    for ft in (searched / "outputs" / "finetune" / "runs").iterdir():
        assert not set("=,/") & set(ft.name) and "train" not in ft.name, ft.name
        assert (ft / "report.json").is_file()


# --- the Gymnasium door ---------------------------------------------------------------------------
def readme_block(marker: str) -> str:
    """The README's first python code block that contains ``marker``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return next(b for b in blocks if marker in b)


def test_readme_gymnasium_make_snippet_runs(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "fm", n_train=300, n_test=50)
    code = readme_block("gymnasium.make(")
    code = code.replace('"data/fashion-mnist"', repr(str(tmp_path / "fm"))).replace(
        "search_size=5000", "search_size=100"
    )
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 -- the README's own snippet
    env = namespace["env"]
    assert env.spec.id == "amc/Compression-v0" and 0.0 < namespace["info"]["ratio/latency"] <= 0.5 + 1e-6


def test_gymnasium_make_from_parts_and_one_line_without_a_model() -> None:
    import amc.envs  # noqa: F401 -- registers the id
    import gymnasium

    with pytest.raises(AmcError, match="pass model=<trained model> and data="):
        gymnasium.make("amc/Compression-v0")
    with pytest.raises(AmcError, match="model= and data= together"):
        gymnasium.make("amc/Compression-v0", model=torch.nn.Linear(2, 2))


# --- console scripts ------------------------------------------------------------------------------
SCRIPTS = ("amc-train", "amc-pretrain", "amc-finetune", "amc-hardware", "amc-report")


def script(name: str) -> str:
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{path} is missing: reinstall the package (pip install -e .) to get the console scripts"
    return str(path)


@pytest.mark.parametrize("name", SCRIPTS)
def test_console_scripts_answer_help(name: str, tmp_path: Path) -> None:
    args = ["--help"] if name == "amc-report" else ["--hydra-help"]
    run = subprocess.run([script(name), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0 and (
        "usage: amc-report" in run.stdout if name == "amc-report" else "Hydra" in run.stdout
    )


def test_amc_train_prints_its_config_and_completes_in_bash(tmp_path: Path) -> None:
    cfg = subprocess.run([script("amc-train"), "--cfg", "job"], capture_output=True, text=True, cwd=tmp_path)
    assert cfg.returncode == 0 and "episodes:" in cfg.stdout and "agent:" in cfg.stdout
    # What TAB runs: the installed completion function, on the line typed so far.
    line = "amc-train agent="
    shell = (
        'eval "$(amc-train -sc install=bash)"; '
        f'COMP_LINE="{line}"; COMP_POINT={len(line)}; COMP_CWORD=1; hydra_bash_completion; echo "${{COMPREPLY[@]}}"'
    )
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    run = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PATH": path}
    )
    assert {"agent=ddpg", "agent=random", "agent=uniform"} <= set(run.stdout.split()), run.stdout + run.stderr


# --- sweep reports --------------------------------------------------------------------------------
def test_report_groups_by_every_swept_key_and_seeds_share_one_baseline(searched: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [*search_args(searched), "env.selection=l1,bn", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    run = cli("-m", "amc.train", "-m", *args, cwd=searched, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]  # by job number
    assert len(list((searched / ".cache" / "amc" / "pretrained").glob("*.pt"))) == 1  # one baseline for both seeds
    text = report(sweep)
    header, _, *rows = [
        [c.strip() for c in line.split("|")[1:-1]] for line in text.splitlines() if line.startswith("|")
    ]
    column = header.index("env.selection")
    assert sorted((r[column], r[header.index("seeds")]) for r in rows) == [("bn", "2"), ("l1", "2")], text
    with open(sweep / "report.csv") as fh:
        table = list(csv.DictReader(fh))
    assert sorted((r["env.selection"], r["seed"]) for r in table) == [
        ("bn", "0"),
        ("bn", "1"),
        ("l1", "0"),
        ("l1", "1"),
    ]


def test_default_baseline_keeps_its_cache_key() -> None:
    from hydra import compose, initialize_config_module

    from amc.pretrain import checkpoint_path

    data = SimpleNamespace(name="fashion_mnist", input_shape=(1, 28, 28), search_size=5000, split_seed=0)
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        for seed in (0, 3):
            cfg = compose("train", overrides=[f"seed={seed}", "paths.root_dir=."])
            assert checkpoint_path(cfg, data).name == "fmnist_cnn-fashion_mnist-105c4675a0.pt"


# --- logs, progress and units ---------------------------------------------------------------------
def test_logs_tell_the_story_without_progress_bars(searched: Path, tmp_path: Path) -> None:
    run_dir = search_run(searched)
    train_log = (run_dir / "train.log").read_text()
    assert train_log.count("episode ") >= 2 and "episode 2/2 (random): accuracy" in train_log
    assert "| latency " in train_log and "µs" in train_log and f"outputs: {run_dir}" in train_log
    out = tmp_path / "ft"
    args = [f"policy={run_dir}", "epochs=1", "export.latency_repeats=2", f"hydra.run.dir={out}"]
    run = cli("-m", "amc.finetune", *args, cwd=searched)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "finetune:" not in run.stderr and "\r" not in run.stderr  # bars on, but not drawn into a pipe
    ft_log = (out / "finetune.log").read_text()
    assert "epoch 1/1: train loss" in ft_log and "test top-1 (%)" in ft_log and "compressed model: " in ft_log
    assert re.search(r"sim\. latency .*µs", ft_log) and re.search(r"CPU latency, batch 1 .*s ", ft_log)
    # One unit per row (the original's), whatever the machine's speed: a loaded CPU may need ms, not µs.
    for label in ("sim. latency", "sim. energy", "CPU latency, batch 1"):
        row = next(line for line in ft_log.splitlines() if line.startswith(f"| {label}"))
        units = re.findall(r"\d \S+", row)
        assert len(units) == 3 and len({u.split()[1] for u in units}) == 1, row


def on_terminal(*args: str, cwd: Path, timeout: int = 300) -> tuple[int, str]:
    """``python <args>`` with stderr on a pseudo-terminal (as in an interactive shell): exit status, stderr."""
    import fcntl
    import pty
    import struct
    import termios
    import threading

    try:
        master, slave = pty.openpty()
    except OSError as exc:  # a container without /dev/ptmx
        pytest.skip(f"no pseudo-terminal here ({exc})")
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a new pty is 0 columns wide
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "AMC_HOME": str(cwd)}
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # read as it comes: a full terminal buffer would block the command
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command exited and closed its end
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        code = proc.wait(timeout=timeout)
    finally:
        reader.join(timeout=30)
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def test_pretrain_progress_bar_switch(tmp_path: Path) -> None:
    make_fmnist(tmp_path / "fm", n_train=300, n_test=50)
    quiet = cli("-m", "amc.pretrain", *tiny_data_args(tmp_path), "progress_bar=false", cwd=tmp_path)
    assert quiet.returncode == 0 and "pretrain:" not in quiet.stderr and "\r" not in quiet.stderr, quiet.stderr
    # On by default, drawn on a terminal (not into a pipe: see the searched fixture and the fine-tuning above).
    code, shown = on_terminal("-m", "amc.pretrain", *tiny_data_args(tmp_path), "pretrain.force=true", cwd=tmp_path)
    assert code == 0 and "pretrain:" in shown and "\r" in shown, shown[-2000:]


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [(4.961e-5, "s", "49.61 µs"), (2.791e-5, "J", "27.91 µJ"), (3.6e-4, "s", "360 µs"), (1.2, "s", "1.2 s")],
)
def test_one_unit_system_per_magnitude(value: float, unit: str, text: str) -> None:
    assert format_si(value, unit) == text
    assert format_si(value / 1000, unit, reference=value).split()[1] == text.split()[1]  # a row shares its unit


# --- missing optional extras ----------------------------------------------------------------------
def test_missing_launcher_extra_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import amc.cli

    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        run = cli("-m", "amc.train", "-m", "hydra/launcher=ray_local", "agent=random,uniform", cwd=tmp_path)
        assert run.returncode == 2 and run.stderr.strip().splitlines() == [
            "error: hydra/launcher=ray_local needs hydra-ray-launcher, which is not installed; "
            "pip install 'amc[ray]' (or use the default joblib launcher)"
        ]
    monkeypatch.setattr(amc.cli, "_importable", lambda module: "submitit" not in module)
    assert "pip install 'amc[launchers]'" in str(amc.cli.missing_extra(["-m", "hydra/launcher=slurm"]))
    assert amc.cli.missing_extra(["hydra/launcher=joblib_local", "agent=ddpg"]) is None


def test_missing_onnx_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    from amc.export import export_onnx

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    assert not export_onnx(torch.nn.Linear(4, 2), tmp_path / "m.onnx", (4,))
    assert "pip install 'amc[onnx]'" in caplog.text


# --- TensorBoard ----------------------------------------------------------------------------------
def scalar_tags(log_dir: Path) -> tuple[set[str], bytes]:
    """Scalar tags under ``log_dir`` and the hparams plugin's experiment description (serialized)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    try:
        hparams = events.PluginTagToContent("hparams")
    except KeyError:  # no hparams written
        hparams = {}
    return set(events.Tags()["scalars"]), b"".join(hparams.values())


def test_tensorboard_carries_settings_targets_and_every_stage(searched: Path, tmp_path: Path) -> None:
    run_dir = search_run(searched)
    scalars, experiment = scalar_tags(run_dir / "tb")
    assert {"search/target/latency", "search/ratio/latency", "hparam/test_accuracy", "hparam/best_accuracy"} <= scalars
    assert {"pretrain/train_loss", "pretrain/test_top1"} <= scalars  # the baseline was trained by this run
    for name in (b"agent._target_", b"env.mode", b"env.selection", b"budget_latency", b"hparam/test_accuracy"):
        assert name in experiment, name
    out = tmp_path / "ft"
    run = cli("-m", "amc.finetune", f"policy={run_dir}", "epochs=1", f"hydra.run.dir={out}", cwd=searched)
    assert run.returncode == 0, run.stderr[-3000:]
    scalars, _ = scalar_tags(out / "tb")
    assert {"finetune/train_loss", "finetune/test_top1", "finetune/dense_test_top1"} <= scalars


# --- quantized ONNX -------------------------------------------------------------------------------
def test_quantized_onnx_keeps_the_bits_and_matches_the_fake_quantized_model(searched: Path, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    run_dir = search_run(searched)
    out = tmp_path / "ft"
    run = cli("-m", "amc.finetune", f"policy={run_dir}", "epochs=0", f"hydra.run.dir={out}", cwd=searched)
    assert run.returncode == 0, run.stderr[-3000:]
    graph = onnx.load(str(out / "model_qdq.onnx"))
    onnx.checker.check_model(graph, full_check=True)
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and ops.count("DequantizeLinear") >= 2 and "Clip" in ops
    stored = json.loads({p.key: p.value for p in graph.metadata_props}["amc.policy"])["units"]
    policy = json.loads((run_dir / "best_policy.json").read_text())["policy"]["units"]
    assert [(u["w_bits"], u["a_bits"]) for u in stored] == [(u["w_bits"], u["a_bits"]) for u in policy]
    report_json = json.loads((out / "report.json").read_text())
    assert report_json["files"]["onnx_qdq"] == str(out / "model_qdq.onnx")
    if importlib.util.find_spec("onnxruntime") is not None:
        qdq = report_json["onnx_qdq"]
        assert abs(qdq["top1_diff"]) <= 0.02 and qdq["agreement"] >= 0.97, qdq
        assert "quantized ONNX" in (out / "finetune.log").read_text()
