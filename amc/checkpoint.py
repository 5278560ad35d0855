"""Model checkpoints: state_dict + architecture spec, written atomically, read with ``weights_only=True``.

A checkpoint is a plain dict that ``torch.load(..., weights_only=True)`` accepts (no pickled classes):

``{"format": "amc-checkpoint-v1", "arch": {"_target_": "pkg.factory", **kwargs}, "state_dict": ...,
"meta": {...}}``

``arch`` is the model's Hydra config (resolved), so a checkpoint rebuilds its own model and a model
built from another config is caught before any weight is copied. ``arch`` is built only when its
``_target_`` is trusted (:mod:`amc.trust`): a file can name any callable.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from torch import nn

from amc.errors import AmcError
from amc.trust import check_targets
from amc.utils import atomic_torch_save

FORMAT = "amc-checkpoint-v1"


def config_hash(*parts: Any, length: int = 10) -> str:
    """A short stable hash of JSON-serialisable parts (dict key order does not matter).

    Args:
        parts: the values that identify a result (model spec, data, recipe...).
        length: hex digits kept.
    """
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def save_checkpoint(path: str | Path, model: nn.Module, arch: Mapping[str, Any], meta: Mapping[str, Any]) -> None:
    """Write a model checkpoint atomically.

    Args:
        path: destination file.
        model: the model (its ``state_dict`` is stored on CPU).
        arch: the model's config with ``_target_`` (plain types only).
        meta: JSON-like metadata (metrics, recipe, data name...).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "arch": dict(arch), "state_dict": state, "meta": dict(meta)}, path)


def weights_budget(model: nn.Module) -> int:
    """Bytes a weights file for ``model`` may unpack to: 4x its state dict (room for optimizer state) + 16 MiB."""
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return 4 * size + 16 * 2**20


def _unpacked_size(path: Path) -> int:
    """What ``torch.load`` would materialise from ``path``: its zip entries' sizes, read from the zip directory."""
    try:
        with zipfile.ZipFile(path) as zf:
            return sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return path.stat().st_size  # a legacy pickle (or a damaged zip, which torch.load then refuses)


def load_file(path: str | Path, max_bytes: int | None = None, what: str = "") -> dict[str, Any]:
    """``torch.load`` a file with ``weights_only=True``, turning every failure into a one-line :class:`AmcError`.

    Args:
        path: the file.
        max_bytes: refuse, before loading, a file whose contents unpack to more bytes than this (a
            compressed zip entry can unpack to a thousand times its size); ``None``: no limit.
        what: what the file is for (the message's "weights for ...").
    """
    path = Path(path)
    if not path.is_file():
        raise AmcError(f"checkpoint {path} does not exist; check the path or run `python -m amc.pretrain` first")
    try:
        with path.open("rb") as fh:
            magic = fh.read(2)
    except OSError as exc:
        raise AmcError(f"cannot read {path} ({exc.strerror}); check the file's permissions") from exc
    if magic[:2] != b"PK" and magic[:1] != b"\x80":  # torch.save's zip container, or a legacy pickle
        raise AmcError(
            f"{path} is not a readable checkpoint: truncated, corrupt or another format (no torch.save header); "
            "delete it and re-create it, or point to a file written by torch.save"
        )
    if max_bytes is not None and (size := _unpacked_size(path)) > max_bytes:
        raise AmcError(
            f"{path} unpacks to {size / 2**20:.1f} MiB, more than weights for {what or 'this model'} can take "
            f"({max_bytes / 2**20:.1f} MiB), so it was not loaded; point to a state_dict file of this model"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported object"
        raise AmcError(
            f"{path} holds objects that are not plain tensors/containers and was refused for safety ({first[:120]}); "
            "only load checkpoints written by amc"
        ) from exc
    except Exception as exc:  # noqa: BLE001 -- torch.load raises many types on non-checkpoint bytes
        raise AmcError(
            f"{path} is not a readable checkpoint: truncated, corrupt or another format ({type(exc).__name__}); "
            "delete it and re-create it, or point to a file written by torch.save"
        ) from exc
    if not isinstance(obj, dict):
        raise AmcError(f"{path} is not an amc checkpoint (got {type(obj).__name__}); point to a file written by amc")
    return obj


def load_checkpoint(
    path: str | Path, expect_arch: Mapping[str, Any] | None = None, max_bytes: int | None = None
) -> dict[str, Any]:
    """Read and validate an amc model checkpoint.

    Args:
        path: the checkpoint file.
        expect_arch: when given, the checkpoint's ``arch`` must equal it.
        max_bytes: the most bytes its contents may unpack to (see :func:`load_file`).
    """
    obj = load_file(path, max_bytes)
    if obj.get("format") != FORMAT or "state_dict" not in obj or "arch" not in obj:
        raise AmcError(f"{path} is not an amc model checkpoint (no {FORMAT} header); point to a file written by amc")
    if expect_arch is not None and _plain(obj["arch"]) != _plain(expect_arch):
        raise AmcError(
            f"checkpoint {path} is for architecture {_describe(obj['arch'])}, not {_describe(expect_arch)}; "
            "use the matching model config or another checkpoint"
        )
    return obj


def build_model_from_checkpoint(
    path: str | Path, trust_targets: Iterable[str] = ()
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights.

    Args:
        path: the checkpoint file.
        trust_targets: ``_target_`` names to build besides amc's own models (see :mod:`amc.trust`),
            e.g. ``("my.pkg.Net",)`` for a checkpoint of your own model.
    """
    ckpt = load_checkpoint(path)
    check_targets(ckpt["arch"], path, trust_targets)
    model = instantiate(ckpt["arch"])
    load_state(model, ckpt["state_dict"], str(path))
    return model, ckpt


def load_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """``load_state_dict`` with a one-line error when shapes or names do not match.

    Args:
        model: the model to fill.
        state_dict: the weights.
        source: where they came from (for the message).
    """
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:200]
        raise AmcError(
            f"weights in {source} do not fit model {type(model).__name__} ({detail}); "
            "use the checkpoint trained for this architecture"
        ) from exc


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _describe(arch: Mapping[str, Any]) -> str:
    target = str(arch.get("_target_", "?")).rsplit(".", 1)[-1]
    rest = ", ".join(f"{k}={v}" for k, v in sorted(arch.items()) if k != "_target_")
    return f"{target}({rest})"
