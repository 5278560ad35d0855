"""Model zoo: plain-PyTorch networks that trace cleanly with torch-pruning's dependency graph.

Every factory has the signature ``(num_classes=10, in_channels=3, **options) -> nn.Module``
(``fmnist_cnn`` defaults to ``in_channels=1``). Use :func:`build_model` to build one by name, or the
Hydra configs in ``conf/model/`` which point at the factories directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from amc.errors import AmcError
from amc.models.layers import make_divisible
from amc.models.mobilenet import mobilenet_v1, mobilenet_v2
from amc.models.resnet_cifar import cifar_resnet, plain20, resnet20, resnet32, resnet56
from amc.models.resnet_imagenet import resnet50
from amc.models.small import fmnist_cnn
from amc.models.vgg import vgg16

MODELS: dict[str, Callable[..., nn.Module]] = {
    "fmnist_cnn": fmnist_cnn,
    "plain20": plain20,
    "resnet20": resnet20,
    "resnet32": resnet32,
    "resnet56": resnet56,
    "resnet50": resnet50,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "vgg16": vgg16,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name.

    Args:
        name: a key of :data:`MODELS`.
        **kwargs: passed to the factory, e.g. ``num_classes``, ``in_channels``, ``variant``.

    Returns:
        The freshly initialised model.

    Raises:
        AmcError: if ``name`` is not registered.
    """
    try:
        factory = MODELS[name]
    except KeyError:
        raise AmcError(f"unknown model {name!r}; choose one of {', '.join(sorted(MODELS))}") from None
    return factory(**kwargs)


__all__ = [
    "MODELS",
    "build_model",
    "cifar_resnet",
    "fmnist_cnn",
    "make_divisible",
    "mobilenet_v1",
    "resnet50",
    "mobilenet_v2",
    "plain20",
    "resnet20",
    "resnet32",
    "resnet56",
    "vgg16",
]
