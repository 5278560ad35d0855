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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so a crash never leaves half a file.

    Args:
        path: destination file.
        data: the bytes to write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: object, path: str | Path) -> None:
    """``torch.save`` through a temporary file and a rename (see :func:`atomic_write_bytes`).

    Args:
        obj: a state dict or other tensor container (loadable with ``weights_only=True``).
        path: destination file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
