"""Locating, downloading and reading the MNIST and Fashion-MNIST IDX files."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from amc.data.download import download_file
from amc.data.idx import read_idx
from amc.errors import AmcError

log = logging.getLogger(__name__)

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"


@dataclass(frozen=True)
class IdxResource:
    """Where an MNIST-style dataset lives and how to get it.

    Attributes:
        title: human-readable dataset name used in messages.
        mirrors: base URLs (ending in ``/``) tried in order; each holds the four ``.gz`` files.
        md5: official MD5 of each ``.gz`` file, keyed by the file's name without ``.gz``.
        system_dirs: folders searched after ``root`` (e.g. the Debian package's folder).
        install_hint: how to get the files without ``download=true``.
    """

    title: str
    mirrors: tuple[str, ...]
    md5: dict[str, str]
    system_dirs: tuple[str, ...] = ()
    install_hint: str = ""


FASHION_MNIST = IdxResource(
    title="Fashion-MNIST",
    mirrors=(
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
    md5={
        TRAIN_IMAGES: "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        TRAIN_LABELS: "25c81989df183df01b3e8a0aad5dffbe",
        TEST_IMAGES: "bef4ecab320f06d8554ea6380940ec79",
        TEST_LABELS: "bb300cfdad3c16e7a12a480ee83cd310",
    },
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    install_hint="run `apt-get install dataset-fashion-mnist` or set data.download=true",
)

MNIST = IdxResource(
    title="MNIST",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    md5={
        TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
        TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
        TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
    },
    install_hint="set data.download=true or copy the four *-ubyte.gz files there",
)

_FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def locate_idx_files(resource: IdxResource, root: str | Path, download: bool = False) -> dict[str, Path]:
    """Find the four IDX files of ``resource``: in ``root``, then in its system folders, else download.

    All four files must come from one folder (gzipped ``name.gz`` or raw ``name``). With ``download`` the
    missing files are fetched into ``root`` and checked against the official MD5s. Files that are found
    locally are not checksummed (distribution packages may recompress them); the IDX reader validates them.

    Args:
        resource: the dataset description (:data:`FASHION_MNIST` or :data:`MNIST`).
        root: the configured data folder.
        download: fetch missing files into ``root``.

    Returns:
        Path of each file keyed by its name without ``.gz``.

    Raises:
        AmcError: the files are missing and ``download`` is off, or the download failed.
    """
    root = Path(root).expanduser()
    folders = [root, *(Path(d) for d in resource.system_dirs)]
    for folder in folders:
        found = {name: _find(folder, name) for name in _FILES}
        if all(found.values()):
            return {name: path for name, path in found.items() if path is not None}
    if not download:
        where = " or ".join(str(f) for f in folders)
        raise AmcError(f"{resource.title} files not found under {where}: {resource.install_hint}")
    paths: dict[str, Path] = {}
    for name in _FILES:
        existing = _find(root, name)
        if existing is not None:
            paths[name] = existing
            continue
        urls = [base + f"{name}.gz" for base in resource.mirrors]
        paths[name] = download_file(urls, root / f"{name}.gz", resource.md5[name])
    return paths


def _check_pair(images: np.ndarray, labels: np.ndarray, img_path: Path, lbl_path: Path, classes: int) -> None:
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise AmcError(
            f"{img_path} holds a {images.dtype} array of shape {images.shape}, not N x 28 x 28 uint8 images: "
            "delete it and download it again"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise AmcError(
            f"{lbl_path} holds a {labels.dtype} array of shape {labels.shape}, not uint8 labels: "
            "delete it and download it again"
        )
    if len(labels) != len(images):
        raise AmcError(
            f"{lbl_path} has {len(labels)} labels but {img_path} has {len(images)} images: "
            "delete both and download them again"
        )
    if len(labels) and int(labels.max()) >= classes:
        raise AmcError(
            f"{lbl_path} has label {int(labels.max())} but there are only {classes} classes: "
            "delete it and download it again"
        )


def load_idx_dataset(
    resource: IdxResource,
    root: str | Path,
    download: bool = False,
    num_classes: int = 10,
    paths: dict[str, Path] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load an MNIST-style dataset as uint8 arrays.

    Args:
        resource: the dataset description.
        root: the configured data folder.
        download: fetch missing files into ``root``.
        num_classes: labels must be below this.
        paths: the four files when the caller already located them (:func:`locate_idx_files`); else found here.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``; images are ``N x 1 x 28 x 28`` uint8,
        labels ``N`` uint8.

    Raises:
        AmcError: missing, corrupt or inconsistent files.
    """
    start = time.perf_counter()
    paths = paths if paths is not None else locate_idx_files(resource, root, download)
    arrays = {name: read_idx(path) for name, path in paths.items()}
    out = []
    for img, lbl in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        _check_pair(arrays[img], arrays[lbl], paths[img], paths[lbl], num_classes)
        out += [arrays[img][:, None], arrays[lbl]]
    log.info(
        "loaded %s from %s (%d train, %d test) in %.2fs",
        resource.title,
        paths[TRAIN_IMAGES].parent,
        len(out[0]),
        len(out[2]),
        time.perf_counter() - start,
    )
    return out[0], out[1], out[2], out[3]
