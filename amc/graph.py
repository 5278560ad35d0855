"""The compressible-layer graph of a model.

A *unit* is one ``nn.Conv2d`` (plain, grouped or depthwise) or ``nn.Linear`` module, listed in the
order the forward pass calls them. A *channel group* is a set of channels that must be removed
together: torch-pruning's ``DependencyGraph`` couples the outputs of convolutions whose results are
added (residual blocks), the channels a depthwise convolution passes through, the BatchNorm that
follows, and the input slices of every consumer (including the slices a concatenation or a flatten
creates). Every search action on channels is an action on a group.

What cannot be pruned, and why, is recorded per group (``Group.reason``): the channels that leave the
model (the classifier's outputs), channels that feed a grouped (non-depthwise) convolution, and
channels that no later unit consumes. The model's input channels are never in a group, so the first
layer's input is always kept whole; every unit, prunable or not, may still be quantized.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from amc.errors import AmcError

log = logging.getLogger(__name__)

UNIT_TYPES = (nn.Conv2d, nn.Linear)


@dataclass
class Unit:
    """One compressible layer, with its dense shape as seen in a forward pass at batch 1.

    Attributes:
        index: position in forward order.
        name: the module's qualified name in the model.
        kind: ``"conv"`` or ``"linear"``.
        in_channels: input channels (features for a linear layer).
        out_channels: output channels (features).
        kernel_size: (kh, kw); (1, 1) for linear.
        stride: (sh, sw); (1, 1) for linear.
        padding: (ph, pw); (0, 0) for linear.
        groups: convolution groups; 1 for linear.
        in_hw: input spatial size; (1, 1) for linear.
        out_hw: output spatial size; (1, 1) for linear.
        positions: output positions per sample (out_h * out_w, or the token count for a linear layer).
        has_bias: whether the layer has a bias.
        macs: dense multiply-accumulates per sample.
        params: dense parameters (weight + bias).
        out_group: index of the channel group holding this unit's outputs (None: not in any group).
        in_groups: (group index, multiplier) pairs whose kept channels, times the multiplier, form this
            unit's input (a multiplier > 1 comes from a flatten in front of a linear layer).
        fixed_in: input channels that belong to no group (the model's input, for the first layer).
        in_map: per input group, (this unit's input indices, the group channels they come from), so
            a pruned group's kept channels translate into this unit's kept input columns.
    """

    index: int
    name: str
    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    positions: int
    has_bias: bool
    macs: int
    params: int
    out_group: int | None = None
    in_groups: list[tuple[int, int]] = field(default_factory=list)
    fixed_in: int = 0
    in_map: dict[int, tuple[list[int], list[int]]] = field(default_factory=dict)

    def kept_inputs(self, keep: list[list[int]] | list) -> list[int]:
        """This unit's input indices (dense numbering, ascending) that survive the kept group channels.

        Args:
            keep: kept channel indices per group (tensors or lists).
        """
        mapped: set[int] = set()
        survive: set[int] = set()
        for gi, (cols, roots) in self.in_map.items():
            kept = {int(i) for i in keep[gi]}
            mapped.update(cols)
            survive.update(c for c, r in zip(cols, roots) if r in kept)
        return sorted(survive | (set(range(self.in_channels)) - mapped))

    @property
    def depthwise(self) -> bool:
        """True for a depthwise convolution (one filter per channel, groups == in == out channels)."""
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels == self.out_channels

    @property
    def weight_params(self) -> int:
        """Dense weight parameters (no bias)."""
        return self.params - (self.out_channels if self.has_bias else 0)


@dataclass
class Group:
    """A set of coupled channels that are kept or removed together.

    Attributes:
        index: position in the graph's group list (ordered by the first unit that produces it).
        root: name of the unit whose output channels define the group (the first producer).
        channels: number of channels.
        producers: indices of units whose outputs are these channels (several for residual adds).
        consumers: indices of units that read these channels (depthwise units are both).
        prunable: whether the search may remove channels of this group.
        reason: why the group is not prunable ('' when it is).
        extra_params_per_channel: parameters of non-unit modules (BatchNorm, PReLU, ...) per channel.
    """

    index: int
    root: str
    channels: int
    producers: list[int]
    consumers: list[int]
    prunable: bool
    reason: str = ""
    extra_params_per_channel: float = 0.0


@dataclass
class ModelGraph:
    """Units in forward order and the channel groups that couple them.

    Attributes:
        units: compressible layers in forward order.
        groups: channel groups, ordered by their first producer.
        input_shape: (C, H, W) of one input sample.
        total_params: every parameter of the dense model.
        fixed_params: parameters in neither a unit nor a group (kept whatever the policy).
    """

    units: list[Unit]
    groups: list[Group]
    input_shape: tuple[int, ...]
    total_params: int
    fixed_params: int

    @property
    def dense_macs(self) -> int:
        """Multiply-accumulates of the dense model per sample."""
        return sum(u.macs for u in self.units)

    @property
    def prunable_groups(self) -> list[int]:
        """Indices of the groups the search may prune."""
        return [g.index for g in self.groups if g.prunable]

    def unit(self, name: str) -> Unit:
        """The unit with this module name."""
        for u in self.units:
            if u.name == name:
                return u
        raise KeyError(name)

    def full_channels(self) -> list[int]:
        """Kept channels per group when nothing is pruned."""
        return [g.channels for g in self.groups]

    def channels_from_ratios(self, ratios: list[float], multiple: int = 1, min_channels: int = 1) -> list[int]:
        """Turn keep ratios per group into kept channel counts.

        Counts are rounded to the nearest multiple of ``multiple`` (never above the group's size, never
        below ``min_channels`` rounded up to the multiple); non-prunable groups stay whole.

        Args:
            ratios: one keep ratio in (0, 1] per group.
            multiple: round counts to this multiple (e.g. the accelerator's array width).
            min_channels: the fewest channels a prunable group keeps.
        """
        if len(ratios) != len(self.groups):
            raise ValueError(f"expected {len(self.groups)} ratios, got {len(ratios)}")
        kept = []
        for g, r in zip(self.groups, ratios):
            if not g.prunable:
                kept.append(g.channels)
                continue
            kept.append(round_channels(r * g.channels, g.channels, multiple, min_channels))
        return kept


def round_channels(value: float, total: int, multiple: int = 1, min_channels: int = 1) -> int:
    """Round a channel count to a multiple, inside [minimum, total].

    Args:
        value: the wanted (fractional) number of channels.
        total: the group's size; never exceeded.
        multiple: rounding step.
        min_channels: the fewest channels kept (rounded up to the step, capped at ``total``).
    """
    multiple = max(1, int(multiple))
    lo = min(total, -(-max(1, min_channels) // multiple) * multiple)
    n = int(round(value / multiple)) * multiple
    return int(min(total, max(lo, n)))


def _pair(v: int | tuple[int, ...] | str) -> tuple[int, int]:
    if isinstance(v, str):  # padding="same"/"valid" on Conv2d
        return (0, 0)
    if isinstance(v, int):
        return (v, v)
    return (int(v[0]), int(v[1]))


def _trace_units(model: nn.Module, example: torch.Tensor) -> list[Unit]:
    names = {m: n for n, m in model.named_modules()}
    calls: list[tuple[nn.Module, torch.Size, torch.Size]] = []

    def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        calls.append((module, inputs[0].shape, output.shape))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, UNIT_TYPES)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    except Exception as exc:  # any failure of the user's forward is an input-shape problem to report
        raise AmcError(
            f"the model's forward fails on an input of shape {tuple(example.shape)} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); make the model accept the dataset's input shape "
            "or pick a matching data config"
        ) from exc
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    seen: set[nn.Module] = set()
    units: list[Unit] = []
    for module, in_shape, out_shape in calls:
        name = names[module]
        if module in seen:
            raise AmcError(
                f"layer {name!r} is called more than once in forward; amc needs each Conv2d/Linear used once "
                "(give each use its own module)"
            )
        seen.add(module)
        if isinstance(module, nn.Conv2d):
            kh, kw = _pair(module.kernel_size)
            oh, ow = int(out_shape[-2]), int(out_shape[-1])
            positions = oh * ow
            cin_g = module.in_channels // module.groups
            weight = module.out_channels * cin_g * kh * kw
            unit = Unit(
                index=len(units),
                name=name,
                kind="conv",
                in_channels=module.in_channels,
                out_channels=module.out_channels,
                kernel_size=(kh, kw),
                stride=_pair(module.stride),
                padding=_pair(module.padding),
                groups=module.groups,
                in_hw=(int(in_shape[-2]), int(in_shape[-1])),
                out_hw=(oh, ow),
                positions=positions,
                has_bias=module.bias is not None,
                macs=positions * weight,
                params=weight + (module.out_channels if module.bias is not None else 0),
            )
        else:
            positions = 1
            for d in in_shape[1:-1]:
                positions *= int(d)
            weight = module.in_features * module.out_features
            unit = Unit(
                index=len(units),
                name=name,
                kind="linear",
                in_channels=module.in_features,
                out_channels=module.out_features,
                kernel_size=(1, 1),
                stride=(1, 1),
                padding=(0, 0),
                groups=1,
                in_hw=(1, 1),
                out_hw=(1, 1),
                positions=positions,
                has_bias=module.bias is not None,
                macs=positions * weight,
                params=weight + (module.out_features if module.bias is not None else 0),
            )
        units.append(unit)
    return units


def _broadcast_partners(
    dg: tp.DependencyGraph,
    tp_group: Any,
    module_to_name: dict[nn.Module, str],
    name_to_unit: dict[str, Unit],
    width: int,
) -> list[str]:
    """Units whose outputs torch-pruning couples to a group of ``width`` channels but that have another width."""
    out = []
    for item in tp_group:
        target = item.dep.target.module
        name = module_to_name.get(target) if isinstance(target, nn.Module) else None
        u = name_to_unit.get(name) if name is not None else None
        if (
            u is not None
            and not u.depthwise
            and dg.is_out_channel_pruning_fn(item.dep.handler)
            and u.out_channels != width
            and u.name not in out
        ):
            out.append(u.name)
    return out


def build_dependency_graph(model: nn.Module, example: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's dependency graph of ``model``, traced on ``example`` (kept in eval mode).

    Args:
        model: the network.
        example: one batch of input.
    """
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example)
    finally:
        model.train(was_training)


@torch.no_grad()
def _check_routing(
    model: nn.Module, units: list[Unit], groups: list[Group], modules: dict[str, nn.Module], example: torch.Tensor
) -> None:
    """Keep whole every group whose traced channel routing the real forward pass contradicts.

    For each prunable group, a few channels of one producer are perturbed in turn and the input
    columns of every consumer that change are compared with the columns the trace maps that channel
    to. An op the tracer cannot follow (a channel shuffle, a reshape that mixes channels) shows up as a
    mapped column that does not react; pruning such a group would silently route the wrong channels,
    so it is marked not prunable, naming the consumer.
    """
    was_training = model.training
    model.eval()
    x = torch.randn(example.shape, generator=torch.Generator().manual_seed(0)).to(example.device)
    captured: dict[str, torch.Tensor] = {}

    def grab(name: str) -> Any:
        def hook(_m: nn.Module, inputs: tuple) -> None:
            captured[name] = inputs[0].detach().clone()

        return hook

    handles = [modules[u.name].register_forward_pre_hook(grab(u.name)) for u in units]
    try:
        model(x)
        base = dict(captured)
        for g in groups:
            if not g.prunable or not g.producers:
                continue
            producer = modules[units[g.producers[0]].name]
            for j in sorted({min(1, g.channels - 1), g.channels // 2, g.channels - 1}):
                consumer = _misrouted(model, x, producer, j, g, units, captured, base)
                if consumer is not None:
                    g.prunable = False
                    g.reason = (
                        f"its channels reach {consumer!r} through an op the tracer cannot follow "
                        "(e.g. a channel shuffle or a reshape across channels)"
                    )
                    break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _misrouted(
    model: nn.Module,
    x: torch.Tensor,
    producer: nn.Module,
    j: int,
    g: Group,
    units: list[Unit],
    captured: dict[str, torch.Tensor],
    base: dict[str, torch.Tensor],
) -> str | None:
    """The first consumer of ``g`` whose mapped input columns for channel ``j`` do not react to it."""

    def bump(_m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[:, j] = out[:, j] + 10.0 * (1.0 + out[:, j].abs().max())
        return out

    h = producer.register_forward_hook(bump)
    try:
        captured.clear()
        model(x)
    finally:
        h.remove()
    for ci in g.consumers:
        u = units[ci]
        if u.depthwise or g.index not in u.in_map:
            continue
        cols, roots = u.in_map[g.index]
        diff = (captured[u.name] - base[u.name]).abs()
        changed = diff.flatten(2).amax(dim=(0, 2)) if diff.dim() > 2 else diff.amax(dim=0)
        if any(float(changed[c]) == 0.0 for c, r in zip(cols, roots) if r == j):
            return u.name
    return None


def build_graph(model: nn.Module, input_shape: tuple[int, ...] | list[int], check_routing: bool = True) -> ModelGraph:
    """Trace ``model`` and return its compressible units and coupled channel groups.

    Args:
        model: any ``nn.Module`` whose forward takes one tensor of shape (N, *input_shape).
        input_shape: one sample's shape, e.g. (1, 28, 28).
        check_routing: verify each prunable group's channel routing on real forward passes
            (:func:`_check_routing`, up to three per group: 13 s for ResNet-50 at 224x224 on one CPU
            thread) and its costs on a pruned copy (:func:`amc.cost.verify_costs`: one copy of the
            model with every prunable group pruned at random, checked against ``flop_counter``, more
            only for groups that fail). Needed wherever the groups decide what gets pruned; callers
            that only need the units, the input-shape check or a replay of already-chosen indices turn
            it off. The dense model's costs are checked either way (one counted forward pass).

    Raises:
        AmcError: the forward pass fails on the input shape, a layer is called twice, or a unit's
            closed-form dense cost disagrees with ``torch.utils.flop_counter`` (naming the layer).
    """
    input_shape = tuple(int(s) for s in input_shape)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example = torch.zeros((1, *input_shape), device=device)
    units = _trace_units(model, example)
    if not units:
        raise AmcError(
            f"model {type(model).__name__} has no Conv2d or Linear layer that runs in forward; "
            "amc compresses convolution and linear layers only"
        )
    name_to_unit = {u.name: u for u in units}
    modules = dict(model.named_modules())
    module_to_name = {m: n for n, m in modules.items()}

    dg = build_dependency_graph(model, example)
    groups: list[Group] = []
    claimed: set[int] = set()
    for unit in units:
        if unit.index in claimed:
            continue
        module = modules[unit.name]
        if module not in dg.module2node:
            continue
        pruner = dg.get_pruner_of_module(module)
        tp_group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(unit.out_channels)))
        g = Group(
            index=len(groups), root=unit.name, channels=unit.out_channels, producers=[], consumers=[], prunable=True
        )
        extra = 0.0
        reason = ""
        # A unit coupled to this group's outputs with another width broadcasts into them (e.g. a 1-channel
        # attention map multiplied into 16 channels): torch-pruning would prune it with the group.
        wider = _broadcast_partners(dg, tp_group, module_to_name, name_to_unit, unit.out_channels)
        if any(name_to_unit[n].out_channels > unit.out_channels for n in wider):
            partner = next(n for n in wider if name_to_unit[n].out_channels > unit.out_channels)
            unit.out_group = g.index
            g.producers.append(unit.index)
            claimed.add(unit.index)
            g.prunable = False
            g.reason = (
                f"its {g.channels} channel(s) are broadcast into the {name_to_unit[partner].out_channels} "
                f"channels of {partner!r}"
            )
            groups.append(g)
            continue
        if wider:
            reason = (
                f"the {name_to_unit[wider[0]].out_channels}-channel output of {wider[0]!r} is broadcast into its "
                "channels, and torch-pruning would prune that layer with them"
            )
        for item in tp_group:
            dep, idxs = item.dep, item.idxs
            target = dep.target.module
            tname = module_to_name.get(target) if isinstance(target, nn.Module) else None
            n = len(idxs)
            if tname in name_to_unit:
                u = name_to_unit[tname]
                if u.depthwise:
                    u.out_group = g.index
                    if (g.index, 1) not in u.in_groups:
                        u.in_groups.append((g.index, 1))
                        u.in_map[g.index] = (list(range(g.channels)), list(range(g.channels)))
                    g.producers.append(u.index)
                    g.consumers.append(u.index)
                    claimed.add(u.index)
                elif dg.is_out_channel_pruning_fn(dep.handler):
                    if tname in wider:
                        continue  # a broadcast partner has its own group
                    u.out_group = g.index
                    g.producers.append(u.index)
                    claimed.add(u.index)
                    if u.groups > 1:
                        reason = reason or f"its channels come from grouped conv {u.name!r} (groups={u.groups})"
                else:
                    if n % g.channels:
                        reason = reason or f"consumer {u.name!r} maps its channels unevenly"
                    u.in_groups.append((g.index, max(1, n // g.channels)))
                    u.in_map[g.index] = ([int(i) for i in idxs], [int(r) for r in item.root_idxs])
                    g.consumers.append(u.index)
                    if u.groups > 1:
                        reason = reason or f"its channels feed grouped conv {u.name!r} (groups={u.groups})"
            elif isinstance(target, nn.Module):
                own = sum(p.numel() for p in target.parameters(recurse=False))
                if own and dg.is_out_channel_pruning_fn(dep.handler):
                    width = dg.get_out_channels(target) or n
                    extra += own / width * n / g.channels
            elif isinstance(target, nn.Parameter):
                reason = reason or "a free nn.Parameter depends on them"
        if not g.consumers:
            reason = reason or "they leave the model (output layer) or no later layer reads them"
        g.prunable = not reason
        g.reason = reason
        g.extra_params_per_channel = extra
        groups.append(g)

    for u in units:
        covered = sum(groups[gi].channels * m for gi, m in u.in_groups)
        u.fixed_in = u.in_channels - covered
        if u.fixed_in < 0:
            raise AmcError(
                f"could not map the input channels of layer {u.name!r} ({covered} traced, {u.in_channels} real); "
                "this model's channel flow is not supported (please report it)"
            )
        if u.fixed_in and u.in_groups:
            # part of the input comes from somewhere the dependency graph does not see: keep those groups whole
            for gi, _ in u.in_groups:
                if groups[gi].prunable:
                    groups[gi].prunable = False
                    groups[gi].reason = f"consumer {u.name!r} also reads channels from an untraced source"

    if check_routing:
        _check_routing(model, units, groups, modules, example)

    total = sum(p.numel() for p in model.parameters())
    unit_params = sum(u.params for u in units)
    group_extra = sum(g.extra_params_per_channel * g.channels for g in groups)
    fixed = int(round(total - unit_params - group_extra))
    graph = ModelGraph(units=units, groups=groups, input_shape=input_shape, total_params=total, fixed_params=fixed)
    from amc.cost import verify_costs  # amc.cost builds on this module's graph

    verify_costs(model, graph, pruned=check_routing)
    log.debug("graph: %d units, %d groups (%d prunable)", len(units), len(groups), len(graph.prunable_groups))
    return graph
