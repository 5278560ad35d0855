"""Data modules: datasets, loaders and the seeded search split for the compression environment.

The *search split* is a fixed, seeded held-out part of the **training** set. The environment computes its
reward on it (AMC holds out 5,000 CIFAR and 3,000 ImageNet training images); the test set is never used for
the reward. ``train_dataset()`` is the training set minus the search split.

Small datasets (MNIST, Fashion-MNIST, CIFAR) stay in memory as uint8 tensors (:mod:`amc.data.tensors`:
batched augmentation, a batch sampler, the dataset view); the split itself is :func:`amc.data.split.split_indices`.
No global RNG is touched anywhere in this module.
"""

from __future__ import annotations

import copy
import logging
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Subset

from amc.data import cifar, mnist
from amc.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    imagenet_folder,
    imagenet_transforms,
    require_torchvision,
)
from amc.data.split import split_indices
from amc.data.tensors import Augmentation, Batch, BatchIndexSampler, InMemoryImageDataset
from amc.errors import AmcError

log = logging.getLogger(__name__)


class DataModule(ABC):
    """Base class: a dataset with a training part, a seeded search split and a test set.

    ``num_classes``, ``in_channels`` and ``image_size`` must match the dataset (``None`` takes the
    dataset's value); they exist so that model configs can interpolate ``${data.num_classes}`` etc.
    Nothing is read from disk until the first call that needs data (or :meth:`setup`).

    Args:
        root: folder with (or for) the dataset files.
        num_classes: number of classes.
        in_channels: image channels.
        image_size: image height and width fed to the model.
        search_size: size of the search split held out from the training set.
        split_seed: seed of the search split.
        batch_size: training batch size.
        eval_batch_size: batch size of the test and search loaders.
        num_workers: DataLoader worker processes.
        download: download missing files into ``root``.
        augment: light augmentation in :meth:`train_loader`.

    Attributes:
        location: the folder the files were read from: ``root``, or after :meth:`setup` a system folder
            searched after it (Fashion-MNIST and MNIST: Debian's ``/usr/share/datasets/...``).
    """

    NAME: ClassVar[str] = ""
    TITLE: ClassVar[str] = ""
    NUM_CLASSES: ClassVar[int] = 0
    IN_CHANNELS: ClassVar[int] = 0
    IMAGE_SIZE: ClassVar[int] = 0
    MEAN: ClassVar[tuple[float, ...]] = ()
    STD: ClassVar[tuple[float, ...]] = ()
    #: Official training-set size, for an early search_size check (``None`` if it varies).
    TRAIN_SIZE: ClassVar[int | None] = None

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        in_channels: int | None = None,
        image_size: int | None = None,
        search_size: int = 5000,
        split_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        download: bool = False,
        augment: bool = True,
    ) -> None:
        if not self.NAME:
            raise AmcError("DataModule is abstract: use FashionMNIST, MNIST, CIFAR10, CIFAR100 or ImageNet")
        given = {"num_classes": num_classes, "in_channels": in_channels, "image_size": image_size}
        actual = {
            "num_classes": self.NUM_CLASSES,
            "in_channels": self.IN_CHANNELS,
            "image_size": self.IMAGE_SIZE,
        }
        for key, value in given.items():
            if value is not None and int(value) != actual[key]:
                raise AmcError(
                    f"data.{key}={value} does not match {self.TITLE}, which has {key}={actual[key]}: "
                    f"set data.{key}={actual[key]} or choose another data config"
                )
        for key, value, low in (
            ("batch_size", batch_size, 1),
            ("eval_batch_size", eval_batch_size, 1),
            ("num_workers", num_workers, 0),
            ("search_size", search_size, 0),
        ):
            if int(value) < low:
                raise AmcError(f"data.{key}={value} is invalid: use an integer >= {low}")
        if self.TRAIN_SIZE is not None and search_size >= self.TRAIN_SIZE:
            raise AmcError(
                f"data.search_size={search_size} does not fit the {self.TRAIN_SIZE} {self.TITLE} training "
                f"images: set data.search_size between 0 and {self.TRAIN_SIZE - 1}"
            )
        self.root = str(root)
        self.location = self.root  # where the files were read from (set by setup when it is not root)
        self.num_classes, self.in_channels, self.image_size = (
            self.NUM_CLASSES,
            self.IN_CHANNELS,
            self.IMAGE_SIZE,
        )
        self.search_size, self.split_seed = int(search_size), int(split_seed)
        self.batch_size, self.eval_batch_size, self.num_workers = (
            int(batch_size),
            int(eval_batch_size),
            int(num_workers),
        )
        self.download, self.augment = bool(download), bool(augment)
        self._ready = False
        self._train_idx: Tensor | None = None
        self._search_idx: Tensor | None = None
        self._search_cache: dict[str, Batch] = {}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={self.root!r}, search_size={self.search_size}, "
            f"split_seed={self.split_seed}, batch_size={self.batch_size})"
        )

    @property
    def name(self) -> str:
        """Registry name of the dataset (e.g. ``"fashion_mnist"``)."""
        return self.NAME

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one model input."""
        return (self.in_channels, self.image_size, self.image_size)

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel normalisation mean (pixel values in [0, 1])."""
        return self.MEAN

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel normalisation standard deviation."""
        return self.STD

    def setup(self) -> None:
        """Load (and, with ``download``, fetch) the data and compute the search split; idempotent."""
        if self._ready:
            return
        n = self._load()
        if self.search_size >= n:
            raise AmcError(
                f"data.search_size={self.search_size} does not fit the {n} training images found under "
                f"{self.root}: set data.search_size between 0 and {n - 1}"
            )
        self._train_idx, self._search_idx = split_indices(n, self.search_size, self.split_seed)
        log.info(
            "%s: search split of %d of %d training images (split_seed=%d), %d left for training",
            self.TITLE,
            self.search_size,
            n,
            self.split_seed,
            n - self.search_size,
        )
        self._ready = True

    @property
    def train_indices(self) -> Tensor:
        """Positions (in the official training set) of the training part, sorted."""
        self.setup()
        assert self._train_idx is not None
        return self._train_idx

    @property
    def search_indices(self) -> Tensor:
        """Positions (in the official training set) of the search split, sorted."""
        self.setup()
        assert self._search_idx is not None
        return self._search_idx

    @abstractmethod
    def _load(self) -> int:
        """Load the data; return the size of the full training set."""

    @abstractmethod
    def train_dataset(self) -> Dataset:
        """The training set minus the search split."""

    @abstractmethod
    def search_dataset(self) -> Dataset:
        """The search split (evaluation preprocessing, no augmentation)."""

    @abstractmethod
    def test_dataset(self) -> Dataset:
        """The official test (ImageNet: validation) set."""

    @abstractmethod
    def train_loader(self, seed: int) -> DataLoader:
        """Shuffled batches of the training part, augmented when ``augment``; seeded by ``seed`` only."""

    @abstractmethod
    def test_loader(self) -> DataLoader:
        """Test set in order, ``eval_batch_size`` per batch."""

    @abstractmethod
    def search_loader(self) -> DataLoader:
        """Search split in order, ``eval_batch_size`` per batch."""

    @abstractmethod
    def calibration_batches(self, n: int, batch_size: int, seed: int) -> list[Batch]:
        """``n`` random batches of the training part (not the search split), without augmentation.

        Used for BatchNorm recalibration and activation-range calibration.

        Args:
            n: number of batches.
            batch_size: images per batch.
            seed: seed of the batch selection.
        """

    def _compute_search_tensors(self) -> Batch:
        xs, ys = [], []
        for x, y in self.search_loader():
            xs.append(x)
            ys.append(y)
        if not xs:
            return torch.empty(0, *self.input_shape), torch.empty(0, dtype=torch.int64)
        return torch.cat(xs), torch.cat(ys)

    def search_tensors(self, device: str | torch.device = "cpu") -> Batch:
        """The whole search split as normalised float images and int64 labels, cached per device.

        The returned tensors are shared by all callers: do not modify them in place.

        Args:
            device: where the tensors live.
        """
        key = str(torch.device(device))
        if key not in self._search_cache:
            if key == "cpu":
                self.setup()
                self._search_cache[key] = self._compute_search_tensors()
            else:
                x, y = self.search_tensors("cpu")
                self._search_cache[key] = (x.to(device), y.to(device))
        return self._search_cache[key]

    @staticmethod
    def _check_calibration(n: int, batch_size: int) -> None:
        if n < 0 or batch_size < 1:
            raise AmcError(
                f"calibration needs n >= 0 batches of batch_size >= 1 (got n={n}, batch_size={batch_size}): "
                "fix the calibration settings"
            )


class InMemoryDataModule(DataModule):
    """A small dataset held in memory as uint8 tensors (MNIST, Fashion-MNIST, CIFAR)."""

    AUGMENTATION: ClassVar[Augmentation] = Augmentation()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._train_images: Tensor | None = None
        self._train_labels: Tensor | None = None
        self._test_images: Tensor | None = None
        self._test_labels: Tensor | None = None

    @abstractmethod
    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Read ``(train_images, train_labels, test_images, test_labels)`` as uint8 NCHW / N arrays."""

    def _load(self) -> int:
        train_x, train_y, test_x, test_y = self._load_arrays()
        self._train_images = torch.from_numpy(np.ascontiguousarray(train_x))
        self._train_labels = torch.from_numpy(train_y.astype(np.int64))
        self._test_images = torch.from_numpy(np.ascontiguousarray(test_x))
        self._test_labels = torch.from_numpy(test_y.astype(np.int64))
        return len(train_x)

    def _view(self, split: str, augmentation: Augmentation | None = None) -> InMemoryImageDataset:
        self.setup()
        if split == "test":
            images, labels, indices = self._test_images, self._test_labels, None
        else:
            images, labels = self._train_images, self._train_labels
            indices = self._train_idx if split == "train" else self._search_idx
        assert images is not None and labels is not None
        return InMemoryImageDataset(images, labels, indices, self.MEAN, self.STD, augmentation)

    def train_dataset(self) -> InMemoryImageDataset:
        """The training set minus the search split.

        Indexing one item gives an un-augmented image; the augmentation is attached and applied to the
        seeded batch requests that :meth:`train_loader` sends.
        """
        return self._view("train", self.AUGMENTATION if self.augment else None)

    def search_dataset(self) -> InMemoryImageDataset:
        """The search split (no augmentation)."""
        return self._view("search")

    def test_dataset(self) -> InMemoryImageDataset:
        """The official test set (no augmentation)."""
        return self._view("test")

    def _loader(self, dataset: InMemoryImageDataset, batch_size: int, train: bool, seed: int) -> DataLoader:
        sampler = BatchIndexSampler(
            len(dataset),
            batch_size,
            shuffle=train,
            drop_last=train and len(dataset) >= batch_size,
            seed=seed,
            seeded=train and dataset.augmentation is not None and dataset.augmentation.active,
        )
        return DataLoader(
            dataset,
            sampler=sampler,
            batch_size=None,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(int(seed)),
            persistent_workers=self.num_workers > 0,
        )

    def train_loader(self, seed: int) -> DataLoader:
        """Shuffled training batches (full batches only), augmented when ``augment``.

        Each ``iter()`` over the loader is one epoch with a new permutation; all randomness comes from
        generators seeded with ``seed``.

        Args:
            seed: seed of the shuffling and augmentation.
        """
        return self._loader(self.train_dataset(), self.batch_size, train=True, seed=seed)

    def test_loader(self) -> DataLoader:
        """The test set in order, ``eval_batch_size`` per batch."""
        return self._loader(self.test_dataset(), self.eval_batch_size, train=False, seed=0)

    def search_loader(self) -> DataLoader:
        """The search split in order, ``eval_batch_size`` per batch."""
        return self._loader(self.search_dataset(), self.eval_batch_size, train=False, seed=0)

    def _compute_search_tensors(self) -> Batch:
        dataset = self.search_dataset()
        return dataset.batch(torch.arange(len(dataset)))

    def calibration_batches(self, n: int, batch_size: int, seed: int) -> list[Batch]:
        """``n`` random batches of the training part (not the search split), without augmentation.

        Batches are drawn without replacement until the training part is used up, then from a new
        permutation.

        Args:
            n: number of batches.
            batch_size: images per batch.
            seed: seed of the batch selection.
        """
        self._check_calibration(n, batch_size)
        dataset = self._view("train")
        generator = torch.Generator().manual_seed(int(seed))
        need = n * batch_size
        perms = [torch.randperm(len(dataset), generator=generator) for _ in range(math.ceil(need / len(dataset)))]
        order = torch.cat(perms)[:need] if perms else torch.empty(0, dtype=torch.int64)
        return [dataset.batch(order[i * batch_size : (i + 1) * batch_size]) for i in range(n)]


class _IdxDataModule(InMemoryDataModule):
    """MNIST-style data: four IDX files of 28 x 28 grayscale images with labels 0-9."""

    NUM_CLASSES, IN_CHANNELS, IMAGE_SIZE = 10, 1, 28
    TRAIN_SIZE = 60000
    AUGMENTATION = Augmentation(pad=2)
    RESOURCE: ClassVar[mnist.IdxResource]

    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        paths = mnist.locate_idx_files(self.RESOURCE, self.root, self.download)
        self.location = str(paths[mnist.TRAIN_IMAGES].parent)  # root, or a system folder (Debian's package)
        return mnist.load_idx_dataset(self.RESOURCE, self.root, self.download, self.NUM_CLASSES, paths=paths)


class FashionMNIST(_IdxDataModule):
    """Fashion-MNIST (60,000 train / 10,000 test, 28 x 28 grayscale, 10 classes).

    Files are looked up in ``root``, then in ``/usr/share/datasets/fashion-mnist`` (Debian package
    ``dataset-fashion-mnist``); with ``download`` they are fetched into ``root``. Augmentation: random
    crop after 2-pixel zero padding.
    """

    NAME = "fashion_mnist"
    TITLE = "Fashion-MNIST"
    MEAN, STD = (0.2860,), (0.3530,)
    RESOURCE = mnist.FASHION_MNIST


class MNIST(_IdxDataModule):
    """MNIST (60,000 train / 10,000 test, 28 x 28 grayscale digits, 10 classes); no flips, 2-pixel crops."""

    NAME = "mnist"
    TITLE = "MNIST"
    MEAN, STD = (0.1307,), (0.3081,)
    RESOURCE = mnist.MNIST


class _CifarDataModule(InMemoryDataModule):
    """CIFAR data from the official python archive; augmentation: 4-pixel padded random crop + h-flip."""

    IN_CHANNELS, IMAGE_SIZE = 3, 32
    TRAIN_SIZE = 50000
    AUGMENTATION = Augmentation(pad=4, flip=True)
    RESOURCE: ClassVar[cifar.CifarResource]

    def _load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return cifar.load_cifar(self.RESOURCE, self.root, self.download)


class CIFAR10(_CifarDataModule):
    """CIFAR-10 (50,000 train / 10,000 test, 32 x 32 RGB, 10 classes)."""

    NAME = "cifar10"
    TITLE = "CIFAR-10"
    NUM_CLASSES = 10
    MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    RESOURCE = cifar.CIFAR10


class CIFAR100(_CifarDataModule):
    """CIFAR-100 (50,000 train / 10,000 test, 32 x 32 RGB, 100 fine classes)."""

    NAME = "cifar100"
    TITLE = "CIFAR-100"
    NUM_CLASSES = 100
    MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    RESOURCE = cifar.CIFAR100


class ImageNet(DataModule):
    """ImageNet (ILSVRC-2012) from ``root/train/<class>/`` and ``root/val/<class>/`` via torchvision.

    torchvision is required and checked at construction. The data cannot be downloaded automatically.
    The search split (3,000 images in AMC) uses the evaluation preprocessing; :meth:`search_tensors`
    holds it in memory (about 0.6 MB per 224 x 224 image, so 1.8 GB for 3,000 images).
    """

    NAME = "imagenet"
    TITLE = "ImageNet"
    NUM_CLASSES, IN_CHANNELS, IMAGE_SIZE = 1000, 3, 224
    MEAN, STD = IMAGENET_MEAN, IMAGENET_STD

    def __init__(
        self,
        root: str,
        num_classes: int | None = None,
        in_channels: int | None = None,
        image_size: int | None = None,
        search_size: int = 3000,
        split_seed: int = 0,
        batch_size: int = 128,
        eval_batch_size: int = 250,
        num_workers: int = 8,
        download: bool = False,
        augment: bool = True,
    ) -> None:
        super().__init__(
            root,
            num_classes,
            in_channels,
            image_size,
            search_size,
            split_seed,
            batch_size,
            eval_batch_size,
            num_workers,
            download,
            augment,
        )
        require_torchvision()
        if self.download:
            raise AmcError(
                "ImageNet cannot be downloaded automatically (its license requires an account): get "
                "ILSVRC-2012 from image-net.org, unpack it into train/ and val/ class folders and set "
                "data.download=false"
            )
        self._folders: dict[str, Any] = {}

    def _load(self) -> int:
        train_tf = imagenet_transforms(True, self.image_size, self.augment)
        eval_tf = imagenet_transforms(False, self.image_size)
        train = imagenet_folder(self.root, "train", train_tf)
        # Same file list with the evaluation transform, without scanning 1.28M files a second time.
        train_eval = copy.copy(train)
        train_eval.transform = eval_tf
        if hasattr(train, "transforms"):
            train_eval.transforms = type(train.transforms)(eval_tf, getattr(train, "target_transform", None))
        self._folders = {
            "train": train,
            "train_eval": train_eval,
            "val": imagenet_folder(self.root, "val", eval_tf),
        }
        classes = len(self._folders["train"].classes)
        if classes != self.NUM_CLASSES:
            log.warning("%s/train has %d class folders, not %d", self.root, classes, self.NUM_CLASSES)
        return len(self._folders["train"])

    def train_dataset(self) -> Dataset:
        """The training set minus the search split (training preprocessing)."""
        self.setup()
        return Subset(self._folders["train"], self.train_indices.tolist())

    def search_dataset(self) -> Dataset:
        """The search split (evaluation preprocessing)."""
        self.setup()
        return Subset(self._folders["train_eval"], self.search_indices.tolist())

    def test_dataset(self) -> Dataset:
        """The official validation set."""
        self.setup()
        return self._folders["val"]

    def _eval_loader(self, dataset: Dataset, batch_size: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(0),
        )

    def train_loader(self, seed: int) -> DataLoader:
        """Shuffled training batches with the standard ImageNet training preprocessing.

        Args:
            seed: seed of the shuffling (and of the workers' augmentation seeds).
        """
        dataset = self.train_dataset()
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=RandomSampler(dataset, generator=torch.Generator().manual_seed(int(seed))),
            num_workers=self.num_workers,
            drop_last=True,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(int(seed) + 1),
            persistent_workers=self.num_workers > 0,
        )

    def test_loader(self) -> DataLoader:
        """The validation set in order."""
        return self._eval_loader(self.test_dataset(), self.eval_batch_size)

    def search_loader(self) -> DataLoader:
        """The search split in order."""
        return self._eval_loader(self.search_dataset(), self.eval_batch_size)

    def calibration_batches(self, n: int, batch_size: int, seed: int) -> list[Batch]:
        """``n`` random batches of the training part with evaluation preprocessing.

        Args:
            n: number of batches.
            batch_size: images per batch.
            seed: seed of the batch selection.
        """
        self._check_calibration(n, batch_size)
        train_idx = self.train_indices
        generator = torch.Generator().manual_seed(int(seed))
        picks = torch.randperm(len(train_idx), generator=generator)[: n * batch_size]
        subset = Subset(self._folders["train_eval"], train_idx[picks].tolist())
        return [(x, y) for x, y in self._eval_loader(subset, batch_size)][:n]


DATASETS: dict[str, type[DataModule]] = {cls.NAME: cls for cls in (FashionMNIST, MNIST, CIFAR10, CIFAR100, ImageNet)}


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def build_data(name: str, **kwargs: Any) -> DataModule:
    """Build a data module by name (``fashion_mnist``, ``mnist``, ``cifar10``, ``cifar100``, ``imagenet``).

    Dashes, underscores and case are ignored (``Fashion-MNIST`` works; ``fmnist`` too).

    Args:
        name: the dataset's name.
        **kwargs: constructor arguments (``root`` is required).

    Raises:
        AmcError: unknown name (the message lists the known ones).
    """
    aliases = {_key(k): k for k in DATASETS} | {"fmnist": "fashion_mnist"}
    canonical = aliases.get(_key(name))
    if canonical is None:
        raise AmcError(f"unknown dataset {name!r}: use one of {', '.join(sorted(DATASETS))}")
    return DATASETS[canonical](**kwargs)
