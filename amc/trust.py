"""Which ``_target_`` names a config read from a file may build.

A checkpoint's ``arch`` spec, a run directory's ``config.yaml`` and a search's config are handed to
``hydra.utils.instantiate``, which imports and calls whatever ``_target_`` names (``os.system`` included).
``torch.load(weights_only=True)`` keeps code out of the tensors, not out of these names, so every
config read from disk goes through :func:`check_targets` first. Trusted are:

- the ``_target_`` names in amc's own shipped configs (``conf/``);
- amc's components: a public name in ``amc.models``, ``amc.data``, ``amc.hardware.accelerators``,
  ``amc.rewards``, ``amc.envs`` or ``amc.agents`` that is a model (``nn.Module``), data module,
  accelerator, reward, environment or agent class defined in amc, or one of the model/data/env
  factories. Other amc functions are not: several write files (``amc.utils.atomic_write_bytes``,
  ``amc.data.write_cifar_batch``) or download and unpack archives;
- the exact dotted names the caller passes as ``trust_targets`` (a command line's
  ``trust_targets=[my.pkg.Net]``). A file's own ``trust_targets`` never counts: a file cannot trust itself.

OmegaConf's built-in resolvers (``oc.env``, ``oc.create``, ``oc.decode``, ``oc.select``, ``oc.dict.*``,
``oc.deprecated``) and Hydra's (``hydra``, ``now``) read values and parse YAML-like literals; none
evaluates code, so loading a file with :func:`omegaconf.OmegaConf.load` is safe. What they produce is
checked here like the rest: the walk resolves interpolations, so a ``_target_`` made by ``oc.decode``
or ``oc.env`` is seen.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from amc.errors import AmcError

#: Packages whose classes and factories are amc's components (see the module docstring for the filter).
COMPONENT_PACKAGES = ("amc.models", "amc.data", "amc.hardware.accelerators", "amc.rewards", "amc.envs", "amc.agents")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")  # public parts only: no dunder walks
_MAX_DEPTH = 64


def check_targets(cfg: Any, source: str | Path, trust_targets: Iterable[str] | None = ()) -> None:
    """Refuse a config read from ``source`` if any ``_target_`` in it, at any depth, is not trusted.

    Interpolations are resolved as ``instantiate`` would resolve them; values that cannot be resolved
    are skipped (building them fails the same way).

    Args:
        cfg: the loaded config: a ``DictConfig``/``ListConfig`` or plain dicts and lists (a checkpoint's ``arch``).
        source: the file it was read from (for the message).
        trust_targets: exact dotted names the caller trusts besides amc's own components.

    Raises:
        AmcError: one line naming the first refused target and how to trust it.
    """
    trusted = trusted_names(trust_targets)
    if not isinstance(cfg, (DictConfig, ListConfig)):
        try:  # as instantiate does with plain containers, so interpolation strings resolve the same way
            cfg = OmegaConf.create(cfg, flags={"allow_objects": True})
        except Exception as exc:  # noqa: BLE001 -- any failure means instantiate could not read it either
            raise AmcError(
                f"the config in {source} is not a mapping or list of plain values ({type(exc).__name__}); "
                "re-create the file with amc"
            ) from exc
    _walk(cfg, "", str(source), trusted, 0)


def trusted_names(trust_targets: Iterable[str] | str | None) -> frozenset[str]:
    """The caller's ``trust_targets`` as a set of names (one string counts as one name).

    Args:
        trust_targets: a list of dotted names, one name, or ``None``.
    """
    if trust_targets is None:
        return frozenset()
    if isinstance(trust_targets, str):
        trust_targets = [trust_targets]
    names = []
    for name in trust_targets:
        if not isinstance(name, str):
            raise AmcError(f"trust_targets holds {name!r}; give dotted names, e.g. trust_targets=[my.pkg.Net]")
        names.append(name)
    return frozenset(names)


def targets_in(cfg: Any) -> frozenset[str]:
    """Every string ``_target_`` in a config the caller already accepted (e.g. the model it just built).

    Args:
        cfg: a ``DictConfig``/``ListConfig`` or plain dicts and lists.
    """
    plain = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    found: set[str] = set()
    stack = [plain]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            if isinstance(node.get("_target_"), str):
                found.add(node["_target_"])
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return frozenset(found)


def is_trusted(name: Any, trust_targets: Iterable[str] | None = ()) -> bool:
    """Whether ``name`` may be built from a file: amc's own component, or named exactly in ``trust_targets``.

    Args:
        name: the ``_target_`` value.
        trust_targets: exact dotted names the caller trusts.
    """
    if not isinstance(name, str):
        return False
    return name in trusted_names(trust_targets) or name in shipped_targets() or _is_component(name)


def _walk(node: Any, where: str, source: str, trusted: frozenset[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise AmcError(f"the config in {source} is nested more than {_MAX_DEPTH} levels deep at {where}; fix the file")
    if isinstance(node, DictConfig):
        items = [(key, _path(where, key)) for key in node.keys()]
    elif isinstance(node, ListConfig):
        items = [(i, f"{where}[{i}]") for i in range(len(node))]
    elif isinstance(node, Mapping):  # what oc.decode / oc.create hand back
        node = OmegaConf.create(dict(node), flags={"allow_objects": True})
        items = [(key, _path(where, key)) for key in node.keys()]
    elif isinstance(node, (list, tuple)):
        node = OmegaConf.create(list(node), flags={"allow_objects": True})
        items = [(i, f"{where}[{i}]") for i in range(len(node))]
    else:
        return
    for key, at in items:
        try:
            value = node[key]  # resolves interpolations, so produced nodes are checked too
        except Exception:  # noqa: BLE001 -- missing or unresolvable here: instantiate fails on it as well
            if key == "_target_":
                _refuse(OmegaConf.to_container(node, resolve=False).get("_target_"), at, source)  # type: ignore[union-attr]
            continue
        if key == "_target_" and not (isinstance(value, str) and (value in trusted or is_trusted(value))):
            _refuse(value, at, source)
        _walk(value, at, source, trusted, depth + 1)


def _path(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _refuse(target: Any, where: str, source: str) -> None:
    shown = " ".join((target if isinstance(target, str) else repr(target)).split())[:120]
    raise AmcError(
        f"refusing to build {shown!r} named in {source} ({where}): only amc's own components are trusted; "
        f"pass trust_targets=[{shown}] if you wrote that file and trust it"
    )


@functools.lru_cache(maxsize=1)
def shipped_targets() -> frozenset[str]:
    """Every ``_target_`` named in amc's own config files (package ``amc.conf``)."""
    found: set[str] = set()
    root = Path(str(resources.files("amc.conf")))
    for path in root.rglob("*.yaml"):
        try:
            doc = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception:  # noqa: BLE001 -- a config amc cannot read names nothing it builds
            continue
        found |= {t for t in targets_in(doc) if not t.startswith("${")}
    return frozenset(found)


@functools.lru_cache(maxsize=256)
def _is_component(name: str) -> bool:
    # The name is checked as text before anything is imported: only amc's component packages are imported.
    if not _NAME.fullmatch(name) or not any(name.startswith(p + ".") for p in COMPONENT_PACKAGES):
        return False
    module, _, attr = name.rpartition(".")
    try:  # a module and one attribute of it: no walk through what that module imported (amc.x.torch.load)
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return False
    if inspect.isclass(obj):
        if not any(obj.__module__ == p or obj.__module__.startswith(p + ".") for p in COMPONENT_PACKAGES):
            return False  # e.g. a torch or stable-baselines3 class reached through an amc module's imports
        return obj.__module__ == "amc.rewards" or issubclass(obj, _component_bases())
    return any(obj is f for f in _factories())


@functools.lru_cache(maxsize=1)
def _component_bases() -> tuple[type, ...]:
    import gymnasium
    from torch import nn

    from amc.agents import Agent
    from amc.data import DataModule
    from amc.hardware.accelerators import Accelerator

    return (nn.Module, DataModule, Accelerator, gymnasium.Env, Agent)


@functools.lru_cache(maxsize=1)
def _factories() -> tuple[Any, ...]:
    from amc.data import build_data
    from amc.envs import make_env
    from amc.models import MODELS, build_model, cifar_resnet

    return (*MODELS.values(), build_model, cifar_resnet, build_data, make_env)
