"""Parallel episode evaluation: worker processes that compress and evaluate policies (``agent.n_envs``).

An episode's expensive part is its last step: the policy is applied to a copy of the dense model
(:meth:`amc.compress.Compressor.apply`) and the compressed model is evaluated on the search split.
The steps before it (budget wall, observation) cost microseconds. So parallel episodes keep every
decision in the main process (the agent, the wall, the cache, the reward, the records) and send only
the finished policies to an :class:`EvaluationPool`: ``n`` worker processes, each holding its own
copy of the compressor and the search split (sent once, when the pool starts), each with
``threads`` torch threads and its own device (``cuda:i`` in turn when the evaluation device is a GPU
and several are visible). :meth:`EvaluationPool.accuracies` evaluates a batch of policies in
parallel and returns the accuracies in order.

Compressing and evaluating is deterministic for a fixed environment (fixed calibration batches,
search split and seed; the compressor draws from its own generators), so a worker measures what the
main process would, and a search's results do not depend on how many workers measured them.

Workers are started by a ``forkserver`` that has imported torch and amc once (``spawn`` where there
is none): never a plain ``fork`` of a process in which torch may have started threads, and no
second import of torch per worker (2 s each on a small machine). As with any multiprocessing start
method but ``fork``, a script that runs a parallel search must guard its entry point with
``if __name__ == "__main__":`` (``python -m amc.train`` does). Workers are stopped by
:meth:`EvaluationPool.close` (also a context manager, and at interpreter exit). A worker's error, or
a worker that died, surfaces as one :class:`~amc.errors.AmcError` line.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing as mp
import os
import pickle
import time
import weakref
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import torch

from amc.errors import AmcError
from amc.utils import hold_freed_heap

if TYPE_CHECKING:
    from amc.compress import Compressor, Policy

log = logging.getLogger(__name__)

_OPEN: weakref.WeakSet[EvaluationPool] = weakref.WeakSet()


def measure_accuracy(
    compressor: Compressor,
    policy: Policy,
    search_x: torch.Tensor,
    search_y: torch.Tensor,
    batch_size: int,
    device: torch.device,
    timing: dict[str, float],
) -> float:
    """Compress ``policy`` and return the search accuracy (NaN when an output is NaN/inf); phases go into ``timing``.

    The one measurement both the environment (in its own process) and a pool worker run. With the
    compressor's ``calibration_set="search"`` the model is calibrated inside the evaluation (whose
    seconds then include it; ``calibration`` is 0).

    Args:
        compressor: the compressor holding the dense model.
        policy: the configuration.
        search_x: search-split inputs.
        search_y: search-split labels.
        batch_size: evaluation batch size.
        device: where the compressed model is evaluated.
        timing: seconds per phase are added to it.
    """
    from amc.compress import calibrate_on_search_batch
    from amc.evaluate import search_accuracy
    from amc.utils import trim_heap

    on_search = compressor.calibration_set == "search"
    model = compressor.apply(policy, timing, calibrate=not on_search)
    t = time.perf_counter()
    if on_search:  # BN statistics and ranges from one search batch, in the evaluation's own pass
        acc = calibrate_on_search_batch(
            model, search_x, search_y, batch_size, device, compressor.bn_recalibration, compressor.seed
        )
    else:
        acc = search_accuracy(model, search_x, search_y, batch_size, device)
    del model
    trim_heap()  # nothing of this episode's model is alive now: see amc.utils.release_freed_memory for why
    timing["evaluation"] = time.perf_counter() - t
    return acc


def _to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor and module in it (through lists, tuples and dicts) on ``device``."""
    if isinstance(value, torch.nn.Module):
        return value.to(device)
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list | tuple):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


def _worker(conn: Connection, threads: int, device: str) -> None:
    """A worker's loop: receive the payload once, then (policy) -> (accuracy, timing) until ``None``."""
    try:
        if threads > 0:
            torch.set_num_threads(threads)
        compressor, search_x, search_y, batch_size = pickle.loads(conn.recv_bytes())
        dev = torch.device(device)
        search_x, search_y = search_x.to(dev), search_y.to(dev)
        for key, value in vars(compressor).items():  # the model, calibration batches, scores, example input
            setattr(compressor, key, _to_device(value, dev))
        # A fresh worker would otherwise mmap, page-fault and unmap its activations again and again (its
        # evaluations took 40 % longer: fmnist_cnn, 5,000 images, batch 256, one thread).
        hold_freed_heap()
        conn.send(("ready", None))
    except BaseException as exc:  # noqa: BLE001 -- reported to the main process as one line
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if message is None:
            conn.close()
            os._exit(0)  # nothing to flush; skips torch's slow interpreter teardown
        try:
            timing: dict[str, float] = {}
            acc = measure_accuracy(compressor, message, search_x, search_y, batch_size, dev, timing)
            reply: tuple[str, Any] = ("ok", (acc, timing))
        except Exception as exc:  # noqa: BLE001
            reply = ("error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}")
        try:
            conn.send(reply)
        except OSError:  # the search's process is gone
            return


def _context() -> Any:
    """The start method: a forkserver that preloads this module (torch, amc), or spawn where there is none."""
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def worker_devices(device: torch.device, n: int) -> list[str]:
    """The evaluation device of each of ``n`` workers: ``cuda:i`` in turn over the visible GPUs, else ``device``.

    Args:
        device: the environment's evaluation device.
        n: number of workers.
    """
    if device.type == "cuda" and device.index is None and torch.cuda.device_count() > 1:
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(n)]
    return [str(device)] * n


class EvaluationPool:
    """``n`` worker processes that compress and evaluate policies of one environment in parallel.

    Args:
        compressor: the environment's compressor (copied into each worker once).
        search_data: (inputs, labels) of the search split.
        n: number of workers (>= 1).
        batch_size: evaluation batch size.
        device: the environment's evaluation device (see :func:`worker_devices`).
        threads: torch threads per worker (0: torch's default).
    """

    def __init__(
        self,
        compressor: Compressor,
        search_data: tuple[torch.Tensor, torch.Tensor],
        n: int,
        batch_size: int,
        device: torch.device,
        threads: int = 1,
    ) -> None:
        if int(n) < 1:
            raise AmcError(f"agent.n_envs={n} must be >= 1")
        self.n = int(n)
        self.devices = worker_devices(torch.device(device), self.n)
        ctx = _context()
        x, y = search_data
        payload = pickle.dumps((compressor, x.cpu(), y.cpu(), int(batch_size)), protocol=pickle.HIGHEST_PROTOCOL)
        self._conns: list[Connection] = []
        self._procs: list[Any] = []
        try:
            for i in range(self.n):
                parent, child = ctx.Pipe()
                proc = ctx.Process(
                    target=_worker, args=(child, int(threads), self.devices[i]), daemon=True, name=f"amc-eval-{i}"
                )
                proc.start()
                child.close()
                parent.send_bytes(payload)
                self._conns.append(parent)
                self._procs.append(proc)
            for i in range(self.n):
                self._receive(i)
        except BaseException:
            self.close()
            raise
        _OPEN.add(self)
        log.info("evaluation pool: %d workers (%d threads each) on %s", self.n, threads, ", ".join(self.devices))

    def _receive(self, i: int) -> Any:
        try:
            status, value = self._conns[i].recv()
        except (EOFError, OSError) as exc:
            code = self._procs[i].exitcode if i < len(self._procs) else None
            raise AmcError(
                f"evaluation worker {i} stopped (exit code {code}); check its memory use or run with agent.n_envs=1"
            ) from exc
        if status == "error":
            raise AmcError(f"evaluation worker {i} failed: {value} (run with agent.n_envs=1 to see it in place)")
        return value

    def accuracies(self, policies: Sequence[Policy]) -> list[tuple[float, dict[str, float]]]:
        """Compress and evaluate ``policies`` in parallel: (accuracy, phase seconds) for each, in order.

        Args:
            policies: the configurations (any number; handed out ``n`` at a time, round-robin).
        """
        if not self._conns:
            raise AmcError("the evaluation pool is closed; evaluate inside the search that opened it")
        out: list[tuple[float, dict[str, float]]] = []
        for start in range(0, len(policies), self.n):
            chunk = policies[start : start + self.n]
            for i, policy in enumerate(chunk):
                self._conns[i].send(policy)
            out.extend(self._receive(i) for i in range(len(chunk)))
        return out

    def close(self) -> None:
        """Stop the workers (idempotent): ask each to exit, then terminate any that does not."""
        conns, procs = self._conns, self._procs
        self._conns, self._procs = [], []
        for conn in conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        for conn in conns:
            conn.close()
        _OPEN.discard(self)

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [p.pid for p in self._procs if p.pid is not None]

    def __enter__(self) -> EvaluationPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    for pool in list(_OPEN):
        pool.close()


__all__ = ["EvaluationPool", "measure_accuracy", "worker_devices"]
