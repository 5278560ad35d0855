"""Declared type and range of every config value, checked when a config is composed.

One table per command (``train``, ``finetune``, ``pretrain``, ``hardware_report``: the config's
``task_name``) maps a dotted key to a :class:`Rule`. :func:`check_config` runs before anything is
trained, read or deleted -- from the Hydra callback :class:`amc.cli.ConfigCheck` (before Hydra
creates the run directory) and again at the top of each entry point (for configs composed in code) --
and turns the first bad value into a one-line :class:`~amc.errors.AmcError` that names the key, the
value and a valid setting. Keys a config does not have are skipped, so one table serves every preset
of a group (``data=imagenet`` and ``data=mnist`` alike). Agent options vary per agent and are checked
by the agent's own ``validate()``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from amc.errors import AmcError

_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """What one config value may be.

    Attributes:
        kind: ``int``, ``float``, ``bool``, ``str``, ``choice``, ``bits`` (a ``[min, max]`` bit range)
            or ``strs`` (a list of strings).
        low: smallest allowed number (``None``: unbounded).
        high: largest allowed number (``None``: unbounded).
        low_open: ``low`` itself is not allowed.
        high_open: ``high`` itself is not allowed.
        choices: the allowed strings of a ``choice``.
        nullable: ``null`` is allowed.
        fix: the suggestion after the semicolon (default: derived from the range).
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False
    fix: str = ""

    def span(self) -> str:
        """The allowed range in words, e.g. ``>= 1`` or ``in (0, 1]``."""
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {lo}{self.low:g}, {self.high:g}{hi}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return ""


def Int(low: float | None = None, high: float | None = None, nullable: bool = False, fix: str = "") -> Rule:  # noqa: N802
    """A whole number in ``[low, high]``."""
    return Rule("int", low, high, nullable=nullable, fix=fix)


def Float(  # noqa: N802
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    nullable: bool = False,
    fix: str = "",
) -> Rule:
    """A finite number in the given interval."""
    return Rule("float", low, high, low_open, high_open, nullable=nullable, fix=fix)


BOOL = Rule("bool")
STR = Rule("str")
OPT_STR = Rule("str", nullable=True)
STRS = Rule("strs")
BITS = Rule("bits")
RATIO = Float(0, 1, low_open=True, nullable=True, fix="")  # a budget: a ratio of the dense model, or null


def Choice(*choices: str) -> Rule:  # noqa: N802
    """One of ``choices``."""
    return Rule("choice", choices=choices)


RUN = {
    "seed": Int(0),
    "threads": Int(0, fix="threads=N with N >= 1, or 0 for torch's default"),
    "device": STR,
    "progress_bar": BOOL,
}
TRUST = {"trust_targets": STRS}
DATA = {
    "data.num_classes": Int(1),
    "data.in_channels": Int(1),
    "data.image_size": Int(1),
    "data.search_size": Int(1),
    "data.split_seed": Int(0),
    "data.batch_size": Int(1),
    "data.eval_batch_size": Int(1),
    "data.num_workers": Int(0),
    "data.download": BOOL,
    "data.augment": BOOL,
}
# The SGD recipe that pretrain.* and amc.finetune's own keys share.
RECIPE = {
    "lr": Float(0, low_open=True),
    "momentum": Float(0, 1, high_open=True),
    "weight_decay": Float(0),
    "nesterov": BOOL,
    "label_smoothing": Float(0, 1, high_open=True),
    "batch_size": Int(1),
}
PRETRAIN = {
    "pretrain.epochs": Int(1),
    **{f"pretrain.{k}": r for k, r in RECIPE.items()},
    "pretrain.force": BOOL,
    "pretrain.auto": BOOL,
    "pretrain.seed": Int(0, nullable=True),
    "pretrain.weights": OPT_STR,
}
# The compressor's options: under env.* in train, under compress.* in finetune.
COMPRESSOR = {
    "selection": Choice("l1", "l2", "bn", "thinet"),
    "calibration_batches": Int(1, fix="{key}=N with N >= 1 (the compressed models need calibration data)"),
    "calibration_batch_size": Int(1),
    "bn_recalibration": BOOL,
    "reconstruction": BOOL,
    "symmetric": BOOL,
}
ENV = {
    "env.mode": Choice("prune", "quantize", "joint"),
    "env.min_keep": Float(0, 1, low_open=True),
    "env.w_bits": BITS,
    "env.a_bits": BITS,
    "env.allow_fp32": BOOL,
    "env.channel_multiple": Int(1, fix="{key}=N with N >= 1 (1: no rounding; e.g. the accelerator's array width)"),
    "env.levels": Choice("hardware", "all"),
    "env.wall": Choice("repair", "reserve", "front"),
    "env.reference": Choice("uniform", "none"),
    "env.eval_batch_size": Int(1),
    "env.nonfinite": Choice("skip", "fail"),
    "env.eval_cache": Int(0, fix="{key}=N with N >= 0 (0: off; configurations whose accuracy is remembered)"),
    "env.finetune_batches": Int(0, fix="{key}=N with N >= 0 (0: off; labelled batches fine-tuned on per episode)"),
    "env.finetune_lr": Float(0, low_open=True),
    "env.calibration_set": Choice("train", "search"),
    "env.memory_format": Choice("auto", "channels_last", "contiguous"),
    **{f"env.{k}": r for k, r in COMPRESSOR.items()},
}

SCHEMAS: dict[str, dict[str, Rule]] = {
    "pretrain": {**RUN, **TRUST, **DATA, **PRETRAIN},
    "train": {
        **RUN,
        **TRUST,
        **DATA,
        **PRETRAIN,
        **ENV,
        "episodes": Int(1, fix="episodes=N with N >= 1"),
        "budgets.*": RATIO,
        "resume": OPT_STR,
        "overwrite": BOOL,
        "callbacks.checkpoint_every": Int(1),
        "callbacks.image_every": Int(1),
        "callbacks.progress_bar": BOOL,
        "callbacks.test_best": BOOL,
        "agent.n_envs": Int(1, fix="agent.n_envs=N with N >= 1 (episodes evaluated in parallel, one process each)"),
    },
    "finetune": {
        **RUN,
        **TRUST,
        **DATA,
        **PRETRAIN,
        "policy": STR,
        "overwrite": BOOL,
        "resume": OPT_STR,
        "rounds": Int(1),
        "round_episodes": Int(1, nullable=True),
        "epochs": Int(0, fix="epochs=N with N >= 0 (0: export without fine-tuning)"),
        **RECIPE,
        "kd": BOOL,
        "kd_temperature": Float(0, low_open=True),
        "kd_alpha": Float(0, 1),
        "from_scratch": BOOL,
        **{f"compress.{k}": r for k, r in COMPRESSOR.items()},
        "export.onnx": BOOL,
        "export.latency_repeats": Int(1),
        "export.quantized_onnx": BOOL,
        "export.compare_batches": Int(1, nullable=True),
    },
    "hardware_report": {**RUN, **TRUST, "policy": OPT_STR, "batch": Int(1, nullable=True), "plots": BOOL},
}


def _show(value: Any) -> str:
    if isinstance(value, ListConfig | DictConfig):
        value = OmegaConf.to_container(value, resolve=False)
    if isinstance(value, list):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_value(key: str, value: Any, rule: Rule) -> None:
    """Raise a one-line :class:`AmcError` when ``value`` (of config key ``key``) breaks ``rule``.

    Args:
        key: the dotted config key (for the message).
        value: its composed value.
        rule: what it may be.
    """
    if value is None:
        if rule.nullable:
            return
        raise AmcError(f"{key}=null is not allowed; set {key} to {_wanted(key, rule)}")
    shown = f"{key}={_show(value)}"
    if rule.kind in ("int", "float"):
        whole = rule.kind == "int"
        if not _is_number(value) or not math.isfinite(value):
            noun = "a whole number" if whole else "a finite number"
            raise AmcError(f"{shown} is not {noun}; set {_fix(key, rule)}")
        if whole and float(value) != int(value):
            raise AmcError(f"{shown} is not a whole number; set {_fix(key, rule)}")
        lo_bad = rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low)
        hi_bad = rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high)
        if lo_bad or hi_bad:
            what = "positive" if whole and rule.low == 1 and rule.high is None else rule.span()
            what = f"a ratio {what}" if key.startswith("budgets.") else what
            raise AmcError(f"{shown} must be {what}; set {_fix(key, rule)}")
    elif rule.kind == "bool":
        if not isinstance(value, bool):
            raise AmcError(f"{shown} is not true or false; set {key}=true or {key}=false")
    elif rule.kind == "str":
        if not isinstance(value, str) or not value:
            raise AmcError(f"{shown} is not a non-empty text value; set {key} to {_wanted(key, rule)}")
    elif rule.kind == "strs":
        items = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
        if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
            raise AmcError(f"{shown} is not a list of names; set {key}=[pkg.module.Name,...] or {key}=[]")
    elif rule.kind == "choice":
        if value not in rule.choices:
            leaf = key.rsplit(".", 1)[-1]
            raise AmcError(f"unknown {leaf} {value!r} for {key}; choose one of {', '.join(rule.choices)}")
    elif rule.kind == "bits":
        _check_bits(key, value)
    else:  # pragma: no cover -- the tables above use only the kinds listed
        raise AssertionError(rule.kind)


def _check_bits(key: str, value: Any) -> None:
    pair = OmegaConf.to_container(value) if isinstance(value, ListConfig) else value
    fix = f"set {key}=[min,max] with 2 <= min <= max <= 16, e.g. {key}=[2,8] (or [32,32]: float)"
    if not isinstance(pair, list) or len(pair) != 2 or not all(_is_number(b) and float(b) == int(b) for b in pair):
        raise AmcError(f"{key}={_show(value)} is not a [min, max] pair of whole bit counts; {fix}")
    lo, hi = int(pair[0]), int(pair[1])
    if not (lo == hi == 32 or 1 <= lo <= hi <= 16):
        raise AmcError(
            f"bit range {lo}..{hi} is invalid for {key}; use 2 <= min_bits <= max_bits <= 16 (or [32, 32]: float)"
        )
    if lo < 2:
        raise AmcError(
            f"{key}=[{lo},{hi}] asks for 1-bit values, which amc does not quantize to (its linear fake-quant needs "
            f"2 bits, a sign and a magnitude); use {key}=[2,{max(hi, 2)}]"
        )


def _wanted(key: str, rule: Rule) -> str:
    if rule.kind == "int":
        return f"a whole number {rule.span()}".strip()
    if rule.kind == "float":
        return f"a number {rule.span()}".strip()
    if rule.kind == "bool":
        return "true or false"
    if rule.kind == "choice":
        return "one of " + ", ".join(rule.choices)
    if rule.kind == "bits":
        return "a [min,max] bit range such as [2,8]"
    return "a value"


def _fix(key: str, rule: Rule) -> str:
    if rule.fix:
        return rule.fix.format(key=key)
    if key.startswith("budgets."):
        return f"{key}=R with 0 < R <= 1 (a ratio of the uncompressed model), or {key}=null for no budget"
    if rule.kind == "int" and rule.low is not None and rule.high is None:
        return f"{key}=N with N >= {rule.low:g}"
    return f"{key} to {_wanted(key, rule)}"


def check_config(cfg: DictConfig | Mapping[str, Any], command: str | None = None) -> None:
    """Check every value that ``command``'s schema declares; the first bad one raises a one-line :class:`AmcError`.

    Args:
        cfg: the composed config (a Hydra config may still hold its ``hydra`` node).
        command: ``train``, ``finetune``, ``pretrain`` or ``hardware_report`` (default: ``cfg.task_name``;
            a config of another command is not checked).
    """
    command = command or str(cfg.get("task_name") or "")
    schema = SCHEMAS.get(command)
    if schema is None:
        return
    for key, rule in schema.items():
        if key.endswith(".*"):
            node = OmegaConf.select(cfg, key[:-2], default=None) if isinstance(cfg, DictConfig) else None
            if node is None:
                continue
            if not isinstance(node, DictConfig):
                raise AmcError(f"{key[:-2]}={_show(node)} must be a mapping of {key[:-2]}.<name>=<value>")
            for sub in map(str, node.keys()):
                check_value(f"{key[:-2]}.{sub}", _select(cfg, f"{key[:-2]}.{sub}"), rule)
            continue
        value = _select(cfg, key)
        if value is not _ABSENT:
            check_value(key, value, rule)


def _select(cfg: Any, key: str) -> Any:
    node = cfg
    *parents, leaf = key.split(".")
    for part in parents:
        if not isinstance(node, DictConfig | dict) or part not in node:
            return _ABSENT
        if isinstance(node, DictConfig) and OmegaConf.is_missing(node, part):
            return _ABSENT
        node = node[part]
    if isinstance(node, dict):
        return node.get(leaf, _ABSENT)
    if not isinstance(node, DictConfig) or leaf not in node or OmegaConf.is_missing(node, leaf):
        return _ABSENT
    return node[leaf]
