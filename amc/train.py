"""``python -m amc.train``: search a compression policy under hard budgets.

One straight path: config -> model + data -> cached pretrained baseline -> environment (hardware
model, reward, budgets) -> agent -> callbacks -> outputs. Everything goes into the run directory
(Hydra's ``runtime.output_dir``):

- ``best_policy.json``: the best policy, its budgets (target and achieved), metrics, accuracy,
  reward, episode and config hash (readable with :meth:`amc.compress.Policy.load`);
- ``episodes.csv``: one row per episode; ``tb/``: TensorBoard; ``checkpoints/``: resumable state;
- ``summary.json`` and ``best_policy.png``; the summary table is printed at the end.

``python -m amc.train resume=<run_dir>`` continues an interrupted search from its last checkpoint
with the run's saved config and ends with the same best policy as an uninterrupted run; the saved
config is built only if every ``_target_`` in it is trusted (:mod:`amc.trust`).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tabulate import tabulate

from amc.agents import Agent, CallbackList, SearchResult
from amc.agents.callbacks import (
    BestPolicyWriter,
    Checkpointer,
    EpisodeLog,
    ProgressBar,
    TensorBoardLogger,
    latest_checkpoint,
    restore_rng,
)
from amc.checkpoint import config_hash
from amc.cli import run_cli, setup_run
from amc.compress import Policy
from amc.envs import CompressionEnv
from amc.errors import AmcError
from amc.evaluate import accuracy
from amc.pretrain import load_or_pretrain
from amc.trust import check_targets
from amc.utils import atomic_write_bytes, resolve_device

log = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
# Keys that do not change what a search finds (left out of the config hash).
UNHASHED = (
    "paths",
    "output_dir",
    "resume",
    "threads",
    "device",
    "trust_targets",
    "callbacks",
    "task_name",
    "finetune",
    "paper",
)


def _name(node: Any) -> str | None:
    if node is None:
        return None
    return str(node.get("name") or str(node.get("_target_", "?")).rsplit(".", 1)[-1])


def run_identity(cfg: DictConfig, agent: Agent) -> dict[str, Any]:
    """What identifies a run in its outputs: agent, seed, model, data, mode, hardware, budgets, config hash."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return {
        "agent": agent.name,
        "seed": int(cfg.seed),
        "episodes": int(cfg.episodes),
        "model": _name(cfg.model),
        "data": _name(cfg.data),
        "mode": str(cfg.env.mode),
        "hardware": _name(cfg.get("hardware")),
        "reward": _name(cfg.reward),
        "budget_targets": {k: float(v) for k, v in (cfg.budgets or {}).items() if v is not None},
        "config_hash": config_hash({k: v for k, v in plain.items() if k not in UNHASHED}),
    }


def prepare_run_dir(cfg: DictConfig) -> tuple[DictConfig, Path, Path | None]:
    """The config to run, its run directory and, for a resume, the checkpoint to continue from.

    Args:
        cfg: the composed config (with ``resume`` possibly set).
    """
    if not cfg.get("resume"):
        run_dir = Path(str(cfg.output_dir))
        # A directory with episodes holds a search; one with only config.yaml failed before its first episode.
        if (run_dir / "summary.json").is_file() or (run_dir / "episodes.csv").is_file():
            state = "a finished search" if (run_dir / "summary.json").is_file() else "an unfinished search"
            if not cfg.get("overwrite", False):
                raise AmcError(
                    f"{run_dir} already holds {state}; continue it with resume={run_dir}, write elsewhere "
                    "(hydra.run.dir=...), or pass overwrite=true to replace it"
                )
            log.warning("overwrite=true: replacing %s in %s", state, run_dir)
            for name in ("episodes.csv", "best_policy.json", "summary.json", "best_policy.png"):
                (run_dir / name).unlink(missing_ok=True)
            for sub in ("checkpoints", "tb"):
                shutil.rmtree(run_dir / sub, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True).encode())
        return cfg, run_dir, None
    run_dir = Path(str(cfg.resume)).expanduser()
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        raise AmcError(
            f"resume={run_dir} is not an amc.train run directory (no {CONFIG_FILE}); "
            "pass the run directory of the search to continue"
        )
    checkpoint = latest_checkpoint(run_dir)
    resumed = OmegaConf.load(saved)
    if not isinstance(resumed, DictConfig):
        raise AmcError(f"{saved} is not an amc.train config (no mapping); pass the run directory of a search")
    # The saved config names what gets built; only the command line says which foreign targets to trust.
    check_targets(resumed, saved, cfg.get("trust_targets"))
    for key in ("threads", "device", "trust_targets"):  # machine settings may change between the runs
        resumed[key] = cfg.get(key)
    resumed.resume = str(run_dir)
    log.info("resuming %s from %s with the run's saved config", run_dir, checkpoint.name)
    setup_run(resumed)
    return resumed, run_dir, checkpoint


def build_env(cfg: DictConfig, model: Any, data: Any) -> CompressionEnv:
    """The environment for ``model`` on ``data`` with the config's hardware, reward and budgets."""
    hardware = instantiate(cfg.hardware) if cfg.get("hardware") is not None else None
    reward = instantiate(cfg.reward)
    budgets = {k: float(v) for k, v in (cfg.budgets or {}).items() if v is not None}
    return instantiate(cfg.env)(
        model=model,
        data=data,
        hardware=hardware,
        reward=reward,
        budgets=budgets,
        seed=int(cfg.seed),
        device=resolve_device(str(cfg.device)),
    )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) one search and write its outputs.

    Args:
        cfg: the composed ``train`` config.
    """
    t_start = time.perf_counter()
    cfg, run_dir, checkpoint = prepare_run_dir(cfg)
    instantiate(cfg.agent).validate(int(cfg.episodes))  # bad settings fail before any data is read
    data = instantiate(cfg.data)
    model, meta = load_or_pretrain(cfg, data)
    summary, _ = search(cfg, model, data, meta, run_dir, checkpoint, t_start)
    print(summary["table"])
    print(f"outputs: {run_dir}")
    return summary


def search(
    cfg: DictConfig,
    model: Any,
    data: Any,
    meta: dict[str, Any],
    run_dir: Path,
    checkpoint: Path | None = None,
    t_start: float | None = None,
) -> tuple[dict[str, Any], CompressionEnv]:
    """Search ``model`` with the config's agent, env, reward, hardware and budgets; outputs go to ``run_dir``.

    The part of :func:`train` after the baseline is loaded (the iterative rounds of ``amc.finetune``
    call it on each round's fine-tuned model). Returns the summary and the environment (whose
    compressor turns the best policy into the compressed model).

    Args:
        cfg: a ``train`` config.
        model: the trained model to compress.
        data: its data module.
        meta: the model's metadata (``test_top1`` is the reference test accuracy of the summary).
        run_dir: where episodes, checkpoints, TensorBoard and the best policy go.
        checkpoint: a checkpoint directory to continue from.
        t_start: when the run started (for the summary's seconds).
    """
    t_start = time.perf_counter() if t_start is None else t_start
    episodes = int(cfg.episodes)
    agent: Agent = instantiate(cfg.agent)
    agent.validate(episodes)
    env = build_env(cfg, model, data)
    if checkpoint is not None:
        agent.load(checkpoint, env, episodes)
        restore_rng(checkpoint, env)

    identity = run_identity(cfg, agent)
    dense = {**env.evaluator.dense, "accuracy": env.dense_accuracy}
    best_writer = BestPolicyWriter(run_dir / "best_policy.json", {**identity, "dense": dense})
    hparams = {
        **{k: v for k, v in identity.items() if k != "budget_targets"},
        **{f"budget_{k}": v for k, v in identity["budget_targets"].items()},
    }
    callbacks = CallbackList(
        [
            ProgressBar(bool(cfg.callbacks.progress_bar)),
            EpisodeLog(run_dir / "episodes.csv"),
            best_writer,
            TensorBoardLogger(run_dir / "tb", int(cfg.callbacks.image_every), hparams),
            Checkpointer(run_dir / "checkpoints", int(cfg.callbacks.checkpoint_every), env),
        ]
    )
    result = agent.search(env, episodes, callbacks)
    summary = summarize(cfg, result, env, data, meta, run_dir, best_writer, time.perf_counter() - t_start)
    return summary, env


def summarize(
    cfg: DictConfig,
    result: SearchResult,
    env: CompressionEnv,
    data: Any,
    meta: dict[str, Any],
    run_dir: Path,
    best_writer: BestPolicyWriter,
    seconds: float,
) -> dict[str, Any]:
    """Dense baseline vs best policy: the closing table, ``summary.json``, ``best_policy.png``, test accuracy."""
    best = result.best
    if best is None:
        raise AmcError("no episode produced a usable policy (every accuracy was NaN); check the model and data")
    test_acc = None
    if cfg.callbacks.get("test_best", True):
        policy = Policy.from_dict(best.policy or {}, env.graph)
        compressed = env.compressor.apply(policy).to(env.device)
        test_acc = accuracy(compressed, data.test_loader(), env.device)["top1"]
        best_writer.write(
            best, episodes_done=len(result.episodes), test_accuracy=test_acc, dense_test_accuracy=meta.get("test_top1")
        )
    from amc.report import save_policy_plot

    title = f"best policy ({result.agent}, episode {best.episode})"
    save_policy_plot(best.policy or {}, run_dir / "best_policy.png", title)

    dense = env.evaluator.dense
    rows = [["search accuracy", f"{100 * env.dense_accuracy:.2f}%", f"{100 * best.accuracy:.2f}%", ""]]
    if test_acc is not None and meta.get("test_top1") is not None:
        rows.append(["test accuracy", f"{100 * meta['test_top1']:.2f}%", f"{100 * test_acc:.2f}%", ""])
    units = {
        "macs": ("MACs", 1e-6, "M"),
        "params": ("params", 1e-3, "k"),
        "size": ("size", 1 / 8 / 1024, "KiB"),
        "bitops": ("BitOps", 1e-9, "G"),
        "latency": ("latency", 1e3, "ms"),
        "energy": ("energy", 1e6, "uJ"),
    }
    for key, (label, scale, unit) in units.items():
        if key not in dense or key not in best.metrics:
            continue
        target = best.budgets.get(key, {}).get("target")
        note = f"{best.ratios[key]:.3f}" + (f" (budget {target:g})" if target is not None else "")
        rows.append([label, f"{dense[key] * scale:.4g} {unit}", f"{best.metrics[key] * scale:.4g} {unit}", note])
    headers = ["", "dense", f"best ({result.agent}, ep {best.episode})", "ratio"]
    table = tabulate(rows, headers=headers, tablefmt="github")
    summary = {
        "agent": result.agent,
        "episodes": len(result.episodes),
        "best_episode": best.episode,
        "best_reward": best.reward,
        "best_accuracy": best.accuracy,
        "test_accuracy": test_acc,
        "dense_accuracy": env.dense_accuracy,
        "dense_test_accuracy": meta.get("test_top1"),
        "budgets": best.budgets,
        "ratios": best.ratios,
        "seconds": seconds,
        "run_dir": str(run_dir),
        "table": table,
    }
    atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=1).encode())
    return summary


@hydra.main(version_base="1.3", config_path="pkg://amc.conf", config_name="train")
def main(cfg: DictConfig) -> None:
    """Entry point of ``python -m amc.train``."""
    run_cli(train, cfg)


if __name__ == "__main__":
    main()
