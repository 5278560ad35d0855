"""The compressible-layer graph: order, shapes, and the channel groups torch-pruning couples."""

from __future__ import annotations

import pytest
import torch
from conftest import ConcatNet, FlattenNet
from torch import nn

from amc.errors import AmcError
from amc.graph import build_graph, round_channels
from amc.models import build_model


def test_resnet20_residual_groups_are_coupled() -> None:
    model = build_model("resnet20", num_classes=10, in_channels=1).eval()
    graph = build_graph(model, (1, 28, 28))
    names = [u.name for u in graph.units]
    assert len([u for u in graph.units if u.kind == "conv"]) == 19 + 2  # 19 convs + 2 projection shortcuts
    # Every stage's block outputs are added together, so their second convs share one group.
    stage_groups = {}
    for u in graph.units:
        if u.kind == "conv" and u.name.endswith("conv2"):
            stage_groups.setdefault(u.out_channels, set()).add(u.out_group)
    assert all(len(gs) == 1 for gs in stage_groups.values()), stage_groups
    # The stem's output is added to the first stage's blocks: it belongs to the 16-channel residual group.
    stem = graph.units[0]
    assert stem.out_group in stage_groups[16]
    res16 = graph.groups[stem.out_group]
    assert len(res16.producers) == 1 + 3  # stem + three blocks' conv2
    assert res16.prunable
    # Each block's inner conv1 -> conv2 channels form their own group.
    inner = [u for u in graph.units if u.name.endswith("conv1")]
    assert len({u.out_group for u in inner}) == len(inner) == 9
    # The classifier's outputs cannot be pruned; the first layer's input is no group.
    fc = graph.units[-1]
    assert fc.kind == "linear" and not graph.groups[fc.out_group].prunable
    assert stem.in_groups == [] and stem.fixed_in == 1
    # Forward order: the order in which the model actually calls its Conv2d/Linear modules.
    called: list[str] = []
    handles = [
        m.register_forward_pre_hook(lambda _m, _x, name=name: called.append(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    with torch.no_grad():
        model(torch.zeros(1, 1, 28, 28))
    for h in handles:
        h.remove()
    assert names == called
    assert names != sorted(names)  # a projection shortcut runs between convs, not in name order


def test_plain20_has_one_group_per_conv() -> None:
    graph = build_graph(build_model("plain20", num_classes=10, in_channels=1), (1, 28, 28))
    convs = [u for u in graph.units if u.kind == "conv"]
    assert len({u.out_group for u in convs}) == len(convs)


def test_mobilenet_v2_depthwise_follows_expand_conv() -> None:
    graph = build_graph(build_model("mobilenet_v2", num_classes=10, in_channels=3, variant="cifar"), (3, 32, 32))
    dws = [u for u in graph.units if u.depthwise]
    assert len(dws) == 17
    for dw in dws:
        producer = graph.units[dw.index - 1]  # the expand 1x1 conv (or the stem for the first block)
        assert producer.kind == "conv" and not producer.depthwise
        assert dw.out_group == producer.out_group
        assert dw.in_groups == [(dw.out_group, 1)]
        group = graph.groups[dw.out_group]
        assert dw.index in group.producers and dw.index in group.consumers
        project = graph.units[dw.index + 1]
        assert (dw.out_group, 1) in project.in_groups


def test_concat_couples_each_branch_with_its_slice() -> None:
    graph = build_graph(ConcatNet(), (1, 16, 16))
    a, b, mix = graph.unit("a"), graph.unit("b"), graph.unit("mix")
    assert a.out_group != b.out_group
    assert sorted(mix.in_groups) == sorted([(a.out_group, 1), (b.out_group, 1)])
    assert mix.fixed_in == 0
    assert graph.groups[a.out_group].channels == 12 and graph.groups[b.out_group].channels == 6
    assert graph.groups[a.out_group].extra_params_per_channel == 2  # bna's weight and bias
    assert graph.groups[b.out_group].extra_params_per_channel == 0


def test_flatten_multiplier_and_shapes() -> None:
    graph = build_graph(FlattenNet(), (1, 28, 28))
    pw, fc1, dw = graph.unit("pw"), graph.unit("fc1"), graph.unit("dw")
    assert fc1.in_groups == [(pw.out_group, 14 * 14)]
    assert dw.depthwise and dw.in_hw == (14, 14) and dw.out_hw == (14, 14)
    assert graph.unit("c1").stride == (2, 2) and graph.unit("c1").out_hw == (14, 14)
    assert fc1.macs == 8 * 14 * 14 * 32


def test_grouped_conv_is_quantize_only() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 24 * 24, 10)
    )
    graph = build_graph(model, (1, 28, 28))
    g0 = graph.groups[graph.units[0].out_group]
    assert not g0.prunable and "grouped conv" in g0.reason
    assert len(graph.units) == 3


def test_module_used_twice_is_refused() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.conv(x))

    with pytest.raises(AmcError, match="called more than once"):
        build_graph(Twice(), (4, 8, 8))


def test_bad_input_shape_and_no_layers() -> None:
    with pytest.raises(AmcError, match="forward fails"):
        build_graph(build_model("fmnist_cnn", num_classes=10, in_channels=1), (3, 32, 32))
    with pytest.raises(AmcError, match="no Conv2d or Linear"):
        build_graph(nn.Sequential(nn.ReLU()), (1, 4, 4))


@pytest.mark.parametrize(
    ("value", "total", "multiple", "expected"),
    [(10.4, 64, 1, 10), (33, 64, 8, 32), (37, 64, 8, 40), (0.2, 64, 8, 8), (70, 64, 8, 64), (3, 4, 8, 4)],
)
def test_round_channels(value: float, total: int, multiple: int, expected: int) -> None:
    assert round_channels(value, total, multiple) == expected
