"""What every ``python -m amc.X`` entry point shares: logging, threads, seed, and one-line errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig

from amc.errors import AmcError
from amc.utils import seed_everything, set_threads

log = logging.getLogger("amc")


def setup_run(cfg: DictConfig) -> None:
    """Apply the run-wide settings of a config: thread count and global seed.

    Args:
        cfg: the composed config (keys ``threads`` and ``seed``).
    """
    set_threads(cfg.get("threads"))
    seed_everything(int(cfg.get("seed", 0)))


def run_cli(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point; an :class:`AmcError` becomes one line on stderr and exit status 2.

    Args:
        fn: the command's body.
        cfg: its config.
    """
    try:
        setup_run(cfg)
        return fn(cfg)
    except Exception as exc:
        # Hydra wraps errors raised while instantiating configs; report the user's problem, not the wrapper.
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, AmcError):
            cause = cause.__cause__
        if cause is None:
            raise
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(2)
