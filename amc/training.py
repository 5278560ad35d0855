"""One training loop for pretraining and fine-tuning: SGD with per-step cosine decay, resumable after every epoch.

:func:`fit` trains a model for a :class:`Recipe`'s epochs with a given loss (cross-entropy for
:mod:`amc.pretrain`, optionally distillation, :func:`kd_loss`, for :mod:`amc.finetune` and the
rounds of :mod:`amc.rounds`), writing a resumable state atomically after every epoch; a restarted run
continues from the last finished epoch with the same batches (each epoch's shuffling has its own seed).
:func:`fine_tune` is the fine-tuning of a compressed model on top of it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn
from tqdm.auto import tqdm

from amc.checkpoint import load_file, load_state
from amc.data import DataModule
from amc.errors import AmcError
from amc.export import load_quantizer_state, quantizer_state
from amc.qat import calibrate_activations
from amc.utils import atomic_torch_save, bar_disable

log = logging.getLogger(__name__)


@dataclass
class Recipe:
    """A training recipe: SGD with momentum and a per-step cosine decay of the learning rate to 0.

    :mod:`amc.pretrain` reads the SGD fields from ``pretrain.*``; :mod:`amc.finetune` reads all of them
    from its config's top level (the defaults are fine-tuning's).

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
        """The recipe keys present in ``cfg`` (the top level of a ``finetune`` config, or ``pretrain``)."""
        fields = cls.__dataclass_fields__
        return cls(**{k: type(getattr(cls, k))(cfg[k]) for k in fields if k in cfg})


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


def train_epoch(
    model: nn.Module,
    loader: Any,
    opt: torch.optim.Optimizer,
    sched: Any,
    device: torch.device,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    desc: str,
    progress: bool = True,
) -> float:
    """One epoch of SGD with a per-step LR schedule; returns the mean training loss.

    Args:
        model: the network (put in train mode).
        loader: (inputs, labels) batches.
        opt: the optimizer.
        sched: a scheduler stepped after every batch.
        device: where to train.
        loss_fn: ``loss_fn(inputs, labels)`` runs the model and returns the loss (cross-entropy, KD...).
        desc: progress-bar label.
        progress: show the progress bar.
    """
    model.train()
    total, n = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=bar_disable(progress))
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = loss_fn(x, y)
        if not torch.isfinite(loss.detach()):
            raise AmcError(
                f"training loss became {float(loss.detach())} ({desc}); lower the learning rate and run again"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        total += float(loss.detach()) * y.numel()
        n += y.numel()
        bar.set_postfix(loss=f"{total / n:.3f}")
    return total / max(n, 1)


def fit(
    model: nn.Module,
    data: DataModule,
    recipe: Recipe,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    state_path: Path,
    device: torch.device,
    seed: int,
    name: str,
    activity: str,
    progress: bool = True,
    writer: Any | None = None,
    fingerprint: str | None = None,
    quantizers: bool = False,
    after_epoch: Callable[[], None] | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` in place for ``recipe.epochs``, resuming from ``state_path`` when it holds a finished epoch.

    Args:
        model: the network, on ``device``.
        data: the data module (its ``train_loader``).
        recipe: the SGD recipe (``epochs``, ``lr``, ``momentum``, ``weight_decay``, ``nesterov``).
        loss_fn: ``loss_fn(inputs, labels)`` runs the model and returns the loss.
        state_path: the resumable state, written after every epoch.
        device: where to train.
        seed: epoch ``e`` shuffles with seed ``seed * 1000 + e``.
        name: progress-bar label and TensorBoard tag prefix (``pretrain``, ``finetune``).
        activity: what the log lines and errors call it (``pretraining``, ``fine-tuning``).
        progress: show progress bars (the epoch lines are logged either way).
        writer: a TensorBoard writer for ``<name>/train_loss`` and ``<name>/lr`` per epoch.
        fingerprint: identifies what is trained (policy + recipe); a state with another one is refused
            (``None``: not stored or checked).
        quantizers: store and restore the activation quantizers' ranges with the state (a compressed model).
        after_epoch: called after every epoch, before the state is written.

    Returns:
        One ``{"epoch", "train_loss", "seconds"}`` row per epoch, the resumed ones included.
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
        if fingerprint is not None and state.get("fingerprint") != fingerprint:
            raise AmcError(
                f"{state_path} belongs to another policy or recipe; delete it or fine-tune into another run dir"
            )
        try:
            load_state(model, state["model"], str(state_path))
            if quantizers:
                load_quantizer_state(model, state["quantizers"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start, history = int(state["epoch"]), list(state["history"])
            torch.set_rng_state(state["torch_rng"])
        except (KeyError, ValueError) as exc:
            raise AmcError(f"{activity} state {state_path} is unusable ({exc}); delete it to start over") from exc
        log.info("resuming %s from epoch %d/%d (%s)", activity, start, epochs, state_path)
    epochs_bar = tqdm(
        range(start, epochs), desc=name, initial=start, total=epochs, dynamic_ncols=True, disable=bar_disable(progress)
    )
    for epoch in epochs_bar:
        loader = data.train_loader(seed=seed * 1000 + epoch)
        t0 = time.perf_counter()
        loss = train_epoch(model, loader, opt, sched, device, loss_fn, f"epoch {epoch + 1}/{epochs}", progress)
        if after_epoch is not None:
            after_epoch()
        history.append({"epoch": epoch + 1, "train_loss": loss, "seconds": time.perf_counter() - t0})
        log.info("epoch %d/%d: train loss %.4f", epoch + 1, epochs, loss)
        if writer is not None:
            writer.add_scalar(f"{name}/train_loss", loss, epoch + 1)
            writer.add_scalar(f"{name}/lr", sched.get_last_lr()[0], epoch + 1)
        state = {"fingerprint": fingerprint} if fingerprint is not None else {}
        state["model"] = model.state_dict()
        if quantizers:
            state["quantizers"] = quantizer_state(model)
        state.update(
            {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "epoch": epoch + 1,
                "history": history,
                "torch_rng": torch.get_rng_state(),
            }
        )
        atomic_torch_save(state, state_path)
    return history


def fine_tune(
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
    """Fine-tune a compressed model in place (:func:`fit` with distillation), resuming from ``state_path``.

    Args:
        model: the compressed model, prepared for QAT (:func:`amc.qat.prepare_qat`).
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
    if teacher is not None:
        teacher.to(device).eval()

    def step_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(x) if teacher is not None else None
        return kd_loss(model(x), t_logits, y, recipe.kd_temperature, recipe.kd_alpha, recipe.label_smoothing)

    def recalibrate() -> None:
        if recipe.from_scratch and calibration:
            calibrate_activations(model, calibration)

    history = fit(
        model,
        data,
        recipe,
        step_loss,
        state_path,
        device,
        seed,
        "finetune",
        "fine-tuning",
        progress=progress,
        writer=writer,
        fingerprint=fingerprint,
        quantizers=True,
        after_epoch=recalibrate,
    )
    model.eval()
    return history
