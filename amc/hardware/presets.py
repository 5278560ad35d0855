"""Named accelerator presets: the YAML files in ``conf/hardware/`` (package ``amc.conf``).

Each preset is a Hydra config with a ``_target_`` accelerator class; a Hydra app selects one with
``hardware=<name>`` and calls :func:`build_accelerator` (or ``hydra.utils.instantiate``) on ``cfg.hardware``;
Python code calls :func:`load_preset`.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from amc.errors import AmcError
from amc.hardware.accelerators import Accelerator


def preset_dir() -> Path:
    """Folder holding the preset YAML files."""
    return Path(str(resources.files("amc.conf") / "hardware"))


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in preset_dir().glob("*.yaml"))


def build_accelerator(cfg: Any) -> Accelerator:
    """Instantiate an accelerator from a Hydra/OmegaConf node or a plain mapping with ``_target_``.

    Args:
        cfg: the ``hardware`` config node.

    Raises:
        AmcError: if the node does not describe an :class:`Accelerator` or has bad parameters.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, Accelerator):
        return cfg
    if isinstance(cfg, Mapping) and not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    target = cfg.get("_target_") if isinstance(cfg, DictConfig) else None
    if not isinstance(target, str) or not target.startswith("amc.hardware."):
        raise AmcError(
            f"hardware config needs _target_ naming an amc.hardware accelerator class (got {target!r}); "
            f"use one of the presets: {', '.join(list_presets())}"
        )
    try:
        acc = instantiate(cfg, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, AmcError):
            raise cause from None
        raise AmcError(
            f"cannot build hardware {cfg.get('name', target)!r}: {cause}; fix the preset's parameters"
        ) from None
    if not isinstance(acc, Accelerator):
        raise AmcError(f"hardware _target_ {target!r} is not an Accelerator; use an amc.hardware accelerator class")
    return acc


def load_preset(name: str, **overrides: Any) -> Accelerator:
    """Build a named preset, optionally overriding some of its parameters.

    Args:
        name: a name from :func:`list_presets`, e.g. ``"bitfusion_edge"``.
        **overrides: parameters to replace, e.g. ``batch=16`` or ``frequency_hz=400e6``.

    Raises:
        AmcError: if the preset does not exist or an override is invalid.
    """
    from omegaconf import OmegaConf

    path = preset_dir() / f"{name}.yaml"
    if not path.is_file():
        raise AmcError(f"unknown hardware preset {name!r}; choose one of {', '.join(list_presets())}")
    cfg = OmegaConf.load(path)
    for key, value in overrides.items():
        cfg[key] = value  # an unknown key fails in the constructor, reported by build_accelerator
    return build_accelerator(cfg)
