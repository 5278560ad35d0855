"""Closed-form costs agree exactly with flop_counter and the parameter count of the physically pruned model."""

from __future__ import annotations

import copy
import zlib

import numpy as np
import pytest
import torch
from conftest import ConcatNet, FlattenNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from amc.cost import FP32, CostModel
from amc.graph import build_graph
from amc.models import build_model
from amc.pruning import group_scores_l1, keep_indices, prune_model

CASES = [
    ("fmnist_cnn", lambda: build_model("fmnist_cnn", num_classes=10, in_channels=1), (1, 28, 28), 20),
    ("resnet20", lambda: build_model("resnet20", num_classes=10, in_channels=1), (1, 28, 28), 12),
    ("plain20", lambda: build_model("plain20", num_classes=10, in_channels=1), (1, 28, 28), 6),
    (
        "mobilenet_v2_cifar",
        lambda: build_model("mobilenet_v2", num_classes=10, in_channels=3, variant="cifar"),
        (3, 32, 32),
        4,
    ),
    (
        "mobilenet_v1_cifar",
        lambda: build_model("mobilenet_v1", num_classes=10, in_channels=3, variant="cifar"),
        (3, 32, 32),
        4,
    ),
    ("concat", ConcatNet, (1, 16, 16), 20),
    ("flatten_dw", FlattenNet, (1, 28, 28), 20),
]


def measured_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros((1, *input_shape)))
    flops = counter.get_total_flops()
    assert flops % 2 == 0
    return flops // 2


@pytest.mark.parametrize(("name", "factory", "input_shape", "n_configs"), CASES, ids=[c[0] for c in CASES])
def test_closed_form_matches_pruned_model(name: str, factory, input_shape: tuple[int, ...], n_configs: int) -> None:
    torch.manual_seed(0)
    dense = factory()
    graph = build_graph(dense, input_shape)
    costs = CostModel(graph)
    assert costs.dense.macs == measured_macs(dense, input_shape)
    assert costs.dense.params == sum(p.numel() for p in dense.parameters())
    scores = group_scores_l1(dense, graph)
    rng = np.random.default_rng(zlib.crc32(name.encode()))  # the same configurations in every process
    for _ in range(n_configs):
        ratios = rng.uniform(0.05, 1.0, size=len(graph.groups))
        kept = graph.channels_from_ratios(list(ratios), multiple=int(rng.choice([1, 1, 4])))
        w_bits = rng.choice([2, 3, 4, 8, FP32], size=len(graph.units))
        a_bits = rng.choice([2, 4, 8, FP32], size=len(graph.units))
        predicted = costs.cost(kept, w_bits, a_bits)

        model = prune_model(copy.deepcopy(dense), graph, keep_indices(scores, kept))
        assert predicted.macs == measured_macs(model, input_shape), kept
        assert predicted.params == sum(p.numel() for p in model.parameters()), kept

        modules = dict(model.named_modules())
        weights = np.array([modules[u.name].weight.numel() for u in graph.units])
        others = predicted.params - int(weights.sum())
        assert predicted.size_bits == int((weights * w_bits).sum()) + 32 * others
        unit_macs, _ = costs.unit_macs_params(kept)
        assert predicted.bitops == int((unit_macs * w_bits * a_bits).sum())
        # The pruned model still runs and its unit shapes equal the closed-form channel counts.
        c_in, c_out = costs.unit_channels(kept)
        for u in graph.units:
            m = modules[u.name]
            got = (m.in_channels, m.out_channels) if u.kind == "conv" else (m.in_features, m.out_features)
            assert got == (c_in[u.index], c_out[u.index]), u.name


def test_keep_indices_prefers_high_scores_and_is_deterministic() -> None:
    scores = [torch.tensor([0.1, 5.0, 3.0, 3.0, 0.2])]
    assert keep_indices(scores, [3])[0].tolist() == [1, 2, 3]
    assert keep_indices(scores, [2])[0].tolist() == [1, 2]


def test_pruning_a_non_prunable_group_is_refused() -> None:
    model = build_model("fmnist_cnn", num_classes=10, in_channels=1)
    graph = build_graph(model, (1, 28, 28))
    keep = [torch.arange(g.channels) for g in graph.groups]
    out = graph.units[-1].out_group
    keep[out] = torch.arange(5)
    with pytest.raises(ValueError, match="not prunable"):
        prune_model(model, graph, keep)
