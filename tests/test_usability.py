"""What a new user meets first (issue #17): run folders passed back as written, file modes, sweep reports,
``gymnasium.make`` with a model and data, console scripts, logs and exports.

Commands run as subprocesses on the tiny Fashion-MNIST stand-in of ``test_pretrain``.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from amc.utils import atomic_torch_save, atomic_write_bytes


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_atomic_writes_get_the_umask_mode(tmp_path: Path, umask_022: None) -> None:
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    atomic_torch_save({"x": torch.zeros(1)}, tmp_path / "b.pt")
    for name in ("a.json", "b.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
