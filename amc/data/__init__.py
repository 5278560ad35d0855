"""Datasets, loaders and the seeded search split (MNIST, Fashion-MNIST, CIFAR-10/100, ImageNet).

Use :func:`build_data` or Hydra (``conf/data/*.yaml``, ``_target_: amc.data.FashionMNIST`` ...) to get a
:class:`DataModule`; see :mod:`amc.data.module` for what it provides
(the search split is in :mod:`amc.data.split`, the in-memory tensors in :mod:`amc.data.tensors`).
"""

from amc.data.cifar import CifarUnpickler, load_cifar_pickle, write_cifar_batch
from amc.data.download import check_md5, download_file, md5_file, safe_extract_tar, verify_md5
from amc.data.idx import read_idx, write_idx
from amc.data.module import (
    CIFAR10,
    CIFAR100,
    DATASETS,
    MNIST,
    DataModule,
    FashionMNIST,
    ImageNet,
    InMemoryDataModule,
    build_data,
)
from amc.data.split import split_indices
from amc.data.tensors import Augmentation, InMemoryImageDataset

__all__ = [
    "CIFAR10",
    "CIFAR100",
    "DATASETS",
    "MNIST",
    "Augmentation",
    "CifarUnpickler",
    "DataModule",
    "FashionMNIST",
    "ImageNet",
    "InMemoryDataModule",
    "InMemoryImageDataset",
    "build_data",
    "check_md5",
    "download_file",
    "load_cifar_pickle",
    "md5_file",
    "read_idx",
    "safe_extract_tar",
    "split_indices",
    "verify_md5",
    "write_cifar_batch",
    "write_idx",
]
