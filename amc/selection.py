"""Which channels a group keeps: importance scores per group, computed once on the dense model.

Methods (``selection=`` in the env config):

- ``l1`` / ``l2``: norm of each output filter, summed over the group's producers (Li et al. 2017).
- ``bn``: absolute BatchNorm scale of the channel, summed over the BatchNorms in the group (Network
  Slimming, Liu et al. 2017); groups without a BatchNorm fall back to ``l1``.
- ``thinet``: ThiNet's greedy (Luo et al. 2017): on sampled inputs of the next layer(s), repeatedly
  remove the channel whose contribution keeps the removed set's summed contribution to the next
  layer's outputs smallest; a channel's score is how late it would be removed.

Higher score = more important. Scores depend only on the dense model (and for ThiNet on a fixed set of
calibration batches), so an episode only sorts them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from amc.errors import AmcError
from amc.graph import ModelGraph, build_dependency_graph

METHODS = ("l1", "l2", "bn", "thinet")


def magnitude_scores(model: nn.Module, graph: ModelGraph, p: int = 1) -> list[torch.Tensor]:
    """Lp norm of every output filter, summed over each group's producers.

    Args:
        model: the dense model.
        graph: its graph.
        p: 1 or 2.
    """
    modules = dict(model.named_modules())
    scores = []
    for g in graph.groups:
        s = torch.zeros(g.channels)
        for ui in g.producers:
            w = modules[graph.units[ui].name].weight.detach().float().cpu()
            s += w.flatten(1).norm(p=p, dim=1)
        scores.append(s)
    return scores


def bn_scores(model: nn.Module, graph: ModelGraph) -> list[torch.Tensor]:
    """|gamma| of the BatchNorms coupled to each group (``l1`` where a group has none).

    Args:
        model: the dense model.
        graph: its graph.
    """
    example = torch.zeros((1, *graph.input_shape), device=next(model.parameters()).device)
    dg = build_dependency_graph(model, example)
    modules = dict(model.named_modules())
    fallback = magnitude_scores(model, graph, p=1)
    scores = []
    for g, fb in zip(graph.groups, fallback):
        root = modules[g.root]
        tp_group = dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, list(range(g.channels)))
        s = torch.zeros(g.channels)
        found = False
        for item in tp_group:
            m = item.dep.target.module
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine and len(item.idxs) == g.channels:
                gamma = m.weight.detach().float().cpu().abs()
                s[torch.as_tensor(item.root_idxs)] += gamma[torch.as_tensor(item.idxs)]
                found = True
        scores.append(s if found else fb)
    return scores


def capture_unit_inputs(
    model: nn.Module,
    graph: ModelGraph,
    units: Iterable[int],
    batches: Sequence[torch.Tensor],
    keep: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> dict[int, list[torch.Tensor]]:
    """The inputs each listed unit receives while ``model`` (in eval mode) runs ``batches``.

    Args:
        model: the model (its hooks are removed again, even on error).
        graph: its graph.
        units: indices of the units to watch.
        batches: input batches.
        keep: ``keep(unit, input)`` returns what to store of each batch's input (e.g. a sample of its
            rows), so only that is held in memory; ``None`` stores the inputs whole.
    """
    modules = dict(model.named_modules())
    captured: dict[int, list[torch.Tensor]] = {u: [] for u in units}
    handles = []
    for ui in units:

        def hook(_m: nn.Module, inputs: tuple, ui: int = ui) -> None:
            x = inputs[0].detach()
            captured[ui].append(x if keep is None else keep(ui, x))

        handles.append(modules[graph.units[ui].name].register_forward_pre_hook(hook))
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    return captured


def sample_unit_inputs(
    model: nn.Module,
    graph: ModelGraph,
    units: Sequence[int],
    batches: Sequence[torch.Tensor],
    samples: int,
    gen: torch.Generator,
) -> dict[int, torch.Tensor]:
    """``samples`` random rows of each listed unit's input while ``model`` (in eval mode) runs ``batches``.

    A row is one k x k patch of every input channel for a convolution, one position for a linear layer.
    Each image gives ``ceil(samples / images)`` random rows, drawn one image at a time as its batch passes,
    and ``samples`` of those are drawn at random (every row when there are fewer: a linear unit has one
    per image). Memory holds only the samples: never a unit's whole input over the batches (gigabytes for
    an ImageNet model), nor a whole unfolded batch. Used by ThiNet's selection and AMC's reconstruction.

    Args:
        model: the model.
        graph: its graph.
        units: indices of the units to sample, in the order of the final draws.
        batches: input batches.
        samples: rows per unit.
        gen: the generator of every draw.

    Returns:
        unit index -> [rows, in_channels * k] (convolution) or [rows, in_features] (linear), float32 on CPU.
    """
    modules = dict(model.named_modules())
    n_images = sum(int(x.shape[0]) for x in batches)
    per_image = -(-samples // max(1, n_images))

    def sample(ui: int, x: torch.Tensor) -> torch.Tensor:
        u = graph.units[ui]
        m = modules[u.name]
        picked = []
        for xi in x.float():
            if u.kind == "conv":
                cols = nn.functional.unfold(
                    xi.unsqueeze(0), u.kernel_size, padding=u.padding, stride=u.stride, dilation=m.dilation
                )[0].T  # [positions, in_channels * k]
            else:
                cols = xi.reshape(-1, xi.shape[-1])
            picked.append(cols[torch.randperm(cols.shape[0], generator=gen)[:per_image]].cpu())
        return torch.cat(picked)

    captured = capture_unit_inputs(model, graph, units, batches, keep=sample)
    out = {}
    for ui in units:
        rows = torch.cat(captured[ui])
        out[ui] = rows[torch.randperm(rows.shape[0], generator=gen)[:samples]]
    return out


def thinet_scores(
    model: nn.Module,
    graph: ModelGraph,
    batches: Sequence[torch.Tensor],
    samples: int = 512,
    seed: int = 0,
) -> list[torch.Tensor]:
    """ThiNet's greedy channel order for every prunable group (``l1`` for the rest).

    Args:
        model: the dense model.
        graph: its graph.
        batches: calibration inputs.
        samples: sampled output positions per consumer.
        seed: seed of the position sampling.
    """
    fallback = magnitude_scores(model, graph, p=1)
    consumers = {
        ui
        for g in graph.groups
        if g.prunable
        for ui in g.consumers
        if not graph.units[ui].depthwise and graph.units[ui].groups == 1
    }
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(seed)
    rows = sample_unit_inputs(model, graph, sorted(consumers), batches, samples, gen)
    scores = []
    for g, fb in zip(graph.groups, fallback):
        parts = []
        for ui in g.consumers:
            if ui not in consumers:
                continue
            u = graph.units[ui]
            contrib = _channel_contributions(modules[u.name], u, rows[ui], g.index, graph)
            if contrib is not None:
                parts.append(contrib)
        if not g.prunable or not parts:
            scores.append(fb)
            continue
        z = torch.cat(parts, dim=1)  # [channels, samples*outputs]: each channel's contribution to next outputs
        scores.append(_greedy_order(z))
    return scores


def _channel_contributions(
    module: nn.Module, unit, rows: torch.Tensor, group: int, graph: ModelGraph
) -> torch.Tensor | None:
    """[channels of group, n] matrix: each group channel's summed contribution to the sampled consumer outputs.

    Args:
        rows: sampled inputs of the consumer (``sample_unit_inputs``): [S, in_channels * k] or [S, in_features].
    """
    if group not in unit.in_map:
        return None
    cols_idx, roots = unit.in_map[group]
    cols_idx_t, roots_t = torch.as_tensor(cols_idx), torch.as_tensor(roots)
    channels = graph.groups[group].channels
    w = module.weight.detach().float().cpu()
    if unit.kind == "conv":
        k = unit.kernel_size[0] * unit.kernel_size[1]
        xs = rows.reshape(-1, unit.in_channels, k)[:, cols_idx_t]
        ws = w.reshape(w.shape[0], unit.in_channels, k)[:, cols_idx_t]
        per_col = torch.einsum("sck,ock->cso", xs, ws)  # [len(cols), S, O]
    else:
        per_col = torch.einsum("sc,oc->cso", rows[:, cols_idx_t], w[:, cols_idx_t])
    contrib = torch.zeros(channels, *per_col.shape[1:])
    contrib.index_add_(0, roots_t, per_col)  # a flatten maps several input columns to one channel
    return contrib.reshape(channels, -1)


def _greedy_order(z: torch.Tensor) -> torch.Tensor:
    """ThiNet greedy: add to the removed set the channel that keeps ||sum of removed contributions|| smallest."""
    c = z.shape[0]
    z = z.double()
    removed = torch.zeros(c, dtype=torch.bool)
    running = torch.zeros(z.shape[1], dtype=torch.float64)
    score = torch.zeros(c)
    for step in range(c):
        cost = ((running.unsqueeze(0) + z) ** 2).sum(dim=1)
        cost[removed] = float("inf")
        best = int(torch.argmin(cost))
        removed[best] = True
        running += z[best]
        score[best] = step  # removed early = unimportant
    return score


def channel_scores(
    method: str, model: nn.Module, graph: ModelGraph, batches: Sequence[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """Importance of every channel of every group by ``method`` (see the module docstring).

    Args:
        method: ``l1``, ``l2``, ``bn`` or ``thinet``.
        model: the dense model.
        graph: its graph.
        batches: calibration inputs (needed by ``thinet``).
    """
    if method == "l1":
        return magnitude_scores(model, graph, p=1)
    if method == "l2":
        return magnitude_scores(model, graph, p=2)
    if method == "bn":
        return bn_scores(model, graph)
    if method == "thinet":
        if not batches:
            raise AmcError("selection=thinet needs calibration batches; set env.calibration_batches > 0")
        return thinet_scores(model, graph, batches)
    raise AmcError(f"unknown channel selection {method!r}; choose one of {', '.join(METHODS)}")
