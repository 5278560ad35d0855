"""Any model, honestly (#15): the graph verifies its closed-form costs against the real model when it is
built, groups that fail are kept whole naming their layers, and the cases of ../shared/cases/any_model
(a broadcast attention map, a fixed-size view, an auxiliary head, 1-bit ranges, weights trained elsewhere,
grouped convs and a channel shuffle under an unreachable budget, occupied run directories) behave as its
README says."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from amc.agents.base import run_episode
from amc.envs import CompressionEnv
from amc.envs.compression import bit_levels
from conftest import (
    AuxHeadNet,
    ConcatNet,
    CustomOpNet,
    FlattenNet,
    GroupedNet,
    HardViewNet,
    SENet,
    SpatialAttnNet,
)
from hydra import compose, initialize_config_module
from test_pretrain import make_fmnist, tiny_data_args
from torch import nn

from amc.compress import Compressor
from amc.cost import CostModel, verify_costs
from amc.errors import AmcError
from amc.export import measure_cost
from amc.graph import ModelGraph, build_graph
from amc.models import build_model
from amc.pretrain import arch_spec, check_model, load_or_pretrain, pretrain
from amc.pruning import prune_model
from amc.schema import check_config
from amc.train import train

REPO = Path(__file__).resolve().parents[1]
MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)
KEPT_BY_CHECK = "with these channels pruned"  # how a group the pruned-copy check keeps whole starts its reason

# name -> (builder, input shape); ImageNet models at a small input (their pooling is adaptive).
ZOO: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "fmnist_cnn": (lambda: build_model("fmnist_cnn", num_classes=10, in_channels=1), MNIST),
    "plain20": (lambda: build_model("plain20", num_classes=10, in_channels=3), CIFAR),
    "resnet20": (lambda: build_model("resnet20", num_classes=10, in_channels=1), MNIST),
    "resnet32": (lambda: build_model("resnet32", num_classes=10, in_channels=3), (3, 16, 16)),
    "resnet56": (lambda: build_model("resnet56", num_classes=10, in_channels=3), (3, 16, 16)),
    "resnet50": (lambda: build_model("resnet50", num_classes=10, in_channels=3), (3, 32, 32)),
    "mobilenet_v1": (lambda: build_model("mobilenet_v1", num_classes=10, in_channels=3), (3, 32, 32)),
    "mobilenet_v1_cifar": (lambda: build_model("mobilenet_v1", num_classes=10, variant="cifar"), CIFAR),
    "mobilenet_v2": (lambda: build_model("mobilenet_v2", num_classes=10, in_channels=3), (3, 32, 32)),
    "mobilenet_v2_cifar": (lambda: build_model("mobilenet_v2", num_classes=10, variant="cifar"), CIFAR),
    "vgg16_cifar": (lambda: build_model("vgg16", num_classes=10, variant="cifar"), CIFAR),
}
# Models outside the zoo -> (class, groups kept whole by root -> words their reason must hold).
ODD: dict[str, tuple[type[nn.Module], dict[str, tuple[str, ...]]]] = {
    "spatial_attention": (SpatialAttnNet, {"c1": ("'att'", "broadcast"), "att": ("'c1'", "broadcast")}),
    "hard_view": (HardViewNet, {"c2": (KEPT_BY_CHECK, "c2, fc1", "forward pass fails")}),
    "aux_head": (AuxHeadNet, {}),
    "se_block": (SENet, {}),
    "concat": (ConcatNet, {}),
    "flatten_depthwise": (FlattenNet, {}),
    "grouped_conv": (GroupedNet, {"c1": ("'g'", "groups=2"), "g": ("'g'", "groups=2")}),
    "custom_op": (CustomOpNet, {}),
}


def _random_keep(graph: ModelGraph, rng: np.random.Generator) -> list[torch.Tensor]:
    """Random kept channel indices for every prunable group (1..all), all channels elsewhere."""
    keep = []
    for g in graph.groups:
        k = int(rng.integers(1, g.channels + 1)) if g.prunable else g.channels
        keep.append(torch.as_tensor(np.sort(rng.choice(g.channels, k, replace=False))))
    return keep


def _assert_self_verified(model: nn.Module, shape: tuple[int, ...], copies: int = 2) -> ModelGraph:
    """The graph's closed form equals flop_counter and the parameter count, dense and on random pruned copies."""
    model.eval()
    graph = build_graph(model, shape)
    cost = CostModel(graph)
    assert measure_cost(model, shape) == {"macs": cost.dense.macs, "params": cost.dense.params}
    example = torch.randn(2, *shape)
    with torch.no_grad():
        dense_shape = model(example).shape
    rng = np.random.default_rng(0)
    for _ in range(copies):
        keep = _random_keep(graph, rng)
        pruned = prune_model(copy.deepcopy(model), graph, keep).eval()
        expected = cost.cost([len(k) for k in keep])
        assert measure_cost(pruned, shape) == {"macs": expected.macs, "params": expected.params}
        with torch.no_grad():
            assert pruned(example).shape == dense_shape
    return graph


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_graph_verifies_itself(name: str) -> None:
    build, shape = ZOO[name]
    torch.manual_seed(0)
    graph = _assert_self_verified(build(), shape)
    assert graph.prunable_groups, name
    assert not [g.reason for g in graph.groups if KEPT_BY_CHECK in g.reason]  # the zoo needs no rescue


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_model_graph_verifies_itself(name: str) -> None:
    cls, whole = ODD[name]
    torch.manual_seed(0)
    graph = _assert_self_verified(cls(), MNIST)
    for g in graph.groups:
        if g.root in whole:
            assert not g.prunable and all(w in g.reason for w in whole[g.root]), (g.root, g.reason)
        elif g.consumers:  # every other group a later layer reads stays prunable
            assert g.prunable, (g.root, g.reason)


@pytest.mark.slow
def test_resnet50_224_self_check_is_proportionate() -> None:
    model = build_model("resnet50", num_classes=1000, in_channels=3).eval()
    t = time.perf_counter()
    graph = build_graph(model, (3, 224, 224))
    build = time.perf_counter() - t
    t = time.perf_counter()
    verify_costs(model, graph)
    check = time.perf_counter() - t
    assert measure_cost(model, (3, 224, 224)) == {"macs": 4_089_184_256, "params": 25_557_032}
    assert check < 0.25 * build, (check, build)  # a fraction of the routing check's forward passes


def test_a_broken_group_is_caught_and_kept_whole() -> None:
    torch.manual_seed(0)
    model = ConcatNet().eval()
    graph = build_graph(model, (1, 16, 16))
    mix = graph.unit("mix")
    gi, mult = mix.in_groups[0]
    # Break the closed form of one group without changing the dense cost: its channels count twice in 'mix'.
    mix.in_groups[0] = (gi, mult + 1)
    mix.fixed_in -= graph.groups[gi].channels
    verify_costs(model, graph)
    broken = graph.groups[gi]
    assert not broken.prunable and KEPT_BY_CHECK in broken.reason and "'mix'" in broken.reason
    assert "mix" in broken.reason.split("its layers:")[1]
    others = [g for g in graph.groups if g.index != gi and g.consumers]
    assert others and all(g.prunable for g in others)  # bisection keeps only the broken group whole


def test_a_unit_whose_dense_cost_disagrees_is_refused_naming_it() -> None:
    model = ConcatNet().eval()
    graph = build_graph(model, (1, 16, 16), check_routing=False)
    graph.unit("a").positions += 1
    with pytest.raises(AmcError, match=r"^layer 'a' costs \d+ MACs / \d+ parameters in torch.utils.flop_counter"):
        verify_costs(model, graph, pruned=False)


@pytest.mark.parametrize("cls", [SpatialAttnNet, HardViewNet])
def test_odd_model_search_runs(cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    model = cls().eval()
    graph = build_graph(model, MNIST)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, *MNIST, generator=gen), torch.randint(0, 10, (32,), generator=gen)
    env = CompressionEnv(Compressor(model, graph, calibration=[x[:16]]), (x, y), budgets={"macs": 0.5}, mode="prune")
    rng = np.random.default_rng(0)
    for _ in range(3):
        info = run_episode(env, rng.uniform(-1, 1, (env.n_units, env.action_dim)).astype(np.float32))
        assert info["ratio/macs"] <= 0.5 + 1e-9


def _env(model: nn.Module, budgets: dict[str, float], **kwargs: object) -> CompressionEnv:
    graph = build_graph(model.eval(), MNIST)
    x = torch.randn(8, *MNIST, generator=torch.Generator().manual_seed(0))
    return CompressionEnv(
        Compressor(model, graph, calibration=[x]),
        (x, torch.zeros(8, dtype=torch.long)),
        budgets=budgets,
        dense_accuracy=0.5,
        **kwargs,  # type: ignore[arg-type]
    )


def test_unreachable_grouped_conv_names_the_groups_kept_whole() -> None:
    with pytest.raises(AmcError, match=r"smallest reachable ratio is 0.6") as exc:
        _env(GroupedNet(), {"macs": 0.5}, mode="prune")
    msg = str(exc.value)
    assert "\n" not in msg and "smallest reachable ratio is 0.6" in msg
    assert "'c1': its channels feed grouped conv 'g' (groups=2)" in msg
    assert "'g': its channels come from grouped conv 'g' (groups=2)" in msg
    assert "lower env.min_keep" not in msg and "2-bit units would still give 0.5" in msg  # nothing else can help


def test_unreachable_shuffle_gives_only_advice_that_helps() -> None:
    shuffle = CustomOpNet(shuffle=True)
    with pytest.raises(AmcError, match=r"'c1': its channels reach 'c2'") as exc:
        _env(shuffle, {"macs": 0.1}, mode="prune")
    msg = str(exc.value)
    assert "'c1': its channels reach 'c2'" in msg and "shuffle" in msg
    assert "lower env.min_keep" not in msg and "raise the budget to at least 0.4" in msg
    with pytest.raises(AmcError, match=r"or lower env.min_keep"):  # here a lower min_keep does reach 0.3
        _env(shuffle, {"macs": 0.3}, mode="prune")
    with pytest.raises(AmcError, match=r"or quantize too$"):  # float units in prune mode: quantizing helps size
        _env(shuffle, {"size": 0.2}, mode="prune")


def test_one_bit_ranges_are_refused_in_one_line() -> None:
    for lo, hi in ((1, 6), (1, 1)):
        with pytest.raises(AmcError, match=rf"bit range {lo}..{hi} asks for 1-bit values.*min_bits >= 2"):
            bit_levels(lo, hi)
    with pytest.raises(AmcError, match=r"bit range 1..6 asks for 1-bit values"):  # the Python API
        _env(SENet(), {"size": 0.1}, mode="quantize", w_bits=(1, 6))
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        for key in ("env.w_bits=[1,6]", "env.a_bits=[1,1]"):
            with pytest.raises(AmcError, match=r"asks for 1-bit values"):
                check_config(compose("train", overrides=["env=quantize", key]), "train")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("any_model")
    make_fmnist(root / "fm", n_train=300, n_test=60)
    return root


def _compose(name: str, root: Path, *extra: str) -> object:
    with initialize_config_module(config_module="amc.conf", version_base="1.3"):
        return compose(name, overrides=[*tiny_data_args(root), *extra])


def test_aux_head_is_refused_before_training(tiny: Path) -> None:
    cfg = _compose("pretrain", tiny, "model._target_=conftest.AuxHeadNet")
    with pytest.raises(AmcError, match=r"^the model returns a tuple in training mode, not one logits tensor"):
        load_or_pretrain(cfg)  # type: ignore[arg-type]
    assert not list(tiny.rglob("AuxHeadNet*"))  # nothing trained or cached


def test_user_model_without_data_arguments(tiny: Path) -> None:
    cfg = _compose("pretrain", tiny, "model._target_=conftest.NoArgNet", "pretrain.epochs=1")
    assert arch_spec(cfg.model) == {"_target_": "conftest.NoArgNet"}  # type: ignore[attr-defined]
    model, meta = load_or_pretrain(cfg)  # type: ignore[arg-type]
    assert isinstance(model, nn.Module) and 0.0 <= meta["test_top1"] <= 1.0


def test_pretrain_weights_report_the_loaded_accuracy(tiny: Path) -> None:
    weights = tiny / "elsewhere.pt"
    torch.save(build_model("fmnist_cnn", num_classes=10, in_channels=1).state_dict(), weights)
    meta = pretrain(_compose("pretrain", tiny, f"pretrain.weights={weights}"))  # type: ignore[arg-type]
    assert meta["user_weights"] and 0.0 <= meta["test_top1"] <= 1.0


def test_unreachable_budget_fails_before_pretraining(tiny: Path, tmp_path: Path) -> None:
    cfg = _compose(
        "train", tiny, "budgets.latency=null", "budgets.macs=0.001", "pretrain.seed=123", f"output_dir={tmp_path}"
    )
    t = time.perf_counter()
    with pytest.raises(AmcError, match=r"budget macs=0.001 is unreachable"):
        train(cfg)  # type: ignore[arg-type]
    assert not list(tiny.rglob("pretrained/fmnist_cnn*"))  # no baseline was trained for it
    assert time.perf_counter() - t < 10


def test_check_model_leaves_the_model_and_rng_alone(tiny: Path) -> None:
    cfg = _compose("pretrain", tiny)
    from hydra.utils import instantiate

    data = instantiate(cfg.data)  # type: ignore[attr-defined]
    model = build_model("fmnist_cnn", num_classes=10, in_channels=1)
    state = copy.deepcopy(model.state_dict())
    torch.manual_seed(5)
    check_model(model, data)
    after = torch.rand(1)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(1))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "amc.train", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_occupied_run_dir_stays_byte_identical(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
    (run / "summary.json").write_text("{}")
    before = _digests(run)
    res = _cli(f"hydra.run.dir={run}", "seed=1")
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: {run} already holds a finished search; continue it with resume={run}, write elsewhere "
        "(hydra.run.dir=...), or pass overwrite=true to replace it"
    ]
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "episodes.csv").write_text("episode\n")
    res2 = _cli("-m", "seed=0,1", f"hydra.sweep.dir={sweep}")
    assert res2.returncode == 2 and "job 0 of this sweep" in res2.stderr and "an unfinished search" in res2.stderr
    res3 = _cli("-m", "seed=0,1", f"hydra.sweep.dir={tmp_path / 'same'}", "hydra.sweep.subdir=same")
    assert res3.returncode == 2 and "jobs 0 and 1 of this sweep would both write" in res3.stderr
    assert _digests(run) == before and sorted(_digests(sweep)) == ["0/episodes.csv"]
    assert not (tmp_path / "same").exists()
