"""``python -m amc.finetune policy=<run dir or best_policy.json>``: fine-tune, export and verify a compressed model.

The path, top to bottom (:func:`finetune`):

1. the search's options (model, data, compressor settings, seed) from ``<run_dir>/config.yaml``
   (else ``.hydra/config.yaml``) when there is one, else from this config; a search config is built
   only if every ``_target_`` in it is trusted (:mod:`amc.trust`);
2. the cached pretrained baseline, the same calibration batches as the search, and
   :meth:`amc.compress.Compressor.apply` -- so fine-tuning starts from exactly the model the reward saw;
3. fine-tuning: SGD + cosine, quantization-aware (float shadow weights, re-quantized every step with a
   straight-through estimator; activations through the existing fake-quant hooks), optional knowledge
   distillation from the dense model, optional re-initialisation (training the pruned architecture
   from scratch). A resumable state is written atomically after every epoch;
4. export (:mod:`amc.export`): ``compressed.pt`` (reloadable with ``weights_only=True``), ``model.onnx``,
   ``report.json`` and a printed table; MACs/params measured on the reloaded file must equal the
   policy's closed-form costs.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tabulate import tabulate
from torch import nn
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from amc.checkpoint import config_hash, load_file, load_state
from amc.cli import hydra_entry, progress_bar, run_cli, run_tensorboard
from amc.compress import Compressor, Policy, read_policy_json
from amc.cost import FP32, CostModel
from amc.data import DataModule
from amc.envs.budget import BudgetWall, CostEvaluator
from amc.errors import AmcError
from amc.evaluate import accuracy
from amc.export import (
    activation_quantizers,
    check_cost,
    compare_onnx,
    cpu_latency,
    export_onnx,
    export_quantized_onnx,
    load_compressed,
    load_quantizer_state,
    measure_cost,
    qdq_model,
    quantizer_state,
    save_compressed,
)
from amc.graph import ModelGraph, build_graph
from amc.hardware import HardwareModel
from amc.pretrain import arch_spec, load_or_pretrain, train_epoch
from amc.quantize import quantize_weight
from amc.schema import check_config
from amc.trust import check_targets, targets_in, trusted_names
from amc.utils import atomic_torch_save, atomic_write_bytes, claim_dir, format_si, move_aside, resolve_device

log = logging.getLogger(__name__)

COMPRESS_KEYS = (
    "selection",
    "calibration_batches",
    "calibration_batch_size",
    "bn_recalibration",
    "reconstruction",
    "symmetric",
)
STATE_FILE = "finetune_state.pt"
QDQ_FILE = "model_qdq.onnx"  # the quantized graph (QuantizeLinear/DequantizeLinear), beside the float model.onnx


@dataclass
class Recipe:
    """How to fine-tune.

    Attributes:
        epochs: passes over the training data (0: export the compressed model as is).
        lr: peak SGD learning rate (cosine decay to 0).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        nesterov: Nesterov momentum.
        label_smoothing: cross-entropy label smoothing.
        kd: distil from the dense model.
        kd_temperature: softmax temperature of distillation.
        kd_alpha: weight of the distillation term (1 - alpha on the labels).
        from_scratch: re-initialise the pruned architecture instead of starting from the pruned weights.
    """

    epochs: int = 5
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    label_smoothing: float = 0.0
    kd: bool = False
    kd_temperature: float = 4.0
    kd_alpha: float = 0.9
    from_scratch: bool = False

    @classmethod
    def from_cfg(cls, cfg: DictConfig) -> Recipe:
        """The recipe keys of the top level of a ``finetune`` config."""
        fields = cls.__dataclass_fields__
        return cls(**{k: type(getattr(cls, k))(cfg[k]) for k in fields if k in cfg})


class WeightFakeQuant(nn.Module):
    """Parametrization: the layer sees quantized weights, gradients reach the float shadow weights (STE).

    Args:
        bits: weight bits.
        symmetric: symmetric or asymmetric quantization (as the search used).
    """

    def __init__(self, bits: int, symmetric: bool = True) -> None:
        super().__init__()
        self.bits, self.symmetric = int(bits), bool(symmetric)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (quantize_weight(w.detach(), self.bits, self.symmetric) - w).detach()


def prepare_qat(model: nn.Module, graph: ModelGraph, w_bits: list[int], symmetric: bool) -> None:
    """Make every unit with quantized weights re-quantize its float weights on each forward pass.

    Args:
        model: the compressed model (module names as in ``graph``).
        graph: the dense model's graph.
        w_bits: weight bits per unit.
        symmetric: quantization mode.
    """
    modules = dict(model.named_modules())
    for u, b in zip(graph.units, w_bits):
        if int(b) < FP32:
            parametrize.register_parametrization(modules[u.name], "weight", WeightFakeQuant(int(b), symmetric))


def strip_qat(model: nn.Module) -> None:
    """Replace every weight parametrization by its (quantized) value, leaving plain parameters."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def kd_loss(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    temperature: float = 4.0,
    alpha: float = 0.9,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Hinton et al. (2015) distillation: ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE``.

    Args:
        logits: student logits.
        teacher_logits: teacher logits (``None``: plain cross-entropy).
        labels: class labels.
        temperature: softening temperature.
        alpha: weight of the distillation term.
        label_smoothing: of the cross-entropy term.
    """
    ce = nn.functional.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    if teacher_logits is None:
        return ce
    t = float(temperature)
    kl = nn.functional.kl_div(
        nn.functional.log_softmax(logits / t, dim=1),
        nn.functional.log_softmax(teacher_logits.detach() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * t * t * kl + (1.0 - alpha) * ce


def reinitialise(model: nn.Module) -> None:
    """Fresh weights for every layer (``reset_parameters``; BatchNorm statistics too), drawn from torch's RNG."""
    for m in model.modules():
        if hasattr(m, "reset_parameters") and not isinstance(m, WeightFakeQuant):
            m.reset_parameters()


def calibrate_activations(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-measure the ranges of ``model``'s activation quantizers on ``batches`` (eval mode)."""
    qs = list(activation_quantizers(model).values())
    if not qs:
        return
    for q in qs:
        q.max_abs, q.signed, q.calibrating = 0.0, False, True
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
    model.train(was_training)
    for q in qs:
        q.calibrating = False


def train(
    model: nn.Module,
    data: DataModule,
    recipe: Recipe,
    state_path: Path,
    device: torch.device,
    seed: int,
    teacher: nn.Module | None = None,
    calibration: list[torch.Tensor] | None = None,
    fingerprint: str = "",
    progress: bool = True,
    writer: Any | None = None,
) -> list[dict[str, float]]:
    """Fine-tune ``model`` in place, resuming from ``state_path`` when it holds a finished epoch.

    Args:
        model: the compressed model, prepared for QAT (:func:`prepare_qat`).
        data: the data module (its ``train_loader``).
        recipe: the recipe.
        state_path: the resumable state, written after every epoch.
        device: where to train.
        seed: seeds each epoch's shuffling.
        teacher: the dense model for distillation (when ``recipe.kd``).
        calibration: batches to re-measure activation ranges on after each epoch when training from
            scratch (ranges taken on random weights would be meaningless).
        fingerprint: identifies policy + recipe; a state with another one is refused.
        progress: show progress bars (the epoch lines are logged either way).
        writer: a TensorBoard writer for ``finetune/train_loss`` and ``finetune/lr`` per epoch.
    """
    epochs = int(recipe.epochs)
    steps = epochs * len(data.train_loader(seed=0))
    opt = torch.optim.SGD(
        model.parameters(),
        lr=recipe.lr,
        momentum=recipe.momentum,
        weight_decay=recipe.weight_decay,
        nesterov=recipe.nesterov and recipe.momentum > 0,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    start, history = 0, []
    if state_path.exists():
        state = load_file(state_path)
        if state.get("fingerprint") != fingerprint:
            raise AmcError(
                f"{state_path} belongs to another policy or recipe; delete it or fine-tune into another run dir"
            )
        try:
            load_state(model, state["model"], str(state_path))
            load_quantizer_state(model, state["quantizers"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start, history = int(state["epoch"]), list(state["history"])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, ValueError) as exc:
            raise AmcError(f"fine-tuning state {state_path} is unusable ({exc}); delete it to start over") from exc
        log.info("resuming fine-tuning from epoch %d/%d (%s)", start, epochs, state_path)
    if teacher is not None:
        teacher.to(device).eval()

    def step_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(x) if teacher is not None else None
        return kd_loss(model(x), t_logits, y, recipe.kd_temperature, recipe.kd_alpha, recipe.label_smoothing)

    epochs_bar = tqdm(
        range(start, epochs), desc="finetune", initial=start, total=epochs, dynamic_ncols=True, disable=not progress
    )
    for epoch in epochs_bar:
        loader = data.train_loader(seed=seed * 1000 + epoch)
        t0 = time.perf_counter()
        loss = train_epoch(model, loader, opt, sched, device, step_loss, f"epoch {epoch + 1}/{epochs}", progress)
        if recipe.from_scratch and calibration:
            calibrate_activations(model, calibration)
        history.append({"epoch": epoch + 1, "train_loss": loss, "seconds": time.perf_counter() - t0})
        log.info("epoch %d/%d: train loss %.4f", epoch + 1, epochs, history[-1]["train_loss"])
        if writer is not None:
            writer.add_scalar("finetune/train_loss", loss, epoch + 1)
            writer.add_scalar("finetune/lr", sched.get_last_lr()[0], epoch + 1)
        atomic_torch_save(
            {
                "fingerprint": fingerprint,
                "model": model.state_dict(),
                "quantizers": quantizer_state(model),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "torch_rng": torch.get_rng_state(),
            },
            state_path,
        )
    model.eval()
    return history


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
    if search.get("hardware") is not None:  # budgets and the report on the accelerator the search targeted
        merged.hardware = search.hardware
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


def trusted_targets(cfg: DictConfig) -> tuple[str, ...]:
    """What a compressed file of this run may name: the command line's ``trust_targets`` and the model's targets.

    ``cfg.model`` came from the command line or from a search config that passed :func:`search_config`'s
    check, and it has been built already; a ``compressed.pt`` of this run (or a round of an interrupted
    one) naming anything else is refused.

    Args:
        cfg: the finetune config, merged with the search's options.
    """
    return (*trusted_names(cfg.get("trust_targets")), *targets_in(cfg.model))


def _sim(hw: HardwareModel | None, cost_model: CostModel, kept: list[int], w: list[int], a: list[int]) -> dict:
    if hw is None:
        return {"latency_s": None, "energy_j": None}
    c_in, c_out = cost_model.unit_channels(kept)
    mc = hw.model_cost([int(c) for c in c_in], [int(c) for c in c_out], list(w), list(a))
    return {"latency_s": mc.latency_s, "energy_j": mc.energy_j}


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
        history = train(
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
    ratios = BudgetWall(_evaluator(graph, accelerator), targets).ratios(policy.kept, policy.w_bits, policy.a_bits)
    over = [f"{k} {ratios[k]:.4f} > {t:g}" for k, t in targets.items() if ratios[k] > t + 1e-9]
    if over:
        raise AmcError(
            f"policy {path} breaks its own budgets ({', '.join(over)}): it was edited or belongs to other "
            "hardware; use the best_policy.json the search wrote"
        )


def _evaluator(graph: ModelGraph, accelerator: Any | None) -> CostEvaluator:
    hw = HardwareModel(accelerator, graph.units) if accelerator is not None else None
    return CostEvaluator(CostModel(graph), hw)


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
    from amc.train import search

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
    ev0 = _evaluator(graph0, accelerator)
    original = ev0.dense
    achieved = BudgetWall(ev0, targets)  # ratios of the original model
    topk = (1, 5) if data.num_classes > 5 else (1,)
    acc_dense = accuracy(dense, data.test_loader(), device, topk)
    episodes = int(cfg.round_episodes) if cfg.get("round_episodes") else int(search_cfg.episodes)

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
        budgets = round_budgets(targets, r, rounds, original, _evaluator(graph, accelerator).dense)
        rcfg = copy.deepcopy(search_cfg)
        OmegaConf.set_struct(rcfg, False)
        rcfg.budgets = {k: budgets.get(str(k)) for k in (search_cfg.budgets or {})}
        rcfg.episodes, rcfg.seed, rcfg.device, rcfg.output_dir = episodes, seed + r - 1, str(cfg.device), str(rdir)
        OmegaConf.save(rcfg, rdir / "config.yaml")
        checkpoint = latest_checkpoint(rdir) if (rdir / "checkpoints" / "latest.json").is_file() else None
        prev_test = acc_dense["top1"] if not log_rows else log_rows[-1]["test_after"]
        log.info("round %d/%d: budgets %s of the current model", r, rounds, budgets)
        summary, env = search(rcfg, model, data, {"test_top1": prev_test}, rdir, checkpoint)
        policy = Policy.load(rdir / "best_policy.json", env.graph)
        compressed = env.compressor.apply(policy)
        test_before = accuracy(compressed, data.test_loader(), device, topk)["top1"]
        history: list[dict[str, float]] = []
        if recipe.epochs > 0:
            prepare_qat(compressed, env.graph, policy.w_bits, bool(cfg.compress.symmetric))
            fingerprint = config_hash(policy.to_dict(env.graph), recipe.__dict__, seed, r)
            history = train(
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


def export(
    cfg: DictConfig,
    out: Path,
    model: nn.Module,
    dense: nn.Module,
    graph: ModelGraph,
    policy: Policy,
    keep: list[torch.Tensor],
    data: DataModule,
    policy_dict: dict[str, Any],
    base_meta: dict[str, Any],
) -> dict[str, Any]:
    """Save the compressed model, reload it, check its costs and measure it (see :func:`finetune`)."""
    model.cpu().eval()
    dense.cpu().eval()
    path = out / "compressed.pt"
    save_compressed(
        path,
        model,
        arch_spec(cfg.model),
        data.input_shape,
        keep,
        policy_dict,
        {"baseline": base_meta.get("path"), "seed": int(cfg.seed)},
    )
    reloaded, _ = load_compressed(path, trust_targets=trusted_targets(cfg))
    x = next(iter(data.test_loader()))[0][:8]
    with torch.no_grad():
        if not torch.equal(reloaded(x), model(x)):
            raise AmcError(f"{path} does not reproduce the fine-tuned model's outputs; report this as a bug")
    cost_model = CostModel(graph)
    expected = cost_model.cost(policy.kept, policy.w_bits, policy.a_bits)
    measured = measure_cost(reloaded, data.input_shape)
    check_cost(measured, {"macs": expected.macs, "params": expected.params}, f"exported model {path}")
    float_model, _ = load_compressed(path, activation_quant=False, trust_targets=trusted_targets(cfg))
    onnx_path = out / "model.onnx"
    onnx_ok = bool(cfg.export.onnx) and export_onnx(float_model, onnx_path, data.input_shape)
    qdq_path, qdq = out / QDQ_FILE, None
    quantized = any(int(u["w_bits"]) < FP32 or int(u["a_bits"]) < FP32 for u in policy_dict["units"])
    if onnx_ok and quantized and bool(cfg.export.get("quantized_onnx", True)):
        symmetric = bool(cfg.compress.symmetric)
        graph_model = qdq_model(float_model, policy_dict["units"], quantizer_state(reloaded), symmetric)
        try:
            exported = export_quantized_onnx(graph_model, qdq_path, data.input_shape, policy_dict)
        except Exception as exc:  # noqa: BLE001 -- an exporter limit must not cost the fine-tuned model
            detail = " ".join(str(exc).split())[:160]
            log.warning(
                "quantized ONNX export failed (%s: %s); compressed.pt and model.onnx are fine",
                type(exc).__name__,
                detail,
            )
            exported = False
        if exported:
            batches = cfg.export.get("compare_batches")
            loader = data.test_loader()
            test = loader if batches is None else itertools.islice(loader, int(batches))
            qdq = {"path": str(qdq_path), **(compare_onnx(qdq_path, reloaded, test) or {})}

    hw = None
    if cfg.get("hardware") is not None:
        hw = HardwareModel(instantiate(cfg.hardware), graph.units)
    n = len(graph.units)
    dense_kept = graph.full_channels()
    dense_cost = cost_model.dense
    repeats = int(cfg.export.latency_repeats)
    return {
        "files": {
            "model": str(path),
            "onnx": str(onnx_path) if onnx_ok else None,
            "onnx_qdq": str(qdq_path) if qdq else None,
        },
        "onnx_qdq": qdq,
        "hardware": str(cfg.hardware.get("name", cfg.hardware.get("_target_"))) if hw is not None else None,
        "dense": {
            "macs": dense_cost.macs,
            "params": dense_cost.params,
            "size_bits": dense_cost.size_bits,
            **_sim(hw, cost_model, dense_kept, [FP32] * n, [FP32] * n),
            "cpu_latency_s": cpu_latency(dense, data.input_shape, repeats),
        },
        "compressed": {
            "macs": measured["macs"],
            "params": measured["params"],
            "size_bits": expected.size_bits,
            "bitops": expected.bitops,
            **_sim(hw, cost_model, policy.kept, policy.w_bits, policy.a_bits),
            "cpu_latency_s": cpu_latency(float_model, data.input_shape, repeats),
        },
    }


def print_report(report: dict[str, Any]) -> None:
    """Log the before/after table of a fine-tuning report and where the files are (console and finetune.log)."""
    acc = report["accuracy"]
    d, c = report["dense"], report["compressed"]

    def fmt(v: float | None, scale: float = 1.0, spec: str = ".3f") -> str:
        return "-" if v is None else format(v * scale, spec)

    rows = [
        [
            "test top-1 (%)",
            fmt(acc["dense"]["top1"], 100, ".2f"),
            fmt(acc["before_finetune"]["top1"], 100, ".2f"),
            fmt(acc["after_finetune"]["top1"], 100, ".2f"),
        ],
        ["MACs (M)", fmt(d["macs"], 1e-6), fmt(c["macs"], 1e-6), fmt(c["macs"], 1e-6)],
        ["params (k)", fmt(d["params"], 1e-3), fmt(c["params"], 1e-3), fmt(c["params"], 1e-3)],
        ["size (KiB)", fmt(d["size_bits"], 1 / 8192), fmt(c["size_bits"], 1 / 8192), fmt(c["size_bits"], 1 / 8192)],
    ]
    for label, key, unit in (
        (f"sim. latency ({report['hardware']})", "latency_s", "s"),
        (f"sim. energy ({report['hardware']})", "energy_j", "J"),
        ("CPU latency, batch 1", "cpu_latency_s", "s"),
    ):
        rows.append([label, *(format_si(v, unit, reference=d[key]) for v in (d[key], c[key], c[key]))])
    table = tabulate(rows, headers=["", "original", "compressed", "fine-tuned"], tablefmt="github")
    files = f"compressed model: {report['files']['model']}" + (
        f", ONNX: {report['files']['onnx']}" if report["files"]["onnx"] else ""
    )
    qdq = report.get("onnx_qdq") or {}
    if qdq.get("onnx_top1") is not None:
        files += (
            f"\nquantized ONNX {qdq['path']}: test top-1 {100 * qdq['onnx_top1']:.2f}% in onnxruntime vs "
            f"{100 * qdq['fake_quant_top1']:.2f}% fake-quantized ({100 * qdq['top1_diff']:+.2f} points; "
            f"{100 * qdq['agreement']:.2f}% same predictions)"
        )
    elif qdq:
        files += f"\nquantized ONNX {qdq['path']} (not compared: onnxruntime is not installed)"
    log.info("fine-tuning finished:\n%s\n%s", table, files)


@hydra.main(version_base="1.3", config_path="pkg://amc.conf", config_name="finetune")
def hydra_main(cfg: DictConfig) -> None:
    """Entry point of ``python -m amc.finetune``."""
    run_cli(finetune, cfg)


main = hydra_entry(hydra_main)  # python -m amc.X and the amc-X console script


if __name__ == "__main__":
    main()
