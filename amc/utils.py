"""Run-wide helpers: seeding, threads, device selection, atomic file writes."""

from __future__ import annotations

import logging
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from amc.errors import AmcError

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch global generators; call once at an entry point.

    Args:
        seed: the run's seed.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    """Set torch's intra-op thread count (``None`` or ``0`` keeps torch's default).

    Args:
        threads: number of CPU threads torch may use.
    """
    if threads:
        if threads < 0:
            raise AmcError(f"threads={threads} is negative; use a positive count or 0 for torch's default")
        torch.set_num_threads(int(threads))


def resolve_device(name: str) -> torch.device:
    """Turn ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a ``torch.device``.

    Args:
        name: the device name from the config.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise AmcError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AmcError(f"device={name} asked for but no CUDA GPU is visible; use device=cpu")
    return device


def _write_error(path: Path, exc: BaseException) -> AmcError:
    reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:120] or type(exc).__name__
    return AmcError(
        f"cannot write {path} ({reason}); free disk space or point the output to a writable directory "
        "(the previous file, if any, is unchanged)"
    )


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so a crash never leaves half a file.

    A failed write (disk full, read-only directory) removes the temporary file, leaves any previous
    ``path`` untouched and raises a one-line :class:`AmcError`.

    Args:
        path: destination file.
        data: the bytes to write.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from exc
        raise


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save`` through a temporary file and a rename (see :func:`atomic_write_bytes`).

    Args:
        obj: a state dict or other tensor container (loadable with ``weights_only=True``).
        path: destination file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # torch reports a failed write (e.g. ENOSPC) as a RuntimeError from its stream writer.
        if isinstance(exc, OSError | RuntimeError):
            raise _write_error(path, exc) from exc
        raise
