"""What every ``python -m amc.X`` entry point shares: config checks, logging, threads, seed, one-line errors.

A bad config value, an :class:`AmcError`, Ctrl-C (SIGINT) and SIGTERM all end a command with one line
on stderr and a non-zero exit status (2 for the user's input; 130/143 for the signals, with how to
continue), never a traceback.
"""

from __future__ import annotations

import copy
import fcntl
import importlib.util
import logging
import os
import re
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra._internal.config_loader_impl import get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import Container, DictConfig, OmegaConf, open_dict, read_write
from tqdm.contrib.logging import logging_redirect_tqdm

from amc.checkpoint import config_hash
from amc.errors import AmcError
from amc.schema import check_config
from amc.utils import LOCK_FILE, seed_everything, set_threads

log = logging.getLogger("amc")


class Interrupted(BaseException):
    """SIGTERM, raised like Ctrl-C's ``KeyboardInterrupt`` so that atomic writes clean up on the way out."""


def setup_run(cfg: DictConfig) -> None:
    """Apply the run-wide settings of a config: thread count and global seed.

    Args:
        cfg: the composed config (keys ``threads`` and ``seed``).
    """
    set_threads(cfg.get("threads"))
    seed_everything(int(cfg.get("seed", 0)))


def run_name(*parts: Any) -> str:
    """A run folder's name after its time stamp: the non-empty ``parts`` and a short hash of the last one.

    Used as the ``${amc.run_name:...}`` resolver in ``conf/hydra/default.yaml``, e.g.
    ``fmnist_cnn_ddpg_s0-3fa9c1`` from (``fmnist_cnn``, ``ddpg``, ``s0``, <the command line's overrides>). The
    name holds only letters, digits, ``_`` and ``-`` (no ``=`` or ``,``), so it can be passed back unquoted
    (``policy=outputs/train/runs/<run>``); the overrides themselves are in ``.hydra/overrides.yaml``.

    Args:
        parts: short labels (config group choices, ``s<seed>``), then the overrides to hash (any value).
    """
    *labels, overrides = parts
    if isinstance(overrides, Container):
        overrides = OmegaConf.to_container(overrides, resolve=True)
    words = [re.sub(r"[^A-Za-z0-9_.-]+", "-", str(p)).strip("-.") for p in labels if p not in (None, "")]
    return "_".join([*(w for w in words if w), config_hash(overrides, length=6)])


def register_resolvers() -> None:
    """Register amc's OmegaConf resolvers (``amc.run_name``) once; the entry points import this module."""
    if not OmegaConf.has_resolver("amc.run_name"):
        OmegaConf.register_new_resolver("amc.run_name", run_name)


register_resolvers()


def progress_bar(cfg: DictConfig) -> bool:
    """Whether to show tqdm bars: ``progress_bar`` (pretrain, finetune) or ``callbacks.progress_bar`` (train)."""
    value = cfg.get("progress_bar")
    if value is None:
        value = OmegaConf.select(cfg, "callbacks.progress_bar", default=True)
    return bool(value)


def run_tensorboard(log_dir: str | Path | None = None) -> Any:
    """A TensorBoard ``SummaryWriter`` on ``log_dir`` (default: ``<Hydra's run directory>/tb``; ``None`` outside Hydra).

    Args:
        log_dir: the event directory.
    """
    if log_dir is None:
        if not HydraConfig.initialized():
            return None
        log_dir = Path(HydraConfig.get().runtime.output_dir) / "tb"
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))


# Launchers (hydra/launcher=<name>) that need an optional extra: the modules they import and the extra to install.
_SUBMITIT = (("hydra_plugins.hydra_submitit_launcher", "submitit"), "launchers")
_RAY = (("hydra_plugins.hydra_ray_launcher", "ray"), "ray")
LAUNCHER_EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "slurm": _SUBMITIT,
    "submitit_local_run": _SUBMITIT,
    "submitit_slurm": _SUBMITIT,
    "submitit_local": _SUBMITIT,
    "ray_local": _RAY,
    "ray_aws": _RAY,
    "ray": _RAY,
}


def missing_extra(argv: Sequence[str]) -> str | None:
    """What to install for a ``hydra/launcher=<name>`` on the command line whose plugin is missing (``None``: fine).

    Hydra itself would only say ``Could not load 'hydra/launcher/...'``.

    Args:
        argv: the command line's arguments.
    """
    for arg in argv:
        match = re.fullmatch(r"[+~]{0,2}hydra/launcher=(\w+)", arg)
        if not match or match.group(1) not in LAUNCHER_EXTRAS:
            continue
        modules, extra = LAUNCHER_EXTRAS[match.group(1)]
        missing = [m for m in modules if not _importable(m)]
        if missing:
            package = missing[0].rsplit(".", 1)[-1].replace("_", "-")
            return (
                f"hydra/launcher={match.group(1)} needs {package}, which is not installed; "
                f"pip install 'amc[{extra}]' (or use the default joblib launcher)"
            )
    return None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def hydra_entry(hydra_main: Callable[[], Any]) -> Callable[[], None]:
    """Wrap a ``@hydra.main`` function: a launcher whose optional extra is missing fails in one line first."""

    def main() -> None:
        problem = missing_extra(sys.argv[1:])
        if problem:
            _fail(problem)
        hydra_main()

    main.__doc__ = hydra_main.__doc__
    return main


def _fail(message: str, status: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def command_line_keys() -> list[str]:
    """Keys the command line overrides, without ``+``/``~`` (``hardware``, ``env.w_bits``); none outside Hydra."""
    if not HydraConfig.initialized():
        return []
    return [str(o).split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task]


def continue_hint(cfg: DictConfig) -> str:
    """How to continue an interrupted command (for the one line printed on SIGINT/SIGTERM)."""
    task = str(cfg.get("task_name") or "")
    run_dir = cfg.get("resume") or (HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else None)
    if task == "train" and run_dir:
        if not cfg.get("resume") and not (Path(run_dir) / "config.yaml").is_file():
            # stopped before the search wrote its config (pretraining the baseline, building the environment)
            return (
                "run the same command again (no episode had run; a baseline being pretrained continues from its "
                "last saved epoch)"
            )
        return f"continue it with `python -m amc.train resume={run_dir}`"
    if task == "finetune" and run_dir:
        return f"continue it with `python -m amc.finetune <same arguments> resume={run_dir}`"
    return "run the same command again to continue from the last saved epoch"


def run_cli(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Run an entry point; an :class:`AmcError` becomes one line on stderr and exit status 2.

    SIGINT and SIGTERM become one line saying how to continue (exit status 130 and 143).

    Args:
        fn: the command's body.
        cfg: its config.
    """

    received: list[int] = []

    def on_term(signum: int, frame: Any) -> None:
        received.append(signum)
        raise Interrupted(signum)

    def on_int(signum: int, frame: Any) -> None:
        received.append(signum)
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_int)
    except ValueError:  # not the main thread (a launcher's worker thread): keep the default
        pass
    try:
        check_config(cfg)
        setup_run(cfg)
        with logging_redirect_tqdm():  # log lines go above the progress bars instead of through them
            out = fn(cfg)
        if received:
            # The exception was raised inside a finaliser (__del__, a weakref callback), where Python only
            # prints and drops it: the command still stops as interrupted.
            raise Interrupted(received[0]) if received[0] == signal.SIGTERM else KeyboardInterrupt
        return out
    except (KeyboardInterrupt, Interrupted) as exc:
        name, status = ("SIGTERM", 143) if isinstance(exc, Interrupted) else ("Ctrl-C (SIGINT)", 130)
        _fail(f"interrupted by {name}; {continue_hint(cfg)}", status)
    except BrokenPipeError:
        # The reader of stdout went away (`amc-hardware ... | head`): stop quietly, as shell tools do. Python
        # would flush stdout again at exit and print a second error: point it at /dev/null first.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a tool killed by it
    except Exception as exc:
        # Hydra wraps errors raised while instantiating configs; report the user's problem, not the wrapper.
        cause: BaseException | None = exc
        while cause is not None and not isinstance(cause, AmcError):
            cause = cause.__cause__
        if cause is None:
            missing = _unimportable_target(exc)
            if missing is None:
                raise
            remove_untouched_run_dir()
            _fail(
                f"cannot import _target_ {missing!r}: check its spelling, and that its module is importable from "
                "here (PYTHONPATH, or pip install the package that holds it)"
            )
        remove_untouched_run_dir()
        _fail(str(cause))


def _unimportable_target(exc: BaseException) -> str | None:
    """The ``_target_`` that Hydra could not import, when that is what ``exc`` is (else ``None``)."""
    from hydra.errors import InstantiationException

    if not isinstance(exc, InstantiationException):
        return None
    found = re.match(r"Error locating target '([^']+)'", str(exc))
    return found.group(1) if found else None


def remove_untouched_run_dir() -> None:
    """Remove the run directory Hydra made for a command that failed before it did anything.

    A bad setting is refused before any output is written, but Hydra has already created the run directory
    with its ``.hydra`` folder and an empty log (and the run's claim left its empty lock file). Such a
    directory is removed, so a mistyped command leaves nothing to clean up. A directory holding anything
    else, or a log with any line in it, is left as it is.
    """
    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    log = run_dir / f"{hc.job.name}.log"
    ours = {".hydra", log.name, LOCK_FILE}
    try:
        names = {p.name for p in run_dir.iterdir()}
        if not names <= ours or (log.is_file() and log.stat().st_size > 0):
            return
        hydra_files = run_dir / ".hydra"
        if hydra_files.is_dir() and any(p.is_dir() for p in hydra_files.iterdir()):
            return
        for name in names:
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        run_dir.rmdir()
    except OSError:  # someone else's file, a race: leave the directory
        return


def writable_dir_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be created or written as a directory (``None`` when it can).

    Args:
        path: the directory a run will write.
    """
    p = Path(path).expanduser().absolute()
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            return f"{probe} does not exist"
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


# What a finished (or running) command left in its run directory, per command that refuses such a
# directory: the files amc.train's prepare_run_dir and amc.finetune check, and the state they describe.
HELD: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (("summary.json", "a finished search"), ("episodes.csv", "an unfinished search")),
    "finetune": (("report.json", "a finished fine-tuning (report.json)"),),
}
RUNS = {"train": "search", "finetune": "fine-tuning"}  # what claim_dir names in its message


def occupied_problem(config: DictConfig, run_dir: str | Path) -> str | None:
    """Why the command of ``config`` would refuse ``run_dir`` (``None``: it may write there).

    Hydra writes ``.hydra/*.yaml`` into the run directory before amc runs, so an occupied directory is
    refused here first (by :class:`ConfigCheck`), and stays byte-identical.

    Args:
        config: the composed config (``task_name``, ``overwrite``, ``resume``).
        run_dir: the directory Hydra is about to write.
    """
    task = str(config.get("task_name") or "")
    if task not in HELD or config.get("resume") or config.get("overwrite", False):
        return None
    run_dir = Path(run_dir).expanduser()
    for name, state in HELD[task]:
        if (run_dir / name).is_file():
            fix = f"continue it with resume={run_dir}, " if task == "train" else ""
            return (
                f"{run_dir} already holds {state}; {fix}write elsewhere (hydra.run.dir=...), or pass overwrite=true "
                "to replace it"
            )
    lock = run_dir / LOCK_FILE
    if lock.is_file():
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return (
                f"another amc {RUNS[task]} is running in {run_dir} right now; wait for it to finish or write elsewhere "
                "(hydra.run.dir=...)"
            )
        finally:
            os.close(fd)  # releases the probe's lock
    return None


def sweep_job_dirs(config: DictConfig) -> list[tuple[DictConfig, Path]]:
    """Each job of a multirun: its config (the job's overrides applied to plain keys) and its directory.

    The jobs are expanded as Hydra's basic sweeper expands them, and ``hydra.sweep.subdir`` is resolved
    with each job's number, overrides and values, before any job directory exists.

    Args:
        config: the multirun's composed config (``on_multirun_start``).
    """
    parser = OverridesParser.create()
    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    batches = BasicSweeper.split_arguments(parser.parse_overrides([*params, *config.hydra.overrides.task]), None)
    dirname = config.hydra.job.config.override_dirname
    jobs = []
    for num, overrides in enumerate(line for batch in batches for line in batch):
        parsed = parser.parse_overrides(list(overrides))
        job = copy.deepcopy(config)
        with open_dict(job), read_write(job):
            job.hydra.job.num = num
            job.hydra.job.id = num
            job.hydra.overrides.task = list(overrides)
            job.hydra.job.override_dirname = get_overrides_dirname(
                parsed, list(dirname.exclude_keys), dirname.item_sep, dirname.kv_sep
            )
            for o in parsed:
                key = o.key_or_group
                if not key.startswith("hydra.") and not isinstance(OmegaConf.select(job, key), Container):
                    OmegaConf.update(job, key, o.value(), force_add=True)
        jobs.append((job, Path(str(job.hydra.sweep.dir)) / str(job.hydra.sweep.subdir)))
    return jobs


class ConfigCheck(Callback):
    """Hydra callback: check the composed config and the run directory before Hydra creates or writes anything.

    Registered in ``conf/hydra/default.yaml``; a bad value, an unwritable ``hydra.run.dir`` or a run
    directory the command would refuse (it holds a finished search or fine-tuning, or one is running
    there) ends the command with one line and exit status 2, before Hydra writes ``.hydra/`` into it.
    A sweep is refused as a whole when two of its jobs would share a directory or one job's directory
    is taken (each job's values are checked again by :func:`run_cli`).
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check ``config`` (its schema and ``hydra.run.dir``)."""
        try:
            check_config(config)
        except AmcError as exc:
            _fail(str(exc))
        self._check_dir(config, "run")
        problem = occupied_problem(config, str(config.hydra.run.dir))
        if problem:
            _fail(problem)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Check the sweep directory and each job's directory (the sweep's values are checked per job)."""
        self._check_dir(config, "sweep")
        if str(config.get("task_name") or "") not in HELD:
            return
        seen: dict[Path, int] = {}
        for job, path in sweep_job_dirs(config):
            num = int(job.hydra.job.num)
            if path.absolute() in seen:
                _fail(
                    f"jobs {seen[path.absolute()]} and {num} of this sweep would both write {path} "
                    f"(hydra.sweep.subdir={config.hydra.sweep.subdir!s}); keep ${{hydra.job.num}} in hydra.sweep.subdir"
                )
            seen[path.absolute()] = num
            problem = occupied_problem(job, path)
            if problem:
                _fail(f"job {num} of this sweep: {problem}")

    @staticmethod
    def _check_dir(config: DictConfig, mode: str) -> None:
        path = config.hydra[mode].dir
        problem = writable_dir_problem(str(path))
        if problem:
            _fail(f"cannot write the run directory {path} ({problem}); point hydra.{mode}.dir to a writable directory")
