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
    n_images = sum(int(x.shape[0]) for x in batches)
    per_image = -(-samples // max(n_images, 1))

    def sample(ui: int, x: torch.Tensor) -> torch.Tensor:
        # Each image gives ``per_image`` random rows of the consumer's (unfolded) input, drawn as its batch
        # passes: only the samples are held, never a consumer's whole input over the calibration set.
        return _sample_rows(modules[graph.units[ui].name], graph.units[ui], x, per_image, gen)

    rows = {}
    for ui, xs in capture_unit_inputs(model, graph, consumers, batches, keep=sample).items():
        x = torch.cat(xs)
        rows[ui] = x[torch.randperm(len(x), generator=gen)[:samples]]  # spread over all the images
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


def _sample_rows(module: nn.Module, unit, x: torch.Tensor, per_image: int, gen: torch.Generator) -> torch.Tensor:
    """Up to ``per_image`` random rows per image of ``unit``'s input ``x`` (as many as it has positions):
    [N * rows, in_channels * k] for a convolution (unfolded k x k patches), [N * rows, in_features] for a
    linear layer."""
    x = x.detach().float().cpu()
    if unit.kind == "conv":
        cols = nn.functional.unfold(
            x, unit.kernel_size, padding=unit.padding, stride=unit.stride, dilation=module.dilation
        )  # [N, C*k, L]
        n, _, positions = cols.shape
        pick = torch.randint(0, positions, (n, min(per_image, positions)), generator=gen)
        return torch.gather(cols, 2, pick.unsqueeze(1).expand(-1, cols.shape[1], -1)).permute(0, 2, 1).flatten(0, 1)
    x = x.reshape(x.shape[0], -1, x.shape[-1])  # [N, positions, C]: a linear layer on sequences counts positions
    n, positions, _ = x.shape
    pick = torch.randint(0, positions, (n, min(per_image, positions)), generator=gen)
    return torch.gather(x, 1, pick.unsqueeze(2).expand(-1, -1, x.shape[2])).flatten(0, 1)


def _channel_contributions(
    module: nn.Module, unit, rows: torch.Tensor, group: int, graph: ModelGraph
) -> torch.Tensor | None:
    """[channels of group, n] matrix: each group channel's summed contribution to the sampled consumer outputs.

    Args:
        rows: sampled inputs of the consumer (``_sample_rows``): [S, in_channels * k] or [S, in_features].
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
