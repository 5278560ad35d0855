"""CIFAR-10 / CIFAR-100 in the official "python version" layout, read with a restricted unpickler.

The official archives hold Python 2 pickles of dicts with ``b"data"`` (an ``N x 3072`` uint8 numpy array,
channel-major) and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). Pickle can run arbitrary
code, so :class:`CifarUnpickler` resolves only the three numpy globals that such files reference.
"""

from __future__ import annotations

import logging
import pickle
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from amc.data.download import download_file, safe_extract_tar, verify_md5
from amc.errors import AmcError

log = logging.getLogger(__name__)

try:  # numpy >= 2
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

#: The only globals a CIFAR pickle may reference, mapped to the objects they resolve to.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that refuses every global except the numpy array reconstruction helpers."""

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` only if it is in :data:`ALLOWED_GLOBALS`.

        Raises:
            pickle.UnpicklingError: for anything else (e.g. ``os.system``).
        """
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR file") from None


def load_cifar_pickle(path: str | Path) -> dict[str, Any]:
    """Unpickle one CIFAR batch file safely.

    Args:
        path: the batch file (e.g. ``data_batch_1`` or ``train``).

    Returns:
        The dict with its keys decoded to ``str`` (``"data"``, ``"labels"``, ...).

    Raises:
        AmcError: the file is missing, corrupt, or references a forbidden global.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            obj = CifarUnpickler(fh, encoding="latin1").load()
    except FileNotFoundError as exc:
        raise AmcError(f"{path} does not exist: check data.root or set data.download=true") from exc
    except pickle.UnpicklingError as exc:
        raise AmcError(
            f"{path} is corrupt or not a CIFAR batch ({exc}): delete it and extract the official archive again"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any failure inside pickle means a corrupt file
        raise AmcError(
            f"{path} is corrupt or truncated ({type(exc).__name__}: {exc}): "
            "delete it and extract the official archive again"
        ) from exc
    if not isinstance(obj, dict):
        raise AmcError(
            f"{path} holds a {type(obj).__name__}, not a CIFAR batch dict: "
            "delete it and extract the official archive again"
        )
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def read_cifar_batch(path: str | Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file into ``N x 3 x 32 x 32`` uint8 images and uint8 labels.

    Args:
        path: the batch file.
        label_key: ``"labels"`` (CIFAR-10) or ``"fine_labels"`` (CIFAR-100).
        num_classes: labels must be below this.

    Raises:
        AmcError: missing keys, wrong shapes or out-of-range labels.
    """
    path = Path(path)
    batch = load_cifar_pickle(path)
    fix = "delete it and extract the official archive again"
    if "data" not in batch or label_key not in batch:
        raise AmcError(f"{path} has no {'data' if 'data' not in batch else label_key!r} entry: {fix}")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise AmcError(f"{path}: 'data' is {type(data).__name__} {shape}, not N x 3072 uint8: {fix}")
    try:
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise AmcError(f"{path}: {label_key!r} is not a list of integers: {fix}") from exc
    if labels.shape != (data.shape[0],):
        raise AmcError(f"{path}: {labels.shape[0] if labels.ndim else 0} labels for {data.shape[0]} images: {fix}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise AmcError(f"{path}: labels outside 0..{num_classes - 1}: {fix}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.uint8)


@dataclass(frozen=True)
class CifarResource:
    """One CIFAR variant: archive, folder, batch files and label key."""

    title: str
    url: str
    archive: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int


CIFAR10 = CifarResource(
    title="CIFAR-10",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    archive="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key="labels",
    num_classes=10,
)

CIFAR100 = CifarResource(
    title="CIFAR-100",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    archive="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    folder="cifar-100-python",
    train_files=("train",),
    test_files=("test",),
    label_key="fine_labels",
    num_classes=100,
)


def locate_cifar(resource: CifarResource, root: str | Path, download: bool = False) -> Path:
    """Return the folder holding the batch files, extracting or downloading the archive if needed.

    Looked for, in order: ``root/<folder>``, ``root`` itself, then the archive ``root/<archive>`` (checked
    against the official MD5 and extracted), then, with ``download``, the official archive.

    Args:
        resource: :data:`CIFAR10` or :data:`CIFAR100`.
        root: the configured data folder.
        download: fetch the archive when nothing is found.

    Raises:
        AmcError: nothing found and ``download`` off, or a failed download/extraction.
    """
    root = Path(root).expanduser()
    needed = resource.train_files + resource.test_files
    for folder in (root / resource.folder, root):
        if all((folder / name).is_file() for name in needed):
            return folder
    archive = root / resource.archive
    if archive.is_file():
        verify_md5(archive, resource.md5)
    elif download:
        download_file([resource.url], archive, resource.md5)
    else:
        raise AmcError(
            f"{resource.title} not found under {root} (expected {resource.folder}/, {resource.archive}, or its "
            f"batch files ({needed[0]} ...) in {root} itself): set data.download=true or put the official archive there"
        )
    log.info("extracting %s into %s", archive, root)
    safe_extract_tar(archive, root)
    folder = root / resource.folder
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise AmcError(f"{archive} did not contain {resource.folder}/{missing[0]}: delete it and download it again")
    return folder


def load_cifar(
    resource: CifarResource, root: str | Path, download: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Load CIFAR as uint8 arrays.

    Args:
        resource: :data:`CIFAR10` or :data:`CIFAR100`.
        root: the configured data folder.
        download: fetch the archive when nothing is found.

    Returns:
        ``(train_images, train_labels, test_images, test_labels)``; images ``N x 3 x 32 x 32`` uint8.
    """
    start = time.perf_counter()
    folder = locate_cifar(resource, root, download)
    out: list[np.ndarray] = []
    for files in (resource.train_files, resource.test_files):
        parts = [read_cifar_batch(folder / name, resource.label_key, resource.num_classes) for name in files]
        out += [np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])]
    log.info(
        "loaded %s from %s (%d train, %d test) in %.2fs",
        resource.title,
        folder,
        len(out[0]),
        len(out[2]),
        time.perf_counter() - start,
    )
    return out[0], out[1], out[2], out[3]


# --- writing files in the official (Python 2, protocol 2) format: for tests and tools -----------------


def _py2_str(value: bytes) -> bytes:
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
    return b"T" + struct.pack("<I", len(value)) + value  # BINSTRING


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])  # BININT1
    return b"J" + struct.pack("<i", value)  # BININT


def _py2_obj(value: Any) -> bytes:
    if isinstance(value, np.ndarray):
        return _py2_ndarray(value)
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        return _py2_int(value)
    if isinstance(value, bytes | str):
        return _py2_str(value.encode("latin1") if isinstance(value, str) else value)
    if isinstance(value, list | tuple):
        body = b"".join(_py2_obj(v) for v in value)
        if isinstance(value, list):
            return b"](" + body + b"e"  # EMPTY_LIST MARK ... APPENDS
        return b"(" + body + b"t"  # MARK ... TUPLE
    if value is None:
        return b"N"
    raise TypeError(f"cannot write {type(value).__name__} in a CIFAR batch")


def _py2_ndarray(array: np.ndarray) -> bytes:
    if array.dtype != np.uint8:
        raise TypeError("only uint8 arrays are written")
    array = np.ascontiguousarray(array)
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + b"K\x00K\x01\x87R" + _py2_obj((3, "|", None, None, None, -1, -1, 0))
    dtype += b"b"  # BUILD
    header = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_obj((0,)) + _py2_str(b"b") + b"\x87R"
    state = b"(" + _py2_int(1) + _py2_obj(tuple(int(s) for s in array.shape)) + dtype + b"\x89"
    state += _py2_str(array.tobytes()) + b"t"
    return header + state + b"b"


def write_cifar_batch(path: str | Path, batch: dict[bytes, Any]) -> Path:
    """Write a dict as a Python 2 protocol-2 pickle, byte-compatible with the official CIFAR files.

    Supported values: uint8 numpy arrays, ints, bytes/str, lists and tuples of those, ``None``.

    Args:
        path: destination file.
        batch: e.g. ``{b"data": uint8 N x 3072, b"labels": [...]}``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    body = b"".join(_py2_obj(k) + _py2_obj(v) for k, v in batch.items())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x80\x02}(" + body + b"u.")  # PROTO 2, EMPTY_DICT, MARK ... SETITEMS, STOP
    return path
