"""ImageNet (ILSVRC-2012) as ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` folders, via torchvision."""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from amc.errors import AmcError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def require_torchvision() -> ModuleType:
    """Import torchvision or raise a one-line :class:`AmcError` saying how to install it.

    Raises:
        AmcError: torchvision is missing or does not import with this torch.
    """
    try:
        import torchvision
    except Exception as exc:  # noqa: BLE001 - a broken install raises more than ImportError
        version = torch.__version__.split("+")[0]
        raise AmcError(
            f"ImageNet loading needs torchvision, which cannot be imported here "
            f"({type(exc).__name__}: {exc}): pip install torchvision matching your torch ({version})"
        ) from exc
    return torchvision


def imagenet_transforms(train: bool, image_size: int = 224, augment: bool = True) -> Any:
    """The standard ImageNet preprocessing.

    Training (with ``augment``): ``RandomResizedCrop(image_size)`` and a horizontal flip; otherwise (and for
    evaluation): resize the short side to ``image_size * 256 / 224`` and center-crop ``image_size``. Both end
    with ``ToTensor`` and the ImageNet mean/std normalisation.

    Args:
        train: build the training pipeline.
        image_size: the crop size.
        augment: use random crops and flips for training.
    """
    tv = require_torchvision()
    t = tv.transforms
    if train and augment:
        head = [t.RandomResizedCrop(image_size), t.RandomHorizontalFlip()]
    else:
        head = [t.Resize(round(image_size * 256 / 224)), t.CenterCrop(image_size)]
    return t.Compose([*head, t.ToTensor(), t.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def imagenet_folder(root: str | Path, split: str, transform: Any) -> Any:
    """A torchvision ``ImageFolder`` over ``root/split`` after checking the layout.

    Args:
        root: the folder holding ``train/`` and ``val/``.
        split: ``"train"`` or ``"val"``.
        transform: the per-image transform.

    Raises:
        AmcError: the folder is missing or holds no class sub-folders (e.g. a flat ``val/``).
    """
    tv = require_torchvision()
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise AmcError(
            f"ImageNet folder {folder} not found: set data.root to the folder holding train/ and val/ "
            "(ImageNet cannot be downloaded automatically; get it from image-net.org)"
        )
    if not any(p.is_dir() for p in folder.iterdir()):
        raise AmcError(
            f"{folder} has no class sub-folders: sort the images into one folder per class "
            "(e.g. with the usual valprep.sh for val/)"
        )
    try:
        return tv.datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise AmcError(f"cannot read ImageNet images under {folder} ({exc}): check the folder layout") from exc
