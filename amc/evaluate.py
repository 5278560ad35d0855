"""Accuracy of a model on tensors or a loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


@torch.no_grad()
def accuracy(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device | str = "cpu",
    topk: tuple[int, ...] = (1,),
    train_mode: bool = False,
) -> dict[str, float]:
    """Top-k accuracies (fractions in [0, 1]), mean cross-entropy and ``nonfinite`` of ``model`` (in eval mode).

    ``nonfinite`` counts the samples whose logits hold NaN or inf (a broken model would otherwise
    score whatever class its NaN logits happen to rank first).

    Args:
        model: the network (left in eval mode unless ``train_mode``).
        batches: (inputs, labels) pairs, e.g. a DataLoader.
        device: where to run.
        topk: which top-k accuracies to report.
        train_mode: leave the model's train/eval modes as they are (e.g. BatchNorm layers measuring
            their statistics while the batch is evaluated) instead of switching it to eval mode.
    """
    if not train_mode:
        model.eval()
    correct = {k: 0 for k in topk}
    loss, n, bad = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        bad += int((~torch.isfinite(logits)).any(dim=1).sum())
        loss += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        top = logits.topk(max(topk), dim=1).indices
        hit = top == y.unsqueeze(1)
        for k in topk:
            correct[k] += int(hit[:, :k].any(dim=1).sum())
        n += y.numel()
    if n == 0:
        raise ValueError("no samples to evaluate")
    out = {f"top{k}": correct[k] / n for k in topk}
    out["loss"] = loss / n
    out["nonfinite"] = bad
    return out


def search_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Top-1 of ``model`` (moved to ``device``) on cached tensors, or NaN when any output is NaN/inf.

    The score of a search episode: a broken model must not rank by whatever its NaN logits select.

    Args:
        model: the network.
        x: inputs.
        y: labels.
        batch_size: samples per batch.
        device: where to run.
    """
    model.to(device)
    res = accuracy(model, tensor_batches(x, y, batch_size), device)
    return float("nan") if res["nonfinite"] else float(res["top1"])


def tensor_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split cached tensors into evaluation batches (views, no copies).

    Args:
        x: inputs.
        y: labels.
        batch_size: samples per batch.
    """
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]
