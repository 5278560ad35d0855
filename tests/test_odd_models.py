"""Models outside the zoo: each compresses correctly (budget met, exported model reproduces the compressed
one, measured MACs equal the closed form) or is refused at construction naming the layer and why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from amc.agents.base import run_episode
from amc.envs import CompressionEnv

from amc.compress import Compressor, Policy
from amc.cost import CostModel
from amc.errors import AmcError
from amc.export import load_compressed, measure_cost, save_compressed
from amc.graph import build_graph

SHAPE = (1, 28, 28)

# name -> (arch spec for the exported file, units that must stay unpruned, or the refusal message)
COMPRESSIBLE = {
    "se_block": ({"_target_": "conftest.SENet"}, 0.6),
    "concat": ({"_target_": "conftest.ConcatNet"}, 0.6),
    # c1 feeds the grouped conv, so its channels stay: 0.67 of the MACs is the floor here.
    "grouped_conv": ({"_target_": "conftest.GroupedNet"}, 0.75),
    "linear_only_mlp": ({"_target_": "conftest.MLP"}, 0.6),
    "custom_elementwise_op": ({"_target_": "conftest.CustomOpNet"}, 0.6),
    "flatten_and_depthwise": ({"_target_": "conftest.FlattenNet"}, 0.6),
    # A 1-channel attention map multiplied into c1's channels: both stay whole, c2's group is searched.
    "spatial_attention": ({"_target_": "conftest.SpatialAttnNet"}, 0.6),
    # x.view(n, 16*7*7): the group read by the fixed-size view (c2's) stays whole, found by the pruned-copy check.
    "hard_coded_view": ({"_target_": "conftest.HardViewNet"}, 0.6),
}
REFUSED = {
    "module_used_twice": ({"_target_": "conftest.TwiceUsed"}, r"'shared'.*called more than once"),
}


def _build(arch: dict) -> torch.nn.Module:
    from hydra.utils import instantiate

    torch.manual_seed(0)
    return instantiate(arch).eval()


@pytest.mark.parametrize("name", sorted(COMPRESSIBLE))
@pytest.mark.parametrize("mode", ["prune", "joint"])
def test_odd_model_compresses_within_budget_and_exports(name: str, mode: str, tmp_path: Path) -> None:
    arch, budget = COMPRESSIBLE[name]
    model = _build(arch)
    graph = build_graph(model, SHAPE)
    gen = torch.Generator().manual_seed(0)
    calib = [torch.randn(16, *SHAPE, generator=gen) for _ in range(2)]
    x, y = torch.randn(32, *SHAPE, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    env = CompressionEnv(Compressor(model, graph, calibration=calib), (x, y), budgets={"macs": budget}, mode=mode)
    rng = np.random.default_rng(0)
    info = run_episode(env, rng.uniform(-1, 1, (env.n_units, env.action_dim)).astype(np.float32))
    assert info["ratio/macs"] <= budget + 1e-9
    policy = Policy.from_dict(info["policy"], graph)
    compressed = env.compressor.apply(policy)
    path = tmp_path / "c.pt"
    save_compressed(path, compressed, arch, SHAPE, env.compressor.keep(policy), info["policy"], {})
    reloaded, _ = load_compressed(path, trust_targets=[arch["_target_"]])  # the test's own model classes
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), compressed(x), rtol=0, atol=0)
    expected = CostModel(graph).cost(policy.kept, policy.w_bits, policy.a_bits)
    assert measure_cost(reloaded, SHAPE) == {"macs": expected.macs, "params": expected.params}
    for g in graph.groups:  # groups amc cannot prune say why and keep every channel
        if not g.prunable:
            assert g.reason and policy.kept[g.index] == g.channels


def test_channel_shuffle_keeps_its_channels_whole_and_the_rest_prunes_exactly() -> None:
    model = _build({"_target_": "conftest.CustomOpNet", "shuffle": True})
    graph = build_graph(model, SHAPE)
    # c1's channels are permuted between groups on their way to c2: kept whole, with a reason naming where.
    g1 = graph.groups[graph.unit("c1").out_group]
    assert not g1.prunable and "'c2'" in g1.reason and "shuffle" in g1.reason
    # c2's channels (after the shuffle) are prunable: pruning them must keep the function, i.e. equal the
    # dense model with c2's dropped channels zeroed (relu(0) = 0 and the mean of zeros feeds fc nothing).
    g2 = graph.groups[graph.unit("c2").out_group]
    assert g2.prunable
    gen = torch.Generator().manual_seed(0)
    comp = Compressor(model, graph, calibration=[torch.randn(8, *SHAPE, generator=gen)], bn_recalibration=False)
    kept = graph.full_channels()
    kept[g2.index] = g2.channels // 2
    policy = Policy(kept, [32] * len(graph.units), [32] * len(graph.units))
    pruned = comp.apply(policy)
    dropped = sorted(set(range(g2.channels)) - set(comp.keep(policy)[g2.index].tolist()))
    assert len(dropped) == g2.channels // 2
    zeroed = _build({"_target_": "conftest.CustomOpNet", "shuffle": True})
    with torch.no_grad():
        zeroed.c2.weight[dropped] = 0
        zeroed.c2.bias[dropped] = 0
        x = torch.randn(4, *SHAPE, generator=gen)
        torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_odd_model_is_refused_naming_the_layer(name: str) -> None:
    arch, message = REFUSED[name]
    with pytest.raises(AmcError, match=message):
        build_graph(_build(arch), SHAPE)
