"""Run-wide helpers: seeding, threads, device selection, atomic file writes."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import functools
import logging
import os
import random
import tempfile
import time
from collections.abc import Iterable, Iterator
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


@functools.cache
def _libc_function(symbol: str) -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), symbol) if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to call
        return None


# glibc's <malloc.h> parameter numbers for mallopt.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def hold_freed_heap(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Keep freed activation memory in the process for the next batch (glibc ``mallopt``); ``False`` without glibc.

    By default glibc serves a block above its mmap threshold (128 KiB at first, raised on the fly up to
    32 MiB) with a fresh mapping and gives it back when freed, and it also hands back the top of the
    heap once more than its trim threshold is free there. Either way the next batch's activations of
    the same size page-fault their memory in again: on ResNet-20 (3x32x32, 512 images, batches of 256,
    one thread) that made the convolutions and element-wise operations of one evaluation take about
    1.5x as long as on memory already mapped (``torch.profiler``: 0.60 s against 0.40 s). Fixing the
    mmap threshold at glibc's largest (32 MiB) serves such tensors from the heap, and a trim threshold
    of 1 GiB keeps what they free there; memory that is really no longer needed is returned at the end
    of an episode by :class:`HeapTrimmer` (and a fixed *low* threshold, the other way to keep memory
    flat, made every activation a fresh mapping: episodes ran about twice as long).

    Called by the environment and by each evaluation worker; affects the whole process.

    Args:
        mmap_threshold: bytes from which a block gets its own mapping (glibc caps it at 32 MiB on 64-bit).
        trim_threshold: free bytes at the top of the heap above which ``free`` returns them.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))


def release_freed_memory() -> bool:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim(0)``); ``False`` where there is none.

    Why a search needs it: every episode evaluates a differently pruned copy of the model, so its
    activation tensors (batch x channels x height x width floats, megabytes each) have new sizes each
    time. Once glibc has raised its mmap threshold (it follows the largest freed block, up to 32 MiB),
    such tensors are carved from the heap, and the freed holes between live blocks of other sizes are
    never returned: resident memory ratchets up episode after episode (fmnist_cnn, 5,000-image split:
    914 MiB after 20 episodes, 1,632 MiB after 100). Calling this at the end of an episode, when no
    activation is alive, returns those pages at once (412 and 438 MiB; ``benchmarks/episode_cost.py
    memory``). A fixed low mmap threshold (``mallopt``) would also keep memory flat, but then every
    activation is a fresh mapping and pays its page faults: episodes ran about twice as long.
    """
    trim = _libc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def resident_bytes() -> int | None:
    """This process's resident memory in bytes (``/proc/self/statm``), or ``None`` where there is no procfs."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class HeapTrimmer:
    """Calls :func:`release_freed_memory` only once resident memory has grown ``slack`` above its reference.

    Trimming after every episode kept memory flat but cost time: the trim walks the heap, and the next
    episode page-faults its activations back in (fmnist_cnn prune, 512-image split: 0.120 s per episode
    without it, 0.147 s with it, evaluation 0.051 against 0.065 s; ``benchmarks/episode_cost.py phases``).
    The freed memory an allocator keeps is mostly the next episode's working set, so it is only trimmed
    when the resident size exceeds the reference (that after the first episode, its working set
    included) by more than ``slack``: the ratchet described in :func:`release_freed_memory`. The
    reference rises to what is still resident after a trim, so memory that is really in use (an
    evaluation cache, a replay buffer) is not trimmed at again and again.

    Args:
        slack: allowed growth over the reference, as a fraction (0.1: 10 %; 0: trim every time).
    """

    def __init__(self, slack: float = 0.1) -> None:
        if slack < 0:
            raise ValueError(f"slack must be >= 0, got {slack}")
        self.slack = slack
        self.reference: int | None = None
        self.trims = 0

    def __call__(self) -> bool:
        """Trim when resident memory is above ``reference * (1 + slack)``; ``True`` when it trimmed."""
        rss = resident_bytes()
        measured = rss is not None and self.slack > 0  # else: trim every time
        if measured:
            if self.reference is None:
                self.reference = rss
                return False
            if rss <= self.reference * (1 + self.slack):
                return False
        trimmed = release_freed_memory()
        self.trims += trimmed
        if measured:
            self.reference = max(self.reference, resident_bytes() or rss)
        return trimmed


trim_heap = HeapTrimmer()
"""The process's trimmer, called at the end of every evaluated episode (in the environment and in each worker)."""


def bar_disable(enabled: bool) -> bool | None:
    """tqdm's ``disable`` for a progress bar that is ``enabled``: shown only where stderr is a terminal.

    ``None`` lets tqdm decide: written into a pipe or a file, a bar cannot redraw itself and leaves
    one more line at every refresh; there the log lines report the progress instead (``amc.train``'s
    progress log, about 20 lines a search; an epoch line per epoch in ``amc.pretrain`` and
    ``amc.finetune``).
    """
    return None if enabled else True


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


SI_PREFIXES = ((1e-9, "n"), (1e-6, "µ"), (1e-3, "m"), (1.0, ""), (1e3, "k"), (1e6, "M"), (1e9, "G"))


def si_unit(reference: float | None, unit: str) -> tuple[float, str]:
    """The SI prefix that shows ``reference`` (in base units) as 1 to 999: ``(multiplier, prefixed unit)``.

    Every table of amc (search summary, fine-tuning report, hardware report) picks its latency and energy
    units with this, per row from the dense model's value, so 4.96e-5 s reads ``49.6 µs`` everywhere.

    Args:
        reference: the value that decides the prefix (``None`` or 0: no prefix).
        unit: the base unit, e.g. ``s`` or ``J``.
    """
    if not reference:
        return 1.0, unit
    size = abs(float(reference))
    factor, prefix = next(((f, p) for f, p in SI_PREFIXES if size < f * 1000), SI_PREFIXES[-1])
    return 1.0 / factor, f"{prefix}{unit}"


def format_si(value: float | None, unit: str, reference: float | None = None, digits: int = 4) -> str:
    """``value`` in the unit :func:`si_unit` picks for ``reference`` (default: ``value``), e.g. ``49.6 µs``.

    Args:
        value: the number in base units (``None``: ``-``).
        unit: the base unit.
        reference: the value that decides the prefix (to share it across a row).
        digits: significant digits.
    """
    if value is None:
        return "-"
    scale, label = si_unit(value if reference is None else reference, unit)
    return f"{value * scale:.{digits}g} {label}"


def _write_error(path: Path, exc: BaseException) -> AmcError:
    reason = getattr(exc, "strerror", None) or " ".join(str(exc).split())[:120] or type(exc).__name__
    return AmcError(
        f"cannot write {path} ({reason}); free disk space or point the output to a writable directory "
        "(the previous file, if any, is unchanged)"
    )


def umask_mode(directory: bool = False) -> int:
    """The mode a new file (``0o666``) or directory (``0o777``) gets under the process's umask.

    Args:
        directory: the mode of a directory instead of a file.
    """
    umask = None
    try:  # Linux reports the umask without changing it (os.umask can only be read by setting it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    if umask is None:
        umask = os.umask(0o022)
        os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def give_umask_mode(path: str | Path, directory: bool = False) -> None:
    """Give a file made by ``tempfile`` (always ``0o600``/``0o700``) the mode the umask gives a new file.

    Args:
        path: the temporary file or directory, before it is renamed into place.
        directory: ``path`` is a directory.
    """
    os.chmod(path, umask_mode(directory))


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
        give_umask_mode(tmp)
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
        give_umask_mode(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        # torch reports a failed write (e.g. ENOSPC) as a RuntimeError from its stream writer.
        if isinstance(exc, OSError | RuntimeError):
            raise _write_error(path, exc) from exc
        raise


LOCK_FILE = ".amc.lock"


@contextlib.contextmanager
def claim_dir(directory: str | Path, what: str = "run") -> Iterator[Path]:
    """Hold an exclusive claim on ``directory`` (``flock`` on ``<directory>/.amc.lock``) while the block runs.

    A second process that claims the same directory gets a one-line :class:`AmcError` at once, before it
    writes anything. The kernel drops the lock when its holder exits, so a killed run never blocks the
    next one (the lock file itself stays; it is empty).

    Args:
        directory: the run directory (created if missing).
        what: what the directory holds, for the message ("search", "fine-tuning").
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _write_error(directory / LOCK_FILE, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AmcError(
                f"another amc {what} is running in {directory} right now; wait for it to finish or write elsewhere "
                "(hydra.run.dir=...)"
            ) from None
        yield directory
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def wait_for_lock(path: str | Path, reason: str) -> Iterator[None]:
    """Hold a blocking exclusive ``flock`` on ``path`` (created if missing), logging when another process has it.

    Args:
        path: the lock file.
        reason: what the lock protects, for the log line.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is %s (%s)", reason, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def move_aside(directory: str | Path, names: Iterable[str]) -> Path | None:
    """Move ``directory``'s entries ``names`` into a new ``directory/.replaced-<time>/`` (``None``: none existed).

    The replaced outputs of an ``overwrite=true`` run stay there until the new run has finished
    (its caller deletes the folder then), so a run that fails half way loses nothing.

    Args:
        directory: the run directory.
        names: files or folders to move.
    """
    directory = Path(directory)
    present = [n for n in names if (directory / n).exists()]
    if not present:
        return None
    aside = directory / f".replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    try:
        aside.mkdir()
        for name in present:
            os.replace(directory / name, aside / name)
    except OSError as exc:
        raise _write_error(aside, exc) from exc
    log.warning("overwrite=true: the previous outputs are in %s until this run finishes", aside)
    return aside
