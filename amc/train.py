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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tabulate import tabulate

from amc.agents import Agent, CallbackList, SearchCallback, SearchResult
from amc.agents.callbacks import (
    BestPolicyWriter,
    Checkpointer,
    EpisodeLog,
    TensorBoardLogger,
    latest_checkpoint,
    restore_rng,
)
from amc.checkpoint import config_hash
from amc.cli import command_line_keys, hydra_entry, run_cli, setup_run
from amc.compress import Policy
from amc.envs import CompressionEnv
from amc.errors import AmcError
from amc.evaluate import accuracy
from amc.graph import build_graph
from amc.pretrain import arch_spec, check_model, load_or_pretrain, needs_training
from amc.schema import check_config
from amc.trust import check_targets
from amc.utils import atomic_write_bytes, claim_dir, format_si, move_aside, resolve_device

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


def flat_settings(node: DictConfig | None, prefix: str) -> dict[str, Any]:
    """A config node as ``{"<prefix>.<key>": value}`` for TensorBoard's hparams (lists and mappings as text)."""
    if node is None:
        return {}
    plain = OmegaConf.to_container(node, resolve=True)
    assert isinstance(plain, dict)
    out: dict[str, Any] = {}
    for key, value in plain.items():
        name = f"{prefix}.{key!s}"
        if isinstance(value, dict) and all(not isinstance(v, dict | list) for v in value.values()):
            out.update({f"{name}.{k!s}": v for k, v in value.items()})
        else:
            out[name] = value if isinstance(value, int | float | str | bool) else json.dumps(value)
    return out


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


# What a search writes into its run directory (moved aside by overwrite=true, see prepare_run_dir).
OUTPUTS = ("config.yaml", "episodes.csv", "best_policy.json", "summary.json", "best_policy.png", "checkpoints", "tb")
# Settings of the machine, not of the search: the only overrides a resume may change.
MACHINE_KEYS = ("threads", "device", "trust_targets")


def run_dir_of(cfg: DictConfig) -> Path:
    """The run directory a (new or resumed) search writes: ``resume`` (which must hold a search) or ``output_dir``."""
    if not cfg.get("resume"):
        return Path(str(cfg.output_dir))
    run_dir = Path(str(cfg.resume)).expanduser()
    if not (run_dir / CONFIG_FILE).is_file():
        raise AmcError(
            f"resume={run_dir} is not an amc.train run directory (no {CONFIG_FILE}); "
            "pass the run directory of the search to continue"
        )
    return run_dir


def _resume_overrides() -> list[str]:
    """The command line's overrides other than ``resume`` and the machine settings (empty outside Hydra)."""
    return [k for k in command_line_keys() if k not in ("resume", *MACHINE_KEYS)]


def prepare_run_dir(cfg: DictConfig) -> tuple[DictConfig, Path, Path | None, bool]:
    """The config to run, its run directory, the checkpoint to continue from, and whether outputs get replaced.

    Nothing is written or deleted here: a directory that already holds a search is refused, unless
    ``overwrite=true`` (its outputs are moved aside only when the new run starts writing, see
    :func:`start_outputs`). A resume of a search killed before its first checkpoint restarts it
    from episode 0 with its saved config. Call with the directory claimed (:func:`amc.utils.claim_dir`).

    Args:
        cfg: the composed config (with ``resume`` possibly set).
    """
    if not cfg.get("resume"):
        run_dir = run_dir_of(cfg)
        # A directory with episodes holds a search; one with only config.yaml failed before its first episode.
        held = (run_dir / "summary.json").is_file() or (run_dir / "episodes.csv").is_file()
        if held and not cfg.get("overwrite", False):
            state = "a finished search" if (run_dir / "summary.json").is_file() else "an unfinished search"
            raise AmcError(
                f"{run_dir} already holds {state}; continue it with resume={run_dir}, write elsewhere "
                "(hydra.run.dir=...), or pass overwrite=true to replace it"
            )
        return cfg, run_dir, None, held
    run_dir = run_dir_of(cfg)
    saved = run_dir / CONFIG_FILE
    extra = _resume_overrides()
    if extra:
        raise AmcError(
            f"resume= continues a search with its saved config, so {', '.join(extra)} would be ignored; drop them "
            f"(only {', '.join(MACHINE_KEYS)} may change) or start a new run in another directory"
        )
    try:
        resumed = OmegaConf.load(saved)
    except Exception as exc:  # noqa: BLE001 -- any YAML/OmegaConf failure means the file is unusable
        raise AmcError(f"{saved} is unreadable ({type(exc).__name__}); restore it or start a new run") from exc
    if not isinstance(resumed, DictConfig):
        raise AmcError(f"{saved} is not an amc.train config (no mapping); pass the run directory of a search")
    # The saved config names what gets built; only the command line says which foreign targets to trust.
    check_targets(resumed, saved, cfg.get("trust_targets"))
    for key in MACHINE_KEYS:  # machine settings may change between the runs
        resumed[key] = cfg.get(key)
    resumed.resume = str(run_dir)
    check_config(resumed, "train")
    checkpoint: Path | None = None
    if (run_dir / "checkpoints" / "latest.json").exists():
        checkpoint = latest_checkpoint(run_dir)
        log.info("resuming %s from %s with the run's saved config", run_dir, checkpoint.name)
    else:  # killed before (or during) its first checkpoint: nothing to continue, so start it again
        log.warning("%s has no checkpoint yet: restarting its search from episode 0 with the saved config", run_dir)
    setup_run(resumed)
    return resumed, run_dir, checkpoint, checkpoint is None


def start_outputs(cfg: DictConfig, run_dir: Path, replace: bool) -> Path | None:
    """The run is valid and about to write its first episode: move old outputs aside, write ``config.yaml``.

    Returns the folder holding the replaced outputs (delete it when the run has finished), or ``None``.

    Args:
        cfg: the config the run uses.
        run_dir: the run directory.
        replace: whether a previous search's outputs are there to replace.
    """
    aside = move_aside(run_dir, OUTPUTS) if replace else None
    atomic_write_bytes(run_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True).encode())
    return aside


def check_channel_multiple(cfg: DictConfig, model: Any, data: Any) -> None:
    """Refuse an ``env.channel_multiple`` that leaves nothing prunable (it would keep every channel)."""
    multiple = int(cfg.env.get("channel_multiple", 1) or 1)
    if multiple <= 1 or str(cfg.env.get("mode")) == "quantize":
        return
    graph = build_graph(model, data.input_shape, check_routing=False)
    widths = [graph.groups[g].channels for g in graph.prunable_groups]
    if widths and multiple >= max(widths):
        raise AmcError(
            f"env.channel_multiple={multiple} is not below any prunable layer's width (widest {max(widths)} "
            "channels), so nothing could be pruned; use a multiple well below the widths, e.g. "
            "env.channel_multiple=8, or env.mode=quantize"
        )


def load_checkpoint_into(agent: Agent, env: CompressionEnv, checkpoint: Path, episodes: int) -> None:
    """Load the agent's state and the generators from ``checkpoint``, one line when it is truncated or foreign."""
    again = f"delete {checkpoint.parent} and resume again to restart the search from episode 0"
    try:
        agent.load(checkpoint, env, episodes)
        restore_rng(checkpoint, env)
    except AmcError as exc:
        raise AmcError(f"{exc} (or {again})") from exc
    except Exception as exc:  # noqa: BLE001 -- a truncated or foreign file fails in many libraries' own ways
        detail = " ".join(str(exc).split())[:120]
        raise AmcError(
            f"checkpoint {checkpoint} cannot be loaded ({type(exc).__name__}: {detail}): it is truncated or from "
            f"another search; {again}"
        ) from exc


def build_env(cfg: DictConfig, model: Any, data: Any, **options: Any) -> CompressionEnv:
    """The environment for ``model`` on ``data`` with the config's hardware, reward and budgets.

    Args:
        cfg: a ``train`` config.
        model: the model to compress.
        data: its data module.
        **options: env settings that replace the config's (see :func:`check_before_pretraining`).
    """
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
        **options,
    )


def build_callbacks(composed: DictConfig, settings: DictConfig | None = None) -> list[SearchCallback]:
    """The configurable search callbacks: every ``_target_`` entry of ``composed.callbacks``, built in order.

    Only a config composed from the package and the command line is built here, never one read from a
    file; a resumed search or a round of ``amc.finetune`` passes its run's saved ``callbacks`` node as
    ``settings``, whose plain values (``progress_bar`` ...) replace the composed ones.

    Args:
        composed: the composed config (its ``callbacks`` group).
        settings: the ``callbacks`` node of the config the run uses, when that was read from a file.
    """
    node = composed.get("callbacks") or OmegaConf.create({})
    plain = {k: v for k, v in (settings or {}).items() if not isinstance(v, DictConfig)}
    node = OmegaConf.merge(node, plain)
    return [instantiate(entry) for entry in node.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def check_before_pretraining(cfg: DictConfig, data: Any) -> None:
    """Build the environment on the untrained model, so budgets, bits and hardware limits fail before pretraining.

    Costs need no weights: the graph (with its routing and cost checks), the budget wall and the
    hardware model are the same for the untrained model. Its accuracy is not measured, one calibration
    batch is used and nothing is reconstructed or fine-tuned; the global RNG is left as it was, so the
    baseline trained next is the one trained without this check.
    """
    with torch.random.fork_rng(devices=[]):
        model = instantiate(arch_spec(cfg.model))
        check_model(model, data)
        check_channel_multiple(cfg, model, data)
        build_env(cfg, model, data, dense_accuracy=0.0, calibration_batches=1, reconstruction=False, finetune_batches=0)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Run (or resume) one search and write its outputs.

    Args:
        cfg: the composed ``train`` config.
    """
    t_start = time.perf_counter()
    check_config(cfg, "train")
    composed = cfg
    with claim_dir(run_dir_of(cfg), "search"):  # before anything is read or written there
        cfg, run_dir, checkpoint, replace = prepare_run_dir(cfg)
        instantiate(cfg.agent).validate(int(cfg.episodes))  # bad settings fail before any data is read
        data = instantiate(cfg.data)
        if needs_training(cfg, data):  # minutes of pretraining: first check what needs no weights
            check_before_pretraining(cfg, data)
        model, meta = load_or_pretrain(cfg, data)
        aside: list[Path | None] = []
        summary, _ = search(
            cfg,
            model,
            data,
            meta,
            run_dir,
            checkpoint,
            t_start,
            on_ready=lambda: aside.append(start_outputs(cfg, run_dir, replace)),
            callbacks=build_callbacks(composed, cfg.callbacks),
        )
        if aside and aside[0] is not None:
            shutil.rmtree(aside[0], ignore_errors=True)
    log.info("search finished in %.0f s:\n%s", summary["seconds"], summary["table"])
    log.info("outputs: %s", run_dir)
    return summary


def search(
    cfg: DictConfig,
    model: Any,
    data: Any,
    meta: dict[str, Any],
    run_dir: Path,
    checkpoint: Path | None = None,
    t_start: float | None = None,
    on_ready: Callable[[], Any] | None = None,
    callbacks: Sequence[SearchCallback] = (),
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
        on_ready: called once everything is built and validated, right before the first output is written.
        callbacks: the configurable callbacks (:func:`build_callbacks`), called before the run's outputs.
    """
    t_start = time.perf_counter() if t_start is None else t_start
    episodes = int(cfg.episodes)
    agent: Agent = instantiate(cfg.agent)
    agent.validate(episodes)
    check_channel_multiple(cfg, model, data)
    env = build_env(cfg, model, data)
    if checkpoint is not None:
        load_checkpoint_into(agent, env, checkpoint, episodes)
    if on_ready is not None:
        on_ready()

    callback_list, best_writer, tensorboard = run_outputs(cfg, agent, env, run_dir, callbacks)
    result = agent.search(env, episodes, callback_list)
    spent = sorted(callback_list.seconds.items(), key=lambda kv: -kv[1])
    log.info(
        "callbacks and outputs: %.2f s of the search (%s)",
        sum(callback_list.seconds.values()),
        ", ".join(f"{name} {s:.2f} s" for name, s in spent),
    )
    try:
        summary = summarize(cfg, result, env, data, meta, run_dir, best_writer, time.perf_counter() - t_start)
    except BaseException:
        tensorboard.finish()  # a failed summary still closes the writer (without the test numbers)
        raise
    tensorboard.finish({k: summary[k] for k in ("test_accuracy", "dense_accuracy", "dense_test_accuracy")})
    return summary, env


def run_outputs(
    cfg: DictConfig, agent: Agent, env: CompressionEnv, run_dir: Path, callbacks: Sequence[SearchCallback] = ()
) -> tuple[CallbackList, BestPolicyWriter, TensorBoardLogger]:
    """The callbacks a search runs: ``callbacks`` first, then the run's outputs in ``run_dir``.

    The outputs are ``episodes.csv``, ``best_policy.json``, TensorBoard (``tb/``, images every
    ``callbacks.image_every`` episodes) and checkpoints (every ``callbacks.checkpoint_every``). Returns
    the list (it times each callback: ``CallbackList.seconds``), the best-policy writer (the summary
    adds the test accuracy) and the TensorBoard logger (held open for the final metrics: call its
    ``finish``).

    Args:
        cfg: the run's config (``callbacks``, and the ``agent`` and ``env`` settings for TensorBoard's
            hparams table).
        agent: the search agent.
        env: the environment.
        run_dir: the run directory.
        callbacks: the configurable callbacks (:func:`build_callbacks`).
    """
    identity = run_identity(cfg, agent)
    dense = {**env.evaluator.dense, "accuracy": env.dense_accuracy}
    best_writer = BestPolicyWriter(run_dir / "best_policy.json", {**identity, "dense": dense})
    hparams = {
        **{k: v for k, v in identity.items() if k != "budget_targets"},
        **{f"budget_{k}": v for k, v in identity["budget_targets"].items()},
        **flat_settings(cfg.agent, "agent"),
        **flat_settings(cfg.env, "env"),
    }
    tensorboard = TensorBoardLogger(run_dir / "tb", int(cfg.callbacks.image_every), hparams, hold=True)
    callback_list = CallbackList(
        [
            *callbacks,
            EpisodeLog(run_dir / "episodes.csv"),
            best_writer,
            tensorboard,
            Checkpointer(run_dir / "checkpoints", int(cfg.callbacks.checkpoint_every), env),
        ]
    )
    return callback_list, best_writer, tensorboard


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
        compressed = env.compressor.apply(policy, channels_last=False).to(env.device)  # as amc.finetune builds it
        test_acc = accuracy(compressed, data.test_loader(), env.device)["top1"]
        best_writer.write(
            best, episodes_done=len(result.episodes), test_accuracy=test_acc, dense_test_accuracy=meta.get("test_top1")
        )
    from amc.plots import save_policy_plot

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
        "latency": ("latency", None, "s"),  # None: SI prefix per magnitude (amc.utils.si_unit)
        "energy": ("energy", None, "J"),
    }
    for key, (label, scale, unit) in units.items():
        if key not in dense or key not in best.metrics:
            continue
        target = best.budgets.get(key, {}).get("target")
        note = f"{best.ratios[key]:.3f}" + (f" (budget {target:g})" if target is not None else "")
        if scale is None:
            values = [format_si(dense[key], unit), format_si(best.metrics[key], unit, reference=dense[key])]
        else:
            values = [f"{dense[key] * scale:.4g} {unit}", f"{best.metrics[key] * scale:.4g} {unit}"]
        rows.append([label, *values, note])
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
def hydra_main(cfg: DictConfig) -> None:
    """Entry point of ``python -m amc.train``."""
    run_cli(train, cfg)


main = hydra_entry(hydra_main)  # python -m amc.X and the amc-X console script


if __name__ == "__main__":
    main()
