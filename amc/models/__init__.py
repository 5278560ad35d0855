"""Model zoo: plain-PyTorch networks that trace cleanly with torch-pruning's dependency graph.

Every factory has the signature ``(num_classes=10, in_channels=3, **options) -> nn.Module``
(``fmnist_cnn`` defaults to ``in_channels=1``). Use :func:`build_model` to build one by name, or the
Hydra configs in ``conf/model/`` which point at the factories directly.

A model of your own (``model._target_=my.pkg.Net``) is any class or factory returning an ``nn.Module``
whose ``forward`` takes one batch ``(N, C, H, W)`` and returns one logits tensor ``(N, classes)`` in
eval and train mode. The configs pass ``num_classes`` and ``in_channels`` from the data; a constructor
that takes neither (nor ``**kwargs``) is built without them (:func:`accepted_arguments`).
"""

from __future__ import annotations

import inspect
import pydoc
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


DATA_ARGUMENTS = ("num_classes", "in_channels")
"""Constructor arguments the model configs fill in from the data config."""


def accepted_arguments(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (a ``_target_`` and its arguments) without the :data:`DATA_ARGUMENTS` its target does not take.

    A target that cannot be resolved or inspected keeps every argument (building it reports the problem).

    Args:
        spec: a model config as a plain dict.
    """
    target = spec.get("_target_")
    if not isinstance(target, str) or not any(k in spec for k in DATA_ARGUMENTS):
        return spec
    try:
        params = inspect.signature(pydoc.locate(target)).parameters.values()  # type: ignore[arg-type]
    except (pydoc.ErrorDuringImport, ValueError, TypeError):
        return spec
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return spec
    names = {p.name for p in params}
    return {k: v for k, v in spec.items() if k not in DATA_ARGUMENTS or k in names}


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
    "DATA_ARGUMENTS",
    "MODELS",
    "accepted_arguments",
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
