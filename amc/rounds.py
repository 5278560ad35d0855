"""Iterative compression (``python -m amc.finetune policy=<search run> rounds=R``): search -> fine-tune, R times.

Each round searches the previous round's fine-tuned model with the search run's settings
(:func:`amc.train.search`) under budgets that reach the run's targets geometrically
(:func:`round_budgets`), then fine-tunes the round's best policy (:func:`amc.training.fine_tune`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tabulate import tabulate
from torch import nn

from amc.checkpoint import config_hash
from amc.cli import progress_bar
from amc.compress import Policy
from amc.envs.budget import BudgetWall
from amc.errors import AmcError
from amc.evaluate import accuracy
from amc.export import load_compressed, save_compressed
from amc.graph import build_graph
from amc.outputs import STATE_FILE, cost_evaluator, export, print_report, trusted_targets
from amc.pretrain import arch_spec, load_or_pretrain
from amc.qat import prepare_qat, strip_qat
from amc.training import Recipe, fine_tune
from amc.utils import atomic_write_bytes, resolve_device

log = logging.getLogger(__name__)


def round_budgets(
    targets: dict[str, float], r: int, rounds: int, original: dict[str, float], current: dict[str, float]
) -> dict[str, float]:
    """Budgets of round ``r`` (1-based) of ``rounds``, as ratios of the current (already compressed) model.

    Round ``r`` brings each metric to ``target ** (r / rounds)`` of the original model (a geometric
    schedule that ends at the final target), expressed relative to the current model's float32 cost.

    Args:
        targets: final budget ratio per metric (of the original model).
        r: the round.
        rounds: how many rounds.
        original: the original model's float32 metrics.
        current: the current model's float32 metrics.
    """
    return {k: min(1.0, t ** (r / rounds) * original[k] / current[k]) for k, t in targets.items()}


def iterate(
    cfg: DictConfig, out: Path, search_cfg: DictConfig | None, start: Callable[[], None] | None = None
) -> dict[str, Any]:
    """``rounds=R``: search -> fine-tune -> search again on the fine-tuned model, R times.

    The search run that ``policy=`` points to defines each round's search (agent, env, reward, hardware,
    episodes; ``round_episodes`` overrides the episodes); its budgets are the final targets, reached
    geometrically (:func:`round_budgets`). Pruning composes across rounds; bits are searched afresh in
    every round on the fine-tuned weights. Each round writes ``round<r>/`` (the search's outputs, the
    fine-tuning state and ``compressed.pt`` relative to the original architecture); an interrupted run
    continues from the last finished round, mid-search checkpoint or fine-tuning epoch when restarted
    with the same run directory.

    Args:
        cfg: the finetune config, merged with the search's model/data/compressor options.
        out: the run directory.
        search_cfg: the search's config (``None``: not a search run, refused).
        start: called once the rounds are validated, before the first round writes anything.
    """
    from amc.agents.callbacks import latest_checkpoint
    from amc.train import build_callbacks, search

    rounds = int(cfg.rounds)
    if rounds < 1:
        raise AmcError(f"rounds={rounds} must be at least 1")
    if search_cfg is None:
        raise AmcError(
            "rounds>1 repeats a search, so policy= must be an amc.train run dir (its config.yaml names the agent "
            "and budgets); pass the run directory, not a bare policy JSON"
        )
    targets = {str(k): float(v) for k, v in (search_cfg.get("budgets") or {}).items() if v is not None}
    if not targets:
        raise AmcError("rounds>1 needs a budget in the search's config; search with budgets.<metric>=<ratio> first")
    if start is not None:
        start()
    device = resolve_device(cfg.device)
    seed = int(cfg.seed)
    recipe = Recipe.from_cfg(cfg)
    data = instantiate(cfg.data, batch_size=int(cfg.batch_size))
    dense, base_meta = load_or_pretrain(cfg, data)
    dense.to(device).eval()
    graph0 = build_graph(dense, data.input_shape)
    accelerator = instantiate(search_cfg.hardware) if search_cfg.get("hardware") is not None else None
    ev0 = cost_evaluator(graph0, accelerator)
    original = ev0.dense
    achieved = BudgetWall(ev0, targets)  # ratios of the original model
    topk = (1, 5) if data.num_classes > 5 else (1,)
    acc_dense = accuracy(dense, data.test_loader(), device, topk)
    episodes = int(cfg.round_episodes) if cfg.get("round_episodes") else int(search_cfg.episodes)
    with _episodes_as(cfg):  # each round's search runs `episodes`: its agent's schedule must fit them
        instantiate(search_cfg.agent).validate(episodes)

    model: nn.Module = copy.deepcopy(dense)
    kept_idx = [torch.arange(c) for c in graph0.full_channels()]  # the original channels ``model`` holds
    log_rows: list[dict[str, Any]] = []
    for r in range(1, rounds + 1):
        rdir = out / f"round{r}"
        done = rdir / "compressed.pt"
        if done.is_file() and (rdir / "round.json").is_file():
            model, payload = load_compressed(done, activation_quant=False, trust_targets=trusted_targets(cfg))
            kept_idx = [torch.as_tensor(k, dtype=torch.int64) for k in payload["keep"]]
            log_rows.append(json.loads((rdir / "round.json").read_text()))
            log.info("round %d/%d already finished (%s)", r, rounds, done)
            continue
        rdir.mkdir(parents=True, exist_ok=True)
        graph = build_graph(model.to(device).eval(), data.input_shape)
        if [u.name for u in graph.units] != [u.name for u in graph0.units] or len(graph.groups) != len(graph0.groups):
            raise AmcError(f"round {r}: the pruned model's layers no longer match the original; report this as a bug")
        budgets = round_budgets(targets, r, rounds, original, cost_evaluator(graph, accelerator).dense)
        rcfg = copy.deepcopy(search_cfg)
        OmegaConf.set_struct(rcfg, False)
        rcfg.budgets = {k: budgets.get(str(k)) for k in (search_cfg.budgets or {})}
        rcfg.episodes, rcfg.seed, rcfg.device, rcfg.output_dir = episodes, seed + r - 1, str(cfg.device), str(rdir)
        OmegaConf.save(rcfg, rdir / "config.yaml")
        checkpoint = latest_checkpoint(rdir) if (rdir / "checkpoints" / "latest.json").is_file() else None
        prev_test = acc_dense["top1"] if not log_rows else log_rows[-1]["test_after"]
        log.info("round %d/%d: budgets %s of the current model", r, rounds, budgets)
        callbacks = build_callbacks(cfg, search_cfg.get("callbacks"))  # never built from the search's file
        with _episodes_as(cfg):
            summary, env = search(rcfg, model, data, {"test_top1": prev_test}, rdir, checkpoint, callbacks=callbacks)
        policy = Policy.load(rdir / "best_policy.json", env.graph)
        compressed = env.compressor.apply(policy, channels_last=False)  # the deployable model: NCHW, as amc.finetune
        test_before = accuracy(compressed, data.test_loader(), device, topk)["top1"]
        history: list[dict[str, float]] = []
        if recipe.epochs > 0:
            prepare_qat(compressed, env.graph, policy.w_bits, bool(cfg.compress.symmetric))
            fingerprint = config_hash(policy.to_dict(env.graph), recipe.__dict__, seed, r)
            history = fine_tune(
                compressed,
                data,
                recipe,
                rdir / STATE_FILE,
                device,
                seed + r - 1,
                teacher=dense if recipe.kd else None,
                calibration=env.compressor.calibration,
                fingerprint=fingerprint,
                progress=progress_bar(cfg),
            )
            strip_qat(compressed)
        test_after = accuracy(compressed, data.test_loader(), device, topk)["top1"]
        kept_idx = [p[k.to(p.device)] for p, k in zip(kept_idx, env.compressor.keep(policy))]
        total = Policy([len(k) for k in kept_idx], list(policy.w_bits), list(policy.a_bits))
        ratios = achieved.ratios(total.kept, total.w_bits, total.a_bits)
        row = {
            "round": r,
            "budgets_of_current": budgets,
            "ratios_of_original": ratios,
            "search_accuracy": summary["best_accuracy"],
            "test_before": test_before,
            "test_after": test_after,
            "episodes": summary["episodes"],
            "history": history,
        }
        compressed.cpu().eval()
        save_compressed(
            done,
            compressed,
            arch_spec(cfg.model),
            data.input_shape,
            kept_idx,
            total.to_dict(graph0),
            {"baseline": base_meta.get("path"), "seed": seed, "round": r, "rounds": rounds},
        )
        atomic_write_bytes(rdir / "round.json", json.dumps(row, indent=1).encode())
        log_rows.append(row)
        log.info(
            "round %d/%d: test %.4f before, %.4f after fine-tuning; %s", r, rounds, test_before, test_after, ratios
        )
        model, _ = load_compressed(done, activation_quant=False, trust_targets=trusted_targets(cfg))

    final, payload = load_compressed(out / f"round{rounds}" / "compressed.pt", trust_targets=trusted_targets(cfg))
    keep = [torch.as_tensor(k, dtype=torch.int64) for k in payload["keep"]]
    policy = Policy.from_dict(payload["policy"], graph0)
    report = export(cfg, out, final, dense, graph0, policy, keep, data, payload["policy"], base_meta)
    report.update(
        {
            "policy_file": None,
            "search_run": str(Path(str(cfg.policy)).expanduser()),
            "rounds": log_rows,
            "recipe": recipe.__dict__,
            "compress": OmegaConf.to_container(cfg.compress, resolve=True),
            "history": [h for row in log_rows for h in row["history"]],
        }
    )
    report["accuracy"] = {
        "dense": acc_dense,
        "before_finetune": {"top1": log_rows[-1]["test_before"]},
        "after_finetune": accuracy(final, data.test_loader(), torch.device("cpu"), topk),
    }
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=2).encode())
    log.info(
        "rounds:\n%s",
        tabulate(
            [
                [
                    row["round"],
                    *(f"{row['ratios_of_original'][k]:.3f}" for k in targets),
                    f"{100 * row['search_accuracy']:.2f}",
                    f"{100 * row['test_before']:.2f}",
                    f"{100 * row['test_after']:.2f}",
                ]
                for row in log_rows
            ],
            headers=["round", *targets, "search acc (%)", "test before ft (%)", "test after ft (%)"],
            tablefmt="github",
        ),
    )
    print_report(report)
    return report


@contextlib.contextmanager
def _episodes_as(cfg: DictConfig) -> Iterator[None]:
    """Errors about a round's episode count name ``round_episodes`` when that key set it (the fix is there)."""
    try:
        yield
    except AmcError as exc:
        if not cfg.get("round_episodes"):
            raise
        raise AmcError(re.sub(r"\bepisodes(?==)|(?<=raise )episodes\b", "round_episodes", str(exc))) from None
