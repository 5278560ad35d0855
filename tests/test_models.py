"""Tests for the model zoo: published sizes, output shapes, registry, Hydra configs and prunability."""

from __future__ import annotations

import inspect
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from hydra.utils import get_method, instantiate
from omegaconf import OmegaConf
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from amc.errors import AmcError
from amc.models import MODELS, build_model, make_divisible

torch.set_num_threads(1)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"

# (registry name, factory options, input shape without batch): the natural input of every small/CIFAR model.
SMALL_MODELS: list[tuple[str, dict, tuple[int, int, int]]] = [
    ("fmnist_cnn", {"in_channels": 1}, (1, 28, 28)),
    ("plain20", {}, (3, 32, 32)),
    ("resnet20", {}, (3, 32, 32)),
    ("resnet32", {}, (3, 32, 32)),
    ("resnet56", {}, (3, 32, 32)),
    ("resnet20", {"in_channels": 1}, (1, 28, 28)),
    ("plain20", {"in_channels": 1}, (1, 28, 28)),
    ("mobilenet_v1", {"variant": "cifar"}, (3, 32, 32)),
    ("mobilenet_v2", {"variant": "cifar"}, (3, 32, 32)),
    ("mobilenet_v2", {"variant": "cifar", "width_mult": 0.5}, (3, 32, 32)),
    ("vgg16", {"variant": "cifar"}, (3, 32, 32)),
    ("resnet50", {"in_channels": 1}, (1, 28, 28)),
]
IMAGENET_MODELS: list[tuple[str, dict]] = [
    ("mobilenet_v1", {}),
    ("mobilenet_v2", {}),
    ("vgg16", {}),
    ("vgg16", {"batch_norm": True}),
    ("resnet50", {}),
]


def _ids(cases: list) -> list[str]:
    return ["-".join([case[0], *(f"{k}={v}" for k, v in case[1].items())]) for case in cases]


def count_macs(model: nn.Module, shape: tuple[int, ...], device: str = "cpu") -> float:
    """Multiply-accumulates of one forward pass at batch 1 (conv and linear only)."""
    model.eval()
    x = torch.empty(1, *shape, device=device) if device == "meta" else torch.randn(1, *shape)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() / 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_on_meta(name: str, **kwargs) -> nn.Module:
    # Meta tensors carry shapes only, so even VGG-16's 138 M parameters cost no memory or init time.
    with torch.device("meta"):
        return build_model(name, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Published sizes of the ImageNet networks


@pytest.mark.parametrize(
    ("name", "kwargs", "published_macs", "published_params"),
    [
        # Howard et al. 2017, table 8: 569 M mult-adds, 4.2 M parameters.
        ("mobilenet_v1", {}, 569e6, 4.2e6),
        # Sandler et al. 2018, table 4: 300 M MACs, "3.4 M" parameters, rounded down from the 3.47 M of the
        # TF-slim release; PyTorch also counts BatchNorm scales (about 34 k more), so compare with 3.47 M.
        ("mobilenet_v2", {}, 300e6, 3.47e6),
        # Simonyan and Zisserman 2015: 138 M parameters; 15.5 G MACs is the commonly quoted cost.
        ("vgg16", {}, 15.5e9, 138e6),
        ("vgg16", {"batch_norm": True}, 15.5e9, 138e6),
    ],
    ids=["mobilenet_v1", "mobilenet_v2", "vgg16", "vgg16_bn"],
)
def test_imagenet_models_match_published_sizes(
    name: str, kwargs: dict, published_macs: float, published_params: float
) -> None:
    model = build_on_meta(name, num_classes=1000, **kwargs)
    assert count_macs(model, (3, 224, 224), device="meta") == pytest.approx(published_macs, rel=0.015)
    assert count_params(model) == pytest.approx(published_params, rel=0.015)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("mobilenet_v2", {}, 3_504_872),
        ("vgg16", {}, 138_357_544),
        ("vgg16", {"batch_norm": True}, 138_365_992),
    ],
    ids=["mobilenet_v2", "vgg16", "vgg16_bn"],
)
def test_imagenet_models_have_torchvision_parameter_counts(name: str, kwargs: dict, expected: int) -> None:
    # torchvision's exact counts: the architectures (and state-dict layouts) are the reference ones.
    assert count_params(build_on_meta(name, num_classes=1000, **kwargs)) == expected


def test_meta_device_mac_count_matches_cpu() -> None:
    # The published-size test relies on FlopCounterMode seeing the same ops on meta tensors as on CPU.
    torch.manual_seed(0)
    cpu = count_macs(build_model("mobilenet_v2", variant="cifar"), (3, 32, 32))
    meta = count_macs(build_on_meta("mobilenet_v2", variant="cifar"), (3, 32, 32), device="meta")
    assert cpu == meta > 0


# ---------------------------------------------------------------------------------------------------------
# Shapes and registry


@pytest.mark.parametrize(("name", "kwargs", "shape"), SMALL_MODELS, ids=_ids(SMALL_MODELS))
def test_small_models_produce_logits(name: str, kwargs: dict, shape: tuple[int, int, int]) -> None:
    model = build_model(name, num_classes=7, **kwargs).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(("name", "kwargs"), IMAGENET_MODELS, ids=_ids(IMAGENET_MODELS))
def test_imagenet_models_produce_logits(name: str, kwargs: dict) -> None:
    model = build_on_meta(name, num_classes=1000, **kwargs).eval()
    assert model(torch.empty(2, 3, 224, 224, device="meta")).shape == (2, 1000)


def test_every_registry_model_is_covered() -> None:
    assert {case[0] for case in SMALL_MODELS} == set(MODELS)
    assert {case[0] for case in IMAGENET_MODELS} == {"mobilenet_v1", "mobilenet_v2", "vgg16", "resnet50"}


def test_unknown_model_error_lists_the_choices() -> None:
    with pytest.raises(AmcError, match=r"unknown model 'resnet21'; choose one of .*resnet20") as info:
        build_model("resnet21")
    assert all(name in str(info.value) for name in MODELS)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("mobilenet_v1", {"variant": "tiny"}, "variant='tiny' is unknown"),
        ("mobilenet_v2", {"width_mult": 0.0}, "width_mult=0.0 must be positive"),
        ("vgg16", {"variant": "mnist"}, "variant='mnist' is unknown"),
        ("fmnist_cnn", {"widths": [8, 16]}, "give exactly 5"),
    ],
)
def test_bad_options_raise_amc_error(name: str, kwargs: dict, match: str) -> None:
    with pytest.raises(AmcError, match=match):
        build_model(name, **kwargs)


def test_cifar_resnet_rejects_bad_depth() -> None:
    from amc.models import cifar_resnet

    with pytest.raises(AmcError, match="6n\\+2"):
        cifar_resnet(21)


def test_make_divisible() -> None:
    assert make_divisible(32) == 32
    assert make_divisible(24 * 0.5) == 16  # 12 rounds up to 16, not down to 8 (never >10% below)
    assert make_divisible(320 * 0.75) == 240
    assert make_divisible(3) == 8


# ---------------------------------------------------------------------------------------------------------
# Sizes of the small models


def test_fmnist_cnn_is_a_few_million_macs() -> None:
    model = build_model("fmnist_cnn", in_channels=1)
    macs = count_macs(model, (1, 28, 28))
    assert 4e6 <= macs <= 7e6
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) >= 5


def test_resnet20_and_plain20_sizes() -> None:
    resnet = build_model("resnet20")
    plain = build_model("plain20")
    # The paper's 0.27 M (option A, 269,722 with 10 classes) plus two 1x1 projection shortcuts with BN.
    assert 270_000 <= count_params(resnet) <= 275_000
    assert count_params(plain) == 269_722
    assert 40e6 <= count_macs(resnet, (3, 32, 32)) <= 42e6
    assert count_params(build_model("resnet32")) == pytest.approx(0.46e6, rel=0.03)
    assert count_params(build_model("resnet56")) == pytest.approx(0.85e6, rel=0.03)


def test_resnet50_matches_the_reference_size() -> None:
    # 25,557,032 parameters and 4.09 G MACs at 224x224: the published ResNet-50 (v1.5) numbers.
    model = build_model("resnet50")
    assert count_params(build_model("resnet50", num_classes=1000)) == 25_557_032
    assert count_macs(model, (3, 224, 224)) == pytest.approx(4.09e9, rel=0.01)


def _conv_groups(model: nn.Module, shape: tuple[int, ...]) -> list[set[str]]:
    """For each pruning group rooted at a conv, the names of convs whose output channels it removes."""
    model.eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, *shape))
    names = {module: name for name, module in model.named_modules()}
    groups = []
    for group in graph.get_all_groups(root_module_types=[nn.Conv2d]):
        groups.append(
            {
                names[dep.target.module]
                for dep, _ in group
                if isinstance(dep.target.module, nn.Conv2d) and graph.is_out_channel_pruning_fn(dep.handler)
            }
        )
    return groups


def test_residual_adds_couple_convs_into_shared_pruning_groups() -> None:
    plain_groups = _conv_groups(build_model("plain20"), (3, 32, 32))
    resnet_groups = _conv_groups(build_model("resnet20"), (3, 32, 32))

    # Plain-20: 19 3x3 convs, nothing added together, so every conv is pruned on its own.
    assert len(plain_groups) == 19
    assert all(len(group) == 1 for group in plain_groups)

    # ResNet-20: the 19 3x3 convs plus 2 projection shortcuts. Per stage, the convs feeding the residual
    # sum (stem or shortcut, and each block's second conv) share one group; first convs stay alone.
    shared = sorted((group for group in resnet_groups if len(group) > 1), key=sorted)
    assert shared == sorted(
        [
            {"stem.0", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"},
            {"layer2.0.shortcut.0", "layer2.0.conv2", "layer2.1.conv2", "layer2.2.conv2"},
            {"layer3.0.shortcut.0", "layer3.0.conv2", "layer3.1.conv2", "layer3.2.conv2"},
        ],
        key=sorted,
    )
    assert sum(len(group) == 1 for group in resnet_groups) == 9
    assert sum(len(group) for group in resnet_groups) == 21


# ---------------------------------------------------------------------------------------------------------
# Traceability


@pytest.mark.parametrize(("name", "kwargs", "shape"), SMALL_MODELS, ids=_ids(SMALL_MODELS))
def test_dependency_graph_builds_and_every_group_prunes(name: str, kwargs: dict, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    example = torch.randn(1, *shape)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    # The classifier's outputs are the logits; they are never pruned.
    head = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    roots = [
        (group[0].dep.target.module, group[0].dep.handler)
        for group in graph.get_all_groups(ignored_layers=[head], root_module_types=[nn.Conv2d, nn.Linear])
    ]
    assert roots, "no prunable groups found"
    params_before = count_params(model)
    for module, handler in roots:
        group = graph.get_pruning_group(module, handler, idxs=[0])
        assert graph.check_pruning_group(group)
        group.prune()
    assert count_params(model) < params_before
    with torch.no_grad():
        logits = model(torch.randn(2, *shape))
    assert logits.shape == (2, 10)


@pytest.mark.parametrize(("name", "kwargs", "shape"), SMALL_MODELS, ids=_ids(SMALL_MODELS))
def test_each_module_runs_once_per_forward(name: str, kwargs: dict, shape: tuple[int, int, int]) -> None:
    model = build_model(name, **kwargs).eval()
    calls: Counter[str] = Counter()
    handles = [
        module.register_forward_hook(lambda *_, name=module_name: calls.update([name]))
        for module_name, module in model.named_modules()
        if not list(module.children())
    ]
    with torch.no_grad():
        model(torch.randn(1, *shape))
    for handle in handles:
        handle.remove()
    leaves = {module_name for module_name, module in model.named_modules() if not list(module.children())}
    assert set(calls) == leaves, f"unused modules: {sorted(leaves - set(calls))}"
    assert all(count == 1 for count in calls.values()), [n for n, c in calls.items() if c > 1]


# ---------------------------------------------------------------------------------------------------------
# Hydra configs

EXPECTED_CONFIGS = {
    "fmnist_cnn": ("fmnist_cnn", {}),
    "plain20": ("plain20", {}),
    "resnet20": ("resnet20", {}),
    "resnet32": ("resnet32", {}),
    "resnet56": ("resnet56", {}),
    "mobilenet_v1": ("mobilenet_v1", {"variant": "imagenet"}),
    "mobilenet_v1_cifar": ("mobilenet_v1", {"variant": "cifar"}),
    "mobilenet_v2": ("mobilenet_v2", {"variant": "imagenet"}),
    "mobilenet_v2_cifar": ("mobilenet_v2", {"variant": "cifar"}),
    "vgg16": ("vgg16", {"variant": "imagenet"}),
    "vgg16_cifar": ("vgg16", {"variant": "cifar"}),
}


def test_config_files_cover_the_registry() -> None:
    stems = {path.stem for path in CONF_DIR.glob("*.yaml")}
    assert set(EXPECTED_CONFIGS) <= stems
    assert set(MODELS) <= stems


@pytest.mark.parametrize("config_name", sorted(EXPECTED_CONFIGS))
def test_config_instantiates_the_registry_factory(config_name: str) -> None:
    registry_name, expected_options = EXPECTED_CONFIGS[config_name]
    model_cfg = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    data = {"num_classes": 5, "in_channels": 1, "image_size": 32}
    root = OmegaConf.create({"data": data, "model": model_cfg})
    cfg = OmegaConf.to_container(root.model, resolve=True)
    assert isinstance(cfg, dict)

    factory = get_method(cfg["_target_"])
    assert factory is MODELS[registry_name]
    options = {key: value for key, value in cfg.items() if key != "_target_"}
    inspect.signature(factory).bind(**options)
    assert {key: options[key] for key in expected_options} == expected_options
    assert options["num_classes"] == 5 and options["in_channels"] == 1

    with torch.device("meta"):
        model = instantiate(root.model)
    size = 224 if expected_options.get("variant") == "imagenet" else 32
    assert model(torch.empty(1, 1, size, size, device="meta")).shape == (1, 5)
