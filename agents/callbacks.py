"""Search callbacks: progress bar, episode log, best policy, TensorBoard, checkpoints (and RNG state)."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from amc.agents.base import Agent, EpisodeRecord, SearchCallback, SearchResult
from amc.envs import CompressionEnv
from tqdm.auto import tqdm

from amc.errors import AmcError
from amc.utils import atomic_torch_save, atomic_write_bytes, bar_disable, give_umask_mode

log = logging.getLogger(__name__)


class ProgressBar(SearchCallback):
    """A tqdm bar over episodes with the last reward, the best reward and tqdm's ETA.

    Args:
        enabled: show the bar.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def on_search_start(self, agent: Agent, env: CompressionEnv, episodes: int) -> None:
        self.bar = tqdm(
            total=episodes,
            initial=agent.episodes_done,
            desc=f"search[{agent.name}]",
            unit="ep",
            dynamic_ncols=True,
            disable=bar_disable(self.enabled),
        )

    def on_episode(self, agent: Agent, record: EpisodeRecord, is_best: bool) -> None:
        best = agent.best.reward if agent.best is not None else float("nan")
        self.bar.set_postfix(
            reward=f"{record.reward:.4f}", acc=f"{record.accuracy:.4f}", best=f"{best:.4f}", refresh=False
        )
        self.bar.update(1)

    def on_search_end(self, agent: Agent, result: SearchResult) -> None:
        self.bar.close()


class ProgressLog(SearchCallback):
    """Log lines of the search's progress (into the run's ``train.log``), for runs without a terminal (SLURM).

    Every ``every`` episodes (and after the last one): episode, phase, search accuracy, the best so far and
    the budget ratios; a line on every new best is left to TensorBoard and ``episodes.csv``.

    Args:
        every: episodes between lines (``None``: ``max(1, episodes // 20)``, about 20 lines per search).
    """

    def __init__(self, every: int | None = None) -> None:
        self.every = every
        self.interval = 1
        self.total = 0

    def on_search_start(self, agent: Agent, env: CompressionEnv, episodes: int) -> None:
        self.total = episodes
        self.interval = self.every or max(1, episodes // 20)
        start = f"from episode {agent.episodes_done} " if agent.episodes_done else ""
        log.info("search[%s]: %d episodes %s(a line every %d)", agent.name, episodes, start, self.interval)

    def on_episode(self, agent: Agent, record: EpisodeRecord, is_best: bool) -> None:
        if record.episode % self.interval and record.episode < self.total:
            return
        best = agent.best
        shown = sorted(set(record.budgets) | ({"latency"} & set(record.ratios)))
        ratios = ", ".join(f"{name} ratio {record.ratios[name]:.3f}" for name in shown if name in record.ratios)
        log.info(
            "episode %d/%d (%s): accuracy %.4f, reward %.4f%s; best %s",
            record.episode,
            self.total,
            record.phase,
            record.accuracy,
            record.reward,
            f", {ratios}" if ratios else "",
            f"{best.accuracy:.4f} (episode {best.episode})" if best is not None else "none yet",
        )


def _with_best(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    best, out = float("-inf"), []
    for row in rows:
        if int(row.get("eligible", 1)):
            best = max(best, float(row["reward"]))
        out.append({**row, "best_reward": best if best > float("-inf") else ""})
    return out


class EpisodeLog(SearchCallback):
    """``episodes.csv``: one row per episode (phase, reward, accuracy, every cost ratio, seconds, cached, best so far).

    After a resume the file is rewritten from the checkpoint's history, so it never holds episodes
    that the resumed search runs again.

    Args:
        path: the CSV file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.fields: list[str] | None = None
        self.best = float("-inf")

    def on_search_start(self, agent: Agent, env: CompressionEnv, episodes: int) -> None:
        rows = _with_best(agent.history)
        self.fields = list(rows[0]) if rows else None
        self.best = max((float(r["reward"]) for r in agent.history if int(r.get("eligible", 1))), default=float("-inf"))
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]), extrasaction="ignore", restval="")
            writer.writeheader()
            writer.writerows(rows)
        atomic_write_bytes(self.path, buf.getvalue().encode())

    def on_episode(self, agent: Agent, record: EpisodeRecord, is_best: bool) -> None:
        if record.eligible:
            self.best = max(self.best, record.reward)
        row = {**record.row(), "best_reward": self.best if self.best > float("-inf") else ""}
        new = self.fields is None
        if self.fields is None:
            self.fields = list(row)
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.fields, extrasaction="ignore", restval="")
            if new:
                writer.writeheader()
            writer.writerow(row)


class BestPolicyWriter(SearchCallback):
    """``best_policy.json``: the best policy with its budgets, metrics and run identity, rewritten on every new best.

    Readable with :meth:`amc.compress.Policy.load`.

    Args:
        path: the JSON file.
        meta: run identity written alongside (agent, seed, config hash, model, data...).
    """

    def __init__(self, path: str | Path, meta: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.meta = dict(meta)

    def on_search_start(self, agent: Agent, env: CompressionEnv, episodes: int) -> None:
        if agent.best is not None:
            self.write(agent.best, episodes_done=agent.episodes_done)

    def on_episode(self, agent: Agent, record: EpisodeRecord, is_best: bool) -> None:
        if is_best:
            self.write(record, episodes_done=agent.episodes_done)

    def write(self, record: EpisodeRecord, **extra: Any) -> None:
        """Write ``record`` as the best policy (``extra`` keys are added, e.g. test accuracy)."""
        data = {
            **self.meta,
            "episode": record.episode,
            "phase": record.phase,
            "reward": record.reward,
            "accuracy": record.accuracy,
            "budgets": record.budgets,
            "ratios": record.ratios,
            "metrics": record.metrics,
            **extra,
            "policy": record.policy,
        }
        atomic_write_bytes(self.path, json.dumps(data, indent=1).encode())


class TensorBoardLogger(SearchCallback):
    """TensorBoard: ``search/*`` per episode, ``policy/*`` (means and per-unit images), ``train/*``, hparams.

    Policy images are drawn (matplotlib, about 0.09 s each on one CPU core, 0.5 s for the first with
    matplotlib's import) on a background thread, so a search does not wait for them: on a GPU, where an
    episode is to take 0.1 s, every improvement's image would otherwise add most of an episode. Images
    are drawn one at a time, in order; all are written by the end of the search (:meth:`on_search_end`
    waits for them, and re-raises a drawing error there at the latest).

    Args:
        log_dir: the event directory.
        image_every: episodes between images of the episode's per-unit policy (the best is drawn on
            every improvement).
        hparams: run settings for the hparams table (scalars and strings).
        hold: keep the writer open after the search, for :meth:`finish` to add metrics measured afterwards
            (the best policy's test accuracy); otherwise the hparams are written when the search ends.
    """

    def __init__(
        self,
        log_dir: str | Path,
        image_every: int = 50,
        hparams: Mapping[str, Any] | None = None,
        hold: bool = False,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.image_every = max(0, int(image_every))
        self.hparams = dict(hparams or {})
        self.hold = hold
        self.result: SearchResult | None = None
        self.writer: Any = None
        self._drawer: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []

    def on_search_start(self, agent: Agent, env: CompressionEnv, episodes: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        done = agent.episodes_done
        # After a resume, drop what the interrupted run logged beyond its checkpoint.
        self.writer = SummaryWriter(str(self.log_dir), purge_step=done + 1 if done else None)

    def on_episode(self, agent: Agent, record: EpisodeRecord, is_best: bool) -> None:
        w, step = self.writer, record.episode
        w.add_scalar("search/reward", record.reward, step)
        w.add_scalar("search/accuracy", record.accuracy, step)
        for name, value in record.ratios.items():
            w.add_scalar(f"search/ratio/{name}", value, step)
        for name, budget in record.budgets.items():  # the wall's targets, beside the achieved ratios
            w.add_scalar(f"search/target/{name}", budget["target"], step)
        w.add_scalar("search/seconds", record.seconds, step)
        if agent.best is not None:
            w.add_scalar("search/best_reward", agent.best.reward, step)
            w.add_scalar("search/best_accuracy", agent.best.accuracy, step)
        if record.policy is not None:
            units = record.policy["units"]
            keep = [u["out_channels"] / u["dense_out_channels"] for u in units]
            w.add_scalar("policy/mean_keep", float(np.mean(keep)), step)
            w.add_scalar("policy/mean_w_bits", float(np.mean([u["w_bits"] for u in units])), step)
            w.add_scalar("policy/mean_a_bits", float(np.mean([u["a_bits"] for u in units])), step)
            if self.image_every and step % self.image_every == 0:
                self._draw("policy/episode", record.policy, f"episode {step}", step)
            if is_best:
                self._draw("policy/best", record.policy, f"best: episode {step}", step)

    def _draw(self, tag: str, policy: Mapping[str, Any], title: str, step: int) -> None:
        """Draw ``policy`` and add it as image ``tag`` at ``step``, on the background thread."""
        for f in [f for f in self._pending if f.done()]:
            self._pending.remove(f)
            f.result()  # a drawing error surfaces at the next image
        if self._drawer is None:
            self._drawer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="amc-tensorboard-images")
        writer = self.writer

        def draw() -> None:
            writer.add_image(tag, policy_image(policy, title), step, dataformats="HWC")

        self._pending.append(self._drawer.submit(draw))

    def _wait_for_images(self) -> None:
        drawer, pending = self._drawer, self._pending
        self._drawer, self._pending = None, []
        if drawer is not None:
            drawer.shutdown(wait=True)
        for f in pending:
            f.result()

    def on_safe_point(self, agent: Agent, episodes_done: int) -> None:
        for name, value in agent.train_metrics().items():
            self.writer.add_scalar(f"train/{name}", value, episodes_done)

    def on_search_end(self, agent: Agent, result: SearchResult) -> None:
        self.result = result
        self._wait_for_images()
        if not self.hold:
            self.finish()

    def finish(self, metrics: Mapping[str, float | None] | None = None) -> None:
        """Write the hparams table (settings and final metrics, plus ``metrics``) and close the writer.

        Args:
            metrics: more final numbers, e.g. ``{"test_accuracy": 0.91}`` (logged as ``hparam/<name>``).
        """
        self._wait_for_images()
        if self.writer is None or self.result is None:
            return
        result = self.result
        final: dict[str, float] = {"hparam/episodes": float(len(result.episodes))}
        if result.best is not None:
            final["hparam/best_reward"] = result.best.reward
            final["hparam/best_accuracy"] = result.best.accuracy
            for name, b in result.best.budgets.items():
                final[f"hparam/achieved_{name}"] = b["achieved"]
        final.update({f"hparam/{k}": float(v) for k, v in (metrics or {}).items() if v is not None})
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in self.hparams.items()}
        self.writer.add_hparams(hparams, final, run_name=".", global_step=len(result.episodes))
        self.writer.close()
        self.writer = None


def policy_image(policy: Mapping[str, Any], title: str = "") -> np.ndarray:
    """An RGB image (H, W, 3) of a per-unit policy: kept ratio and bits per layer."""
    from amc.plots import plot_policy

    fig = plot_policy(policy, title)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# --- checkpoints ------------------------------------------------------------------------------------
def rng_state(env: CompressionEnv) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Global (Python, NumPy, torch) and environment generator states: (JSON part, tensor part)."""
    py = random.getstate()
    np_state = np.random.get_state()
    assert isinstance(np_state, tuple)
    plain = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "env": env.np_random.bit_generator.state,
        "env_action_space": env.action_space.np_random.bit_generator.state,
    }
    return plain, {"torch": torch.get_rng_state()}


def set_rng_state(plain: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], env: CompressionEnv) -> None:
    """Restore :func:`rng_state`."""
    version, state, gauss = plain["python"]
    random.setstate((version, tuple(state), gauss))
    name, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    env.np_random.bit_generator.state = dict(plain["env"])
    env.action_space.np_random.bit_generator.state = dict(plain["env_action_space"])
    torch.set_rng_state(tensors["torch"])


class Checkpointer(SearchCallback):
    """Saves the whole search state every ``every`` episodes and at the end of the search.

    A checkpoint is a directory ``episode_NNNNNN`` (agent state, RNG states) written under a
    temporary name and renamed into place; ``latest.json``, written atomically afterwards, names it.
    A kill at any moment leaves the previous checkpoint intact.

    Args:
        directory: where checkpoints go (``<run>/checkpoints``).
        every: episodes between checkpoints.
        env: the environment (its generators are saved).
    """

    def __init__(self, directory: str | Path, every: int, env: CompressionEnv) -> None:
        self.directory = Path(directory)
        self.every = max(1, int(every))
        self.env = env
        self.total = 0
        self.saved = -1

    def on_search_start(self, agent: Agent, env: CompressionEnv, episodes: int) -> None:
        self.total = episodes
        self.saved = agent.episodes_done

    def on_safe_point(self, agent: Agent, episodes_done: int) -> None:
        # Parallel episodes (agent.n_envs) reach safe points a batch at a time: save when one passed a multiple.
        crossed = episodes_done // self.every > self.saved // self.every
        if episodes_done % self.every == 0 or episodes_done >= self.total or crossed:
            self.save(agent, episodes_done)

    def on_search_end(self, agent: Agent, result: SearchResult) -> None:
        if self.saved != agent.episodes_done:  # a baseline that needed fewer episodes than the budget
            self.save(agent, agent.episodes_done)

    def save(self, agent: Agent, episodes_done: int) -> Path:
        """Write a checkpoint now."""
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"episode_{episodes_done:06d}"
        tmp = Path(tempfile.mkdtemp(dir=self.directory, prefix=f".{name}."))
        give_umask_mode(tmp, directory=True)
        agent.save(tmp)
        plain, tensors = rng_state(self.env)
        atomic_write_bytes(tmp / "rng.json", json.dumps(plain).encode())
        atomic_torch_save(dict(tensors), tmp / "rng.pt")
        final = self.directory / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write_bytes(self.directory / "latest.json", json.dumps({"episode": episodes_done, "dir": name}).encode())
        for old in self.directory.iterdir():
            if old.is_dir() and old.name != name:
                shutil.rmtree(old, ignore_errors=True)
            elif old.is_file() and old.name.startswith(".") and old.name.endswith(".tmp"):
                old.unlink(missing_ok=True)  # a killed atomic write's temporary file (this run writes one at a time)
        self.saved = episodes_done
        return final


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The directory of a run's latest checkpoint.

    Args:
        run_dir: the run directory (holds ``checkpoints/latest.json``).
    """
    pointer = Path(run_dir) / "checkpoints" / "latest.json"
    try:
        name = json.loads(pointer.read_text())["dir"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise AmcError(
            f"{run_dir} has no checkpoint ({pointer} is missing or unreadable); "
            "resume a run that saved one (see callbacks.checkpoint_every) or start a new run"
        ) from exc
    path = pointer.parent / str(name)
    if not path.is_dir():
        raise AmcError(f"checkpoint {path} named by {pointer} is missing; start a new run")
    return path


def restore_rng(checkpoint: str | Path, env: CompressionEnv) -> None:
    """Restore the generators saved in a checkpoint directory (call after the agent is loaded)."""
    checkpoint = Path(checkpoint)
    try:
        plain = json.loads((checkpoint / "rng.json").read_text())
        tensors = torch.load(checkpoint / "rng.pt", map_location="cpu", weights_only=True)
    except (OSError, json.JSONDecodeError, RuntimeError) as exc:
        raise AmcError(
            f"checkpoint {checkpoint} has unreadable RNG state ({type(exc).__name__}); start a new run"
        ) from exc
    set_rng_state(plain, tensors, env)
