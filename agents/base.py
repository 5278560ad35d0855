"""One small interface for every search agent: ``agent.search(env, episodes, callback) -> SearchResult``.

An agent drives :class:`amc.envs.CompressionEnv` for a number of episodes, keeps the history and the
best policy found, and tells a :class:`SearchCallback` about every episode and about every *safe
point* (a moment when its whole state can be saved, so that a resumed search continues exactly).
``save``/``load`` write and read that state (JSON, plus tensors for the DDPG agent).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from amc.envs import CompressionEnv
from amc.envs.budget import METRICS

from amc.compress import Policy
from amc.errors import AmcError
from amc.utils import atomic_write_bytes


@dataclass
class EpisodeRecord:
    """What one episode produced.

    Attributes:
        episode: 1-based episode number.
        phase: what the agent was doing (``warmup``, ``explore``, ``random``, ``uniform``, ``scan``, ``greedy``).
        reward: the environment's reward.
        accuracy: search-split top-1 of the compressed model.
        ratios: every cost ratio (compressed / dense) by metric.
        metrics: every cost metric in absolute units by metric.
        budgets: per budget, ``{"target": ..., "achieved": ...}``.
        seconds: wall time of the episode.
        eligible: whether the policy went through the budget wall (only those can be the best).
        extras: agent-specific numbers (e.g. the noise sigma).
        policy: the policy (:meth:`amc.compress.Policy.to_dict`).
        cached: its accuracy came from the environment's evaluation cache (``env.eval_cache``), not a new
            compression and evaluation. The cache is not checkpointed, so a resumed search may measure
            again what the straight one recalled: compare runs without this column (and ``seconds``).
    """

    episode: int
    phase: str
    reward: float
    accuracy: float
    ratios: dict[str, float]
    metrics: dict[str, float]
    budgets: dict[str, dict[str, float]]
    seconds: float
    eligible: bool = True
    extras: dict[str, float] = field(default_factory=dict)
    policy: dict[str, Any] | None = None
    cached: bool = False

    @classmethod
    def from_info(
        cls,
        episode: int,
        phase: str,
        info: Mapping[str, Any],
        seconds: float,
        eligible: bool = True,
        extras: Mapping[str, float] | None = None,
    ) -> EpisodeRecord:
        """Build a record from the ``info`` the environment returns at the end of an episode."""
        return cls(
            episode=episode,
            phase=phase,
            reward=float(info["reward"]),
            accuracy=float(info["accuracy"]),
            ratios={k.split("/", 1)[1]: float(v) for k, v in info.items() if k.startswith("ratio/")},
            metrics={k: float(info[k]) for k in METRICS if k in info},
            budgets={
                n: {"target": float(b["target"]), "achieved": float(b["achieved"])}
                for n, b in info.get("budgets", {}).items()
            },
            seconds=float(seconds),
            eligible=eligible and "failed" not in info and math.isfinite(float(info["accuracy"])),
            extras={k: float(v) for k, v in (extras or {}).items()},
            policy=info.get("policy"),
            cached=bool(info.get("cached", False)),
        )

    def row(self) -> dict[str, Any]:
        """Flat scalars for the episode log (``episodes.csv``)."""
        out: dict[str, Any] = {
            "episode": self.episode,
            "phase": self.phase,
            "reward": self.reward,
            "accuracy": self.accuracy,
        }
        out.update({f"ratio/{k}": v for k, v in self.ratios.items()})
        out["seconds"] = self.seconds
        out["cached"] = int(self.cached)
        out["eligible"] = int(self.eligible)
        out.update(self.extras)
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (read back by :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EpisodeRecord:
        """Read :meth:`to_dict`."""
        return cls(**dict(data))


@dataclass
class SearchResult:
    """The outcome of a search.

    Attributes:
        agent: the agent's name.
        best: the best eligible episode (highest reward), ``None`` when no episode was eligible.
        episodes: the episode log (:meth:`EpisodeRecord.row` per episode).
    """

    agent: str
    best: EpisodeRecord | None
    episodes: list[dict[str, Any]]


class SearchCallback:
    """Hooks called by :meth:`Agent.search` (all optional)."""

    def on_search_start(self, agent: Agent, env: CompressionEnv, episodes: int) -> None:
        """Before the first episode (of this call; ``agent.episodes_done`` may be > 0 after a resume)."""

    def on_episode(self, agent: Agent, record: EpisodeRecord, is_best: bool) -> None:
        """After every episode."""

    def on_safe_point(self, agent: Agent, episodes_done: int) -> None:
        """When the agent's whole state can be saved (after an episode and any training it triggers)."""

    def on_search_end(self, agent: Agent, result: SearchResult) -> None:
        """After the last episode."""


class CallbackList(SearchCallback):
    """Calls several callbacks in order, and adds up the seconds each one takes.

    Args:
        callbacks: the callbacks.

    Attributes:
        seconds: wall seconds spent in each callback's hooks so far, by class name (two callbacks of one
            class share an entry): what a search's outputs cost beside its episodes
            (``benchmarks/episode_cost.py agent --outputs``).
    """

    def __init__(self, callbacks: Sequence[SearchCallback]) -> None:
        self.callbacks = list(callbacks)
        self.seconds: dict[str, float] = {type(c).__name__: 0.0 for c in self.callbacks}

    def _each(self, hook: str, *args: Any) -> None:
        for c in self.callbacks:
            t0 = time.perf_counter()
            getattr(c, hook)(*args)
            self.seconds[type(c).__name__] += time.perf_counter() - t0

    def on_search_start(self, agent: Agent, env: CompressionEnv, episodes: int) -> None:
        self._each("on_search_start", agent, env, episodes)

    def on_episode(self, agent: Agent, record: EpisodeRecord, is_best: bool) -> None:
        self._each("on_episode", agent, record, is_best)

    def on_safe_point(self, agent: Agent, episodes_done: int) -> None:
        self._each("on_safe_point", agent, episodes_done)

    def on_search_end(self, agent: Agent, result: SearchResult) -> None:
        self._each("on_search_end", agent, result)


class Agent(ABC):
    """Base class of search agents.

    Subclasses implement :meth:`_search` (run episodes from ``episodes_done`` on, calling
    :meth:`record` after each and ``callback.on_safe_point`` when their state is complete) and, when
    they hold state beyond the history, :meth:`state_dict`/:meth:`load_state_dict` (JSON) and
    :meth:`_save_files`/:meth:`_load_files` (anything else).

    With ``n_envs`` > 1, :meth:`search` opens ``n_envs`` evaluation workers on the environment
    (:meth:`CompressionEnv.parallel`) for the whole search, and the agent plays that many episodes at
    a time (:func:`run_episodes`, :meth:`CompressionEnv.evaluate_many`).

    Args:
        seed: the agent's seed.
        n_envs: episodes played and evaluated in parallel (worker processes; 1: none).
    """

    name: ClassVar[str] = "agent"

    def __init__(self, seed: int = 0, n_envs: int = 1) -> None:
        self.seed = int(seed)
        self.n_envs = int(n_envs)
        self.history: list[dict[str, Any]] = []
        self.best: EpisodeRecord | None = None

    @property
    def episodes_done(self) -> int:
        """Episodes recorded so far (including those before a resume)."""
        return len(self.history)

    def validate(self, episodes: int) -> None:
        """Raise a one-line :class:`AmcError` when ``episodes`` does not suit this agent."""
        if int(episodes) <= 0:
            raise AmcError(f"episodes={episodes} must be positive; set episodes=N with N >= 1")
        if self.n_envs < 1:
            raise AmcError(f"agent.n_envs={self.n_envs} must be >= 1 (episodes evaluated in parallel)")

    def setup(self, env: CompressionEnv, episodes: int) -> None:
        """Prepare for a search on ``env`` (idempotent; called by :meth:`search` and :meth:`load`)."""
        self.validate(episodes)

    def episodes_needed(self, env: CompressionEnv) -> int:
        """Episodes this agent's search takes on ``env`` when run as a demonstration (fixed-length agents)."""
        raise AmcError(f"agent {self.name!r} has no natural episode count; it cannot be a demonstration")

    def search(self, env: CompressionEnv, episodes: int, callback: SearchCallback | None = None) -> SearchResult:
        """Run the search up to ``episodes`` episodes in total (continuing after a :meth:`load`).

        Args:
            env: the compression environment.
            episodes: total episode budget (warm-up and scans included).
            callback: hooks for logging and checkpoints.
        """
        callback = callback if callback is not None else SearchCallback()
        self.setup(env, episodes)
        callback.on_search_start(self, env, episodes)
        if self.episodes_done < episodes:
            with env.parallel(self.n_envs):
                self._search(env, int(episodes), callback)
        result = SearchResult(self.name, self.best, list(self.history))
        callback.on_search_end(self, result)
        return result

    @abstractmethod
    def _search(self, env: CompressionEnv, episodes: int, callback: SearchCallback) -> None:
        """Run episodes ``episodes_done + 1 .. episodes``."""

    def record(
        self,
        info: Mapping[str, Any],
        phase: str,
        seconds: float,
        callback: SearchCallback,
        eligible: bool = True,
        extras: Mapping[str, float] | None = None,
    ) -> EpisodeRecord:
        """Log one finished episode: history, best, callbacks.

        Args:
            info: the environment's end-of-episode info (or :func:`evaluate_config`'s).
            phase: what the agent was doing.
            seconds: the episode's wall time.
            callback: told about the episode.
            eligible: whether the policy may become the best (it went through the budget wall).
            extras: agent-specific scalars for the log.
        """
        rec = EpisodeRecord.from_info(self.episodes_done + 1, phase, info, seconds, eligible, extras)
        is_best = rec.eligible and (self.best is None or rec.reward > self.best.reward)
        if is_best:
            self.best = rec
        self.history.append(rec.row())
        self._recorded(rec)
        callback.on_episode(self, rec, is_best)
        return rec

    def _recorded(self, record: EpisodeRecord) -> None:  # noqa: B027 (optional hook)
        """Called with every episode this agent records (before the callbacks hear of it)."""

    def train_metrics(self) -> dict[str, float]:
        """Scalars about the agent's learning (``train/*`` in TensorBoard); none for the baselines."""
        return {}

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state beyond history and best."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Restore :meth:`state_dict`."""

    def _save_files(self, directory: Path) -> None:  # noqa: B027 (optional hook)
        """Write state that is not JSON (DDPG: networks and replay buffer)."""

    def _load_files(self, directory: Path) -> None:  # noqa: B027 (optional hook)
        """Read what :meth:`_save_files` wrote."""

    def save(self, directory: str | Path) -> None:
        """Write the agent's whole state into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._save_files(directory)
        data = {
            "agent": self.name,
            "seed": self.seed,
            "history": self.history,
            "best": None if self.best is None else self.best.to_dict(),
            "state": self.state_dict(),
        }
        atomic_write_bytes(directory / "agent.json", json.dumps(data).encode())

    def load(self, directory: str | Path, env: CompressionEnv, episodes: int) -> None:
        """Restore a state written by :meth:`save` (sets the agent up for ``env`` first).

        Args:
            directory: the checkpoint directory.
            env: the environment the search continues on.
            episodes: the search's total episode budget.
        """
        directory = Path(directory)
        try:
            data = json.loads((directory / "agent.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise AmcError(
                f"checkpoint {directory} has no readable agent.json ({type(exc).__name__}); "
                "resume from another run directory or start a new run"
            ) from exc
        if data.get("agent") != self.name:
            raise AmcError(
                f"checkpoint {directory} was written by agent {data.get('agent')!r}, not {self.name!r}; "
                "resume with the run's own config"
            )
        self.setup(env, episodes)
        self.history = list(data["history"])
        self.best = None if data["best"] is None else EpisodeRecord.from_dict(data["best"])
        self.load_state_dict(data["state"])
        self._load_files(directory)


# --- helpers the baselines share --------------------------------------------------------------------
def run_episode(env: CompressionEnv, actions: np.ndarray, legal: bool = False) -> dict[str, Any]:
    """Play one episode with fixed per-step actions through the budget wall; return the final info.

    Args:
        env: the environment.
        actions: ``(n_units, action_dim)`` actions in [-1, 1].
        legal: the actions ask for a configuration that meets every budget: play it unclipped
            (:meth:`CompressionEnv.unclipped`), so no wall reshapes it on the way.
    """
    if legal:
        with env.unclipped():
            return run_episode(env, actions)
    env.reset()
    info: dict[str, Any] = {}
    for t in range(env.n_units):
        _, _, done, _, info = env.step(np.asarray(actions[t], dtype=np.float32))
        assert done == (t == env.n_units - 1)
    return info


def run_episodes(
    env: CompressionEnv, actions: Sequence[np.ndarray], legal: Sequence[bool] | None = None
) -> list[dict[str, Any]]:
    """Play several episodes with fixed actions through the wall and evaluate them together; infos in order.

    The results equal ``[run_episode(env, a, l) for a, l in zip(actions, legal)]``: each episode's
    decisions are made in this process, then :meth:`CompressionEnv.finish_many` measures the policies
    on the environment's evaluation workers at once (one after another without workers).

    Args:
        env: the environment.
        actions: per episode, ``(n_units, action_dim)`` actions in [-1, 1].
        legal: per episode, whether to play it unclipped (see :func:`run_episode`).
    """
    legal = list(legal) if legal is not None else [False] * len(actions)
    if env.workers == 1:
        return [run_episode(env, a, lg) for a, lg in zip(actions, legal)]
    states = []
    for acts, lg in zip(actions, legal):
        with env.unclipped() if lg else contextlib.nullcontext():
            env.reset()
            for t in range(env.n_units):
                env.decide(np.asarray(acts[t], dtype=np.float32))
            states.append(env.episode_state())
    return env.finish_many(states)


def actions_for(env: CompressionEnv, kept: Sequence[int], w_bits: Sequence[int], a_bits: Sequence[int]) -> np.ndarray:
    """Per-step actions that make the environment choose exactly this configuration when it is legal.

    The environment owns its action mapping (levels, reference); this asks it
    (:meth:`CompressionEnv.actions_for`). Kept channels must be among ``env.channel_choices`` and bits
    among each unit's levels (``env.w_choices``, ``env.a_choices``).

    Args:
        env: the environment.
        kept: kept channels per group.
        w_bits: weight bits per unit.
        a_bits: activation bits per unit.
    """
    return env.actions_for(kept, w_bits, a_bits)


def channels_at(env: CompressionEnv, group: int, ratio: float) -> int:
    """The largest channel candidate of a decided group not above ``ratio`` of its channels (or the smallest)."""
    choices = env.channel_choices[group]
    limit = ratio * env.graph.groups[group].channels + 1e-9
    fit = [c for c in choices if c <= limit]
    return int(fit[-1] if fit else choices[0])


def evaluate_config(
    env: CompressionEnv, kept: Sequence[int], w_bits: Sequence[int], a_bits: Sequence[int]
) -> dict[str, Any]:
    """Compress and evaluate a configuration *outside* the budget wall (sensitivity scans).

    Returns the environment's end-of-episode info for it (:meth:`CompressionEnv.evaluate`).

    Args:
        env: the environment (its compressor, search split, cost evaluator and reward).
        kept: kept channels per group.
        w_bits: weight bits per unit.
        a_bits: activation bits per unit.
    """
    policy = Policy.of(kept, w_bits, a_bits)
    return env.evaluate(policy)


def evaluate_configs(
    env: CompressionEnv, configs: Sequence[tuple[Sequence[int], Sequence[int], Sequence[int]]]
) -> list[dict[str, Any]]:
    """:func:`evaluate_config` for several configurations, measured together on the environment's workers.

    Args:
        env: the environment.
        configs: (kept, w_bits, a_bits) per configuration.
    """
    policies = [Policy.of(*c[:3]) for c in configs]
    return env.evaluate_many(policies)
