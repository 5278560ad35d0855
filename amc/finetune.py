"""``python -m amc.finetune policy=<run dir or best_policy.json>``: fine-tune, export and verify a compressed model.

The path, top to bottom (:func:`finetune`):

1. the search's options (model, data, compressor settings, seed) from ``<run_dir>/config.yaml``
   (else ``.hydra/config.yaml``) when there is one, else from this config; a search config is built
   only if every ``_target_`` in it is trusted (:mod:`amc.trust`);
2. the cached pretrained baseline, the same calibration batches as the search, and
   :meth:`amc.compress.Compressor.apply` -- so fine-tuning starts from exactly the model the reward saw;
3. fine-tuning (:func:`amc.training.fine_tune`): SGD + cosine, quantization-aware (:mod:`amc.qat`: float
   shadow weights, re-quantized every step with a straight-through estimator; activations through the
   existing fake-quant hooks), optional knowledge distillation from the dense model, optional
   re-initialisation (training the pruned architecture from scratch). A resumable state is written
   atomically after every epoch;
4. export (:func:`amc.outputs.export`): ``compressed.pt`` (reloadable with ``weights_only=True``),
   ``model.onnx``, ``report.json`` and a printed table; MACs/params measured on the reloaded file must
   equal the policy's closed-form costs.

``rounds=R`` repeats search -> fine-tune R times instead (:mod:`amc.rounds`).
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from amc.checkpoint import config_hash
from amc.cli import command_line_keys, hydra_entry, progress_bar, run_cli, run_tensorboard
from amc.compress import Compressor, Policy, read_policy_json
from amc.envs.budget import BudgetWall
from amc.errors import AmcError
from amc.evaluate import accuracy
from amc.graph import ModelGraph, build_graph
from amc.outputs import QDQ_FILE, STATE_FILE, cost_evaluator, export, print_report
from amc.pretrain import load_or_pretrain
from amc.qat import calibrate_activations, prepare_qat, reinitialise, strip_qat
from amc.rounds import iterate
from amc.schema import check_config
from amc.training import Recipe, fine_tune
from amc.trust import check_targets
from amc.utils import atomic_write_bytes, claim_dir, move_aside, resolve_device

log = logging.getLogger(__name__)

COMPRESS_KEYS = (
    "selection",
    "calibration_batches",
    "calibration_batch_size",
    "bn_recalibration",
    "reconstruction",
    "symmetric",
)


SEARCH_CONFIGS = ("config.yaml", ".hydra/config.yaml")  # amc.train's resolved copy first, then Hydra's


def search_config(policy_path: Path, trust_targets: Iterable[str] | None = ()) -> DictConfig | None:
    """The config of the ``amc.train`` run that wrote ``policy_path`` (``None`` when there is none beside it).

    Its model, data, hardware, agent, env and reward are built later, so every ``_target_`` in it must be
    trusted (:mod:`amc.trust`); the file's own ``trust_targets`` does not count.

    Args:
        policy_path: a ``best_policy.json``.
        trust_targets: ``_target_`` names to build besides amc's own components (the command line's).
    """
    for name in SEARCH_CONFIGS:
        path = policy_path.parent / name
        if not path.is_file():
            continue
        try:
            loaded = OmegaConf.load(path)
        except Exception as exc:  # noqa: BLE001 -- any YAML/OmegaConf failure means the file is unusable
            raise AmcError(f"search config {path} is unreadable ({type(exc).__name__}); restore or delete it") from exc
        if isinstance(loaded, DictConfig) and "env" in loaded and "agent" in loaded and "model" in loaded:
            check_targets(loaded, path, trust_targets)
            log.info("model/data/compressor options from the search config %s", path)
            return loaded
    return None


def _hardware_overrides() -> list[str]:
    """The command line's overrides of the ``hardware`` group or its keys (empty outside Hydra)."""
    return [k for k in command_line_keys() if k == "hardware" or k.startswith("hardware.")]


def _hardware_chosen() -> bool:
    """Whether the command line picked a preset (``hardware=<name>``) or dropped it (``~hardware``)."""
    return "hardware" in _hardware_overrides()


def _hardware_keys_set(cfg: DictConfig) -> DictConfig:
    """The ``hardware.<key>=...`` values the command line set, to apply on top of the search's preset."""
    keys = [k.split(".", 1)[1] for k in _hardware_overrides() if "." in k]
    out = OmegaConf.create({})
    for key in keys:
        OmegaConf.update(out, key, OmegaConf.select(cfg.hardware, key), force_add=True)
    return out


def resolve_policy(cfg: DictConfig) -> tuple[Path, DictConfig, DictConfig | None]:
    """The policy file, the config to take model/data/compressor options from, and the search's config.

    ``policy`` may be a search run directory (``best_policy.json`` inside) or a JSON file; the search
    config beside the policy (``config.yaml`` that ``amc.train`` writes, else ``.hydra/config.yaml``)
    wins for ``model``, ``data``, ``pretrain``, ``seed``, ``paths.cache_dir`` and the compressor options, so the start
    equals what the reward saw.

    Args:
        cfg: the composed ``finetune`` config.
    """
    if not cfg.get("policy"):
        raise AmcError("no policy given; run `python -m amc.finetune policy=<search run dir or best_policy.json>`")
    path = Path(str(cfg.policy)).expanduser()
    if path.is_dir():
        path = path / "best_policy.json"
    if not path.is_file():
        raise AmcError(f"policy {path} does not exist; point policy= to a search run dir or a best_policy.json")
    search = search_config(path, cfg.get("trust_targets"))
    if search is None:
        log.info("no search config beside %s: model/data/compressor options come from this config", path)
        return path, cfg, None
    merged = copy.deepcopy(cfg)
    OmegaConf.set_struct(merged, False)
    for key in ("model", "data", "pretrain"):
        if key in search:
            merged[key] = search[key]
    if "seed" in search:
        merged.seed = search.seed
    if search.get("hardware") is not None and not _hardware_chosen():
        # budgets and the report on the accelerator the search targeted, unless the command line chose one
        # (hardware=<preset>, or ~hardware for none); hardware.<key>=... still applies to the search's preset
        merged.hardware = OmegaConf.merge(search.hardware, _hardware_keys_set(cfg))
    cache_dir = (search.get("paths") or {}).get("cache_dir")
    if cache_dir is not None:  # the baseline the search compressed, wherever that run kept it
        merged.paths.cache_dir = cache_dir
    env = search.get("env") or {}
    for key in COMPRESS_KEYS:
        for node in (env, search):
            if key in node:
                merged.compress[key] = node[key]
                break
    return path, merged, search


def finetune(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Apply a searched policy, fine-tune, export and verify; returns the report.

    Args:
        cfg: the composed ``finetune`` config.
        out_dir: the run directory (Hydra's output dir under ``python -m``); resuming needs the same one.
    """
    check_config(cfg, "finetune")
    out = Path(out_dir if out_dir is not None else (cfg.get("resume") or HydraConfig.get().runtime.output_dir))
    with claim_dir(out, "fine-tuning"):  # before anything is read or written there
        report, aside = _finetune(cfg, out)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    return report


def _outputs(out: Path) -> list[str]:
    """What a fine-tuning wrote into ``out`` (moved aside by ``overwrite=true`` once the new run is valid)."""
    files = ["report.json", "compressed.pt", "model.onnx", QDQ_FILE, "tb", STATE_FILE]
    return [*files, *(p.name for p in out.glob("round*"))]


def _finetune(cfg: DictConfig, out: Path) -> tuple[dict[str, Any], Path | None]:
    """:func:`finetune` in a claimed run directory; returns the report and where replaced outputs were moved."""
    replace = (out / "report.json").is_file()
    if replace and not cfg.get("overwrite", False):
        raise AmcError(
            f"{out} already holds a finished fine-tuning (report.json); write elsewhere (hydra.run.dir=...) "
            "or pass overwrite=true to redo it"
        )
    policy_path, cfg, search = resolve_policy(cfg)
    check_config(cfg, "finetune")  # model/data/pretrain may now come from the search's config.yaml
    read_policy_json(policy_path)  # a malformed file fails before any baseline is trained
    aside: list[Path | None] = [None]

    def start() -> None:  # everything is valid: only now move the previous outputs aside
        if replace:
            aside[0] = move_aside(out, _outputs(out))

    if int(cfg.get("rounds", 1)) != 1:
        return iterate(cfg, out, search, start), aside[0]
    device = resolve_device(cfg.device)
    seed = int(cfg.seed)
    recipe = Recipe.from_cfg(cfg)
    cc = cfg.compress

    data = instantiate(cfg.data, batch_size=int(cfg.batch_size))
    dense, base_meta = load_or_pretrain(cfg, data)
    dense.to(device).eval()
    graph = build_graph(dense, data.input_shape)
    policy = Policy.load(policy_path, graph)
    accelerator = instantiate(cfg.hardware) if cfg.get("hardware") is not None else None
    check_policy_budgets(policy_path, policy, graph, accelerator)
    start()
    calib = [
        x.to(device)
        for x, _ in data.calibration_batches(int(cc.calibration_batches), int(cc.calibration_batch_size), seed)
    ]
    compressor = Compressor(
        dense,
        graph,
        selection=str(cc.selection),
        calibration=calib,
        bn_recalibration=bool(cc.bn_recalibration),
        reconstruction=bool(cc.reconstruction),
        symmetric=bool(cc.symmetric),
        seed=seed,
    )
    model = compressor.apply(policy)
    keep = compressor.keep(policy)
    topk = (1, 5) if data.num_classes > 5 else (1,)
    acc_dense = accuracy(dense, data.test_loader(), device, topk)
    acc_before = accuracy(model, data.test_loader(), device, topk)
    log.info("test top-1: dense %.4f, compressed before fine-tuning %.4f", acc_dense["top1"], acc_before["top1"])

    policy_dict = policy.to_dict(graph)
    fingerprint = config_hash(policy_dict, OmegaConf.to_container(cfg.compress, resolve=True), recipe.__dict__, seed)
    history: list[dict[str, float]] = []
    writer = run_tensorboard(out / "tb")  # finetune/* tags
    writer.add_scalar("finetune/test_top1", acc_before["top1"], 0)
    writer.add_scalar("finetune/dense_test_top1", acc_dense["top1"], 0)
    if recipe.epochs > 0:
        if recipe.from_scratch:
            reinitialise(model)
            calibrate_activations(model, calib)
        prepare_qat(model, graph, policy.w_bits, bool(cc.symmetric))
        history = fine_tune(
            model,
            data,
            recipe,
            out / STATE_FILE,
            device,
            seed,
            teacher=dense if recipe.kd else None,
            calibration=calib,
            fingerprint=fingerprint,
            progress=progress_bar(cfg),
            writer=writer,
        )
        strip_qat(model)
    acc_after = accuracy(model, data.test_loader(), device, topk)
    writer.add_scalar("finetune/test_top1", acc_after["top1"], recipe.epochs)
    writer.add_scalar("finetune/test_loss", acc_after["loss"], recipe.epochs)
    writer.close()

    report = export(cfg, out, model, dense, graph, policy, keep, data, policy_dict, base_meta)
    report.update(
        {
            "policy_file": str(policy_path),
            "recipe": recipe.__dict__,
            "compress": OmegaConf.to_container(cfg.compress, resolve=True),
            "history": history,
        }
    )
    report["accuracy"] = {"dense": acc_dense, "before_finetune": acc_before, "after_finetune": acc_after}
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=2).encode())
    print_report(report)
    return report, aside[0]


def check_policy_budgets(path: Path, policy: Policy, graph: ModelGraph, accelerator: Any | None) -> None:
    """Refuse a policy file whose recorded budgets its own configuration does not meet (edited by hand?).

    Args:
        path: the ``best_policy.json`` (its ``budgets``: ``{metric: {"target": ratio, ...}}``).
        policy: the policy read from it.
        graph: the dense model's graph.
        accelerator: the hardware preset (needed to check latency/energy budgets).
    """
    try:
        budgets = json.loads(path.read_text()).get("budgets") or {}
        targets = {str(k): float(v["target"]) for k, v in budgets.items()}
    except (OSError, json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise AmcError(f"{path} has malformed budgets ({type(exc).__name__}); use a best_policy.json from amc") from exc
    if accelerator is None:
        targets = {k: v for k, v in targets.items() if k not in ("latency", "energy")}
    if not targets:
        return
    ratios = BudgetWall(cost_evaluator(graph, accelerator), targets).ratios(policy.kept, policy.w_bits, policy.a_bits)
    over = [f"{k} {ratios[k]:.4f} > {t:g}" for k, t in targets.items() if ratios[k] > t + 1e-9]
    if over:
        raise AmcError(
            f"policy {path} breaks its own budgets ({', '.join(over)}): it was edited or belongs to other "
            "hardware; use the best_policy.json the search wrote"
        )


@hydra.main(version_base="1.3", config_path="pkg://amc.conf", config_name="finetune")
def hydra_main(cfg: DictConfig) -> None:
    """Entry point of ``python -m amc.finetune``."""
    run_cli(finetune, cfg)


main = hydra_entry(hydra_main)  # python -m amc.X and the amc-X console script


if __name__ == "__main__":
    main()
