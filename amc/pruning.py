"""Physical channel removal with torch-pruning, driven by the compressible-layer graph.

torch-pruning keeps every coupled layer consistent (residual adds, concatenations, depthwise
followers, BatchNorm, flatten -> linear); amc only decides *how many* channels each group keeps and
*which* ones, and this module is the one place that turns that decision into a smaller network.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_pruning as tp
from torch import nn

from amc.graph import ModelGraph, build_dependency_graph


def group_scores_l1(model: nn.Module, graph: ModelGraph, example: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Channel importance per group: the L1 norm of every coupled weight slice (torch-pruning's group magnitude).

    Args:
        model: the dense model the graph was built from.
        graph: its graph.
        example: one input batch for tracing (zeros of the graph's input shape by default).
    """
    if example is None:
        example = torch.zeros((1, *graph.input_shape), device=_device(model))
    dg = build_dependency_graph(model, example)
    modules = dict(model.named_modules())
    importance = tp.importance.GroupMagnitudeImportance(p=1)
    scores = []
    for g in graph.groups:
        root = modules[g.root]
        pruner = dg.get_pruner_of_module(root)
        tp_group = dg.get_pruning_group(root, pruner.prune_out_channels, list(range(g.channels)))
        with torch.no_grad():
            s = importance(tp_group)
        scores.append(torch.zeros(g.channels) if s is None else s.detach().float().cpu())
    return scores


def keep_indices(scores: Sequence[torch.Tensor], kept: Sequence[int]) -> list[torch.Tensor]:
    """The indices (sorted ascending) of the ``kept[g]`` highest-scoring channels of every group.

    Ties break towards the lower index, so the choice is deterministic.

    Args:
        scores: one importance vector per group.
        kept: channels to keep per group.
    """
    out = []
    for s, k in zip(scores, kept):
        order = torch.argsort(-s.double(), stable=True)
        out.append(torch.sort(order[: int(k)]).values)
    return out


def prune_model(
    model: nn.Module,
    graph: ModelGraph,
    keep: Sequence[torch.Tensor],
    example: torch.Tensor | None = None,
) -> nn.Module:
    """Remove, in place, every channel not listed in ``keep`` (one index tensor per group).

    Non-prunable groups must be kept whole. Returns ``model`` for chaining.

    Args:
        model: a model with the same architecture (module names) as the one ``graph`` was built from.
        graph: the graph.
        keep: indices of the channels each group keeps.
        example: one input batch for tracing (zeros of the graph's input shape by default).
    """
    if len(keep) != len(graph.groups):
        raise ValueError(f"expected keep indices for {len(graph.groups)} groups, got {len(keep)}")
    todo = []
    for g, idx in zip(graph.groups, keep):
        if len(idx) == g.channels:
            continue
        if not g.prunable:
            raise ValueError(f"group {g.index} ({g.root}) is not prunable: {g.reason}")
        if len(idx) < 1:
            raise ValueError(f"group {g.index} ({g.root}) must keep at least one channel")
        mask = torch.ones(g.channels, dtype=torch.bool)
        mask[idx] = False
        todo.append((g, mask.nonzero().flatten().tolist()))
    if not todo:
        return model
    if example is None:
        example = torch.zeros((1, *graph.input_shape), device=_device(model))
    dg = build_dependency_graph(model, example)
    modules = dict(model.named_modules())
    for g, remove in todo:
        root = modules[g.root]
        pruner = dg.get_pruner_of_module(root)
        dg.get_pruning_group(root, pruner.prune_out_channels, remove).prune(record_history=False)
    return model


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))
