"""Stable-Baselines3 algorithms as search agents, with the project's outputs and the search schedule.

:class:`SB3Agent` turns any SB3 algorithm into an :class:`~amc.agents.base.Agent` (episode log, best
policy, TensorBoard, checkpoints and exact resume through the usual callbacks) and lays one schedule
over the episode budget, whatever its size:

1. **Demonstrations** (``demos``): hand-made allocators (uniform, greedy, ILP) run first inside the
   search; their episodes count against the budget and are logged with a ``demo_`` phase. Their legal
   episodes go into the replay buffer (off-policy algorithms), and the best becomes the
   **reference** the actions are centred on (:meth:`CompressionEnv.set_reference`).
2. **Warm-up** (``warmup``): SB3's ``learning_starts``: uniformly random actions (around the reference).
   When it ends, the reference moves to the best legal episode so far (a warm-up episode may beat the
   demonstrations or the collapsed uniform policy of a tight budget): the replay buffer is re-expressed
   under the new centre (each stored episode's configuration replayed through the cost model) and the
   actor's head is zeroed again, so learning starts *at* the best point found.
3. **Exploration**: the algorithm learns; ``updates_per_step`` gradient steps per environment step.
4. **Exploitation** (``exploit``): the last episodes run the policy without noise (``phase=exploit``),
   so the learned policy itself is measured.

With ``zero_init_actor`` the actor's last layer starts at zero, so the untrained policy outputs action
0: the reference. A margin over the baselines only counts for the learner's own episodes (phases
``warmup``, ``explore``, ``exploit``): :func:`learner_best` picks those.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from amc.agents.base import Agent, EpisodeRecord, SearchCallback
from amc.agents.vec_env import CompressionVecEnv
from amc.envs import CompressionEnv
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from torch import nn

from amc.compress import Policy
from amc.errors import AmcError

log = logging.getLogger(__name__)

COUNTERS = ("num_timesteps", "_episode_num", "_n_updates")
LEARNER_PHASES = ("probe", "warmup", "explore", "exploit")
REFERENCES = ("best", "env", "none")


def learner_best(history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The best eligible episode row among the learner's own episodes (demonstrations and scans excluded).

    Args:
        history: episode rows (:meth:`EpisodeRecord.row`), as ``Agent.history`` or ``episodes.csv``.
    """
    own = [r for r in history if r["phase"] in LEARNER_PHASES and int(r.get("eligible", 1))]
    return max(own, key=lambda r: float(r["reward"]), default=None)


def _episode_budget(value: float, episodes: int) -> int:
    """Episodes for a schedule value: a fraction of ``episodes`` when below 1, else a count."""
    return int(round(value * episodes)) if 0 < value < 1 else int(value)


class _DemoForwarder(SearchCallback):
    """Re-records a demonstration agent's episodes as the parent's, and its safe points as the parent's."""

    def __init__(self, parent: SB3Agent, callback: SearchCallback) -> None:
        self.parent = parent
        self.callback = callback

    def on_episode(self, agent: Agent, record: EpisodeRecord, is_best: bool) -> None:
        self.parent.adopt(record, f"demo_{record.phase}", self.callback)
        if record.eligible and record.policy is not None:
            self.parent.legal.append((record.policy, float(record.reward)))

    def on_safe_point(self, agent: Agent, episodes_done: int) -> None:
        self.callback.on_safe_point(self.parent, self.parent.episodes_done)


class SB3Agent(Agent):
    """An SB3 algorithm as a search agent, with demonstrations, a reference and a budget-sized schedule.

    Subclasses set :attr:`name` and implement :meth:`_make_model`.

    Args:
        warmup: episodes of uniformly random actions before learning (a fraction of the episode budget
            when below 1; AMC used 100 of 300-600, HAQ 20).
        demos: agents run first as demonstrations (e.g. ``UniformSearch``, ``GreedySearch``); their
            episodes count against the budget.
        reference: what the actions are centred on: ``best`` (the best legal episode so far: after the
            demonstrations, and again when the warm-up ends; until then the environment's), ``env``
            (the environment's own, the uniform policy by default) or ``none`` (no centring: HAQ's
            equal bins, AMC's linear keep map).
        zero_init_actor: start the actor's output layer at zero, so the untrained policy is the reference.
        exploit: episodes at the end run without exploration noise (fraction of the budget when below 1).
        updates_per_step: gradient steps per environment step (off-policy algorithms; AMC: 1).
        net_arch: hidden layers of the networks (AMC: 300, 300).
        seed: seed of SB3 (networks, warm-up actions, sampling) and of the noise.
        device: torch device of the networks.
        best_of: which episodes may become the best policy: ``all`` (demonstrations included: the search
            never returns less than its demonstrations found) or ``learner`` (only the learner's own
            episodes, for measuring what the learning adds, as ``benchmarks/search_quality.py`` does).
        reanchor_every: with ``reference=best``, re-centre on the best legal episode every this many
            learning episodes (0: only once, when the warm-up ends).
        demo_budget: the demonstrations may use at most this fraction of the episodes; one that would
            exceed it (a greedy scan of a deep model in a short search) is skipped with a warning.
        probe: when no demonstration measured a legal configuration, the first learning episode runs the
            untrained actor without noise (``phase=probe``): with ``zero_init_actor`` it measures the
            reference the actions are centred on (the environment's uniform policy, from the cost model
            alone), so the first re-centring can choose between it and the warm-up's random episodes.
            Skipped when a demonstration already measured the reference (its result is not the learner's).
        n_envs: episodes played side by side (:class:`~amc.agents.vec_env.CompressionVecEnv`) and measured
            on as many evaluation workers; off-policy algorithms only. SB3 then collects one episode per
            env between training phases (``train_freq`` of ``n_units`` steps) with ``updates_per_step``
            gradient steps per collected step, as with one env; the warm-up is rounded up to a multiple
            of ``n_envs`` episodes, and learning episodes that do not fill a last batch of ``n_envs``
            join the noise-free exploitation phase, so the episode budget holds exactly.
    """

    name: ClassVar[str] = "sb3"

    def __init__(
        self,
        warmup: float = 0.1,
        demos: Sequence[Agent] = (),
        reference: str = "best",
        zero_init_actor: bool = True,
        exploit: float = 0.05,
        updates_per_step: float = 1.0,
        net_arch: Sequence[int] = (300, 300),
        seed: int = 0,
        device: str = "cpu",
        best_of: str = "all",
        reanchor_every: int = 0,
        demo_budget: float = 0.5,
        n_envs: int = 1,
        probe: bool = False,
    ) -> None:
        super().__init__(seed, n_envs)
        self.probe = bool(probe)
        self.reanchor_every = int(reanchor_every)
        self.demo_budget = float(demo_budget)
        if best_of not in ("all", "learner"):
            raise AmcError(f"agent.best_of={best_of!r} is not an option; choose all or learner")
        self.best_of = best_of
        if reference not in REFERENCES:
            raise AmcError(f"agent.reference={reference!r} is not an option; choose one of {', '.join(REFERENCES)}")
        self.warmup_value = float(warmup)
        self.demos = list(demos)
        self.reference = reference
        self.zero_init_actor = bool(zero_init_actor)
        self.exploit_value = float(exploit)
        self.updates_per_step = float(updates_per_step)
        self.net_arch = [int(n) for n in net_arch]
        self.device = device
        self.model: BaseAlgorithm | None = None
        self.env: CompressionEnv | None = None
        self.demo_episodes: list[int] = []
        self.warmup = self.n_exploit = 0
        self.reference_policy: dict[str, list[int]] | None = None  # the adopted reference, once demos are done
        self.reference_done = False
        self.legal: list[tuple[dict[str, Any], float]] = []  # (policy, reward) of every legal episode so far
        self.reanchored = False  # the re-anchoring after the warm-up is done

    # --- schedule -------------------------------------------------------------------------------
    def validate(self, episodes: int) -> None:
        super().validate(episodes)
        for key, value in (("warmup", self.warmup_value), ("exploit", self.exploit_value)):
            if value < 0:
                raise AmcError(f"agent.{key}={value:g} must be >= 0 (a count, or a fraction of the episodes below 1)")
        if self.updates_per_step <= 0:
            raise AmcError(f"agent.updates_per_step={self.updates_per_step:g} must be positive")
        self.warmup = _episode_budget(self.warmup_value, int(episodes))
        if self.n_envs > 1:  # the warm-up ends between two batches of parallel episodes
            self.warmup = -(-self.warmup // self.n_envs) * self.n_envs
        self.n_exploit = _episode_budget(self.exploit_value, int(episodes))
        if self.warmup + self.n_exploit >= int(episodes):
            raise AmcError(
                f"agent.warmup ({self.warmup}) + agent.exploit ({self.n_exploit}) episodes leave none to learn "
                f"in episodes={episodes}; lower them or raise episodes"
            )

    def setup(self, env: CompressionEnv, episodes: int) -> None:
        super().setup(env, episodes)
        self.env = env
        if not self.demo_episodes and self.demos:
            kept: list[Agent] = []
            for demo in self.demos:
                n = demo.episodes_needed(env)
                if sum(self.demo_episodes) + n > self.demo_budget * int(episodes):
                    log.warning(
                        "demonstration %s needs %d episodes, more than agent.demo_budget=%g of episodes=%d allows: "
                        "skipped (raise episodes or agent.demo_budget to run it)",
                        demo.name,
                        n,
                        self.demo_budget,
                        int(episodes),
                    )
                    continue
                demo.setup(env, n)
                kept.append(demo)
                self.demo_episodes.append(n)
            self.demos = kept
        need = sum(self.demo_episodes) + self.probe_episodes + self.warmup + self.n_exploit
        if need >= int(episodes):
            raise AmcError(
                f"demonstrations ({sum(self.demo_episodes)} episodes), probe ({self.probe_episodes}), warm-up "
                f"({self.warmup}) and exploitation "
                f"({self.n_exploit}) leave no episode to learn in episodes={episodes}; raise episodes to at least "
                f"{need + 1} or drop a demonstration (agent.demos)"
            )
        if self.model is None:
            self.model = self._make_model(env, episodes)
            # Metrics go through our callbacks; SB3's logger only collects the training losses.
            self.model.set_logger(Logger(folder=None, output_formats=[]))
            if self.zero_init_actor:
                self._zero_actor()

    def _make_model(self, env: CompressionEnv, episodes: int) -> BaseAlgorithm:
        raise NotImplementedError

    def off_policy_kwargs(self, env: CompressionEnv, batch_size: int, buffer_episodes: int, **buffer: Any) -> dict:
        """Constructor arguments every off-policy algorithm here shares: AMC's buffer, schedule and reward assignment.

        Args:
            env: the environment (its unit count sizes the buffer and the updates).
            batch_size: minibatch size.
            buffer_episodes: replay buffer capacity in episodes.
            **buffer: :class:`EpisodeRewardReplayBuffer` options (backfill, baseline, baseline_alpha, relabel).
        """
        from amc.agents.buffers import EpisodeRewardReplayBuffer

        n = env.n_units
        # With parallel episodes SB3 needs the training frequency in steps: n_units steps = one episode per env.
        return {
            "buffer_size": buffer_episodes * n,
            "learning_starts": self.warmup * n,
            "batch_size": batch_size,
            "train_freq": (1, "episode") if self.n_envs == 1 else (n, "step"),
            "gradient_steps": max(1, int(round(self.updates_per_step * n * self.n_envs))),
            "replay_buffer_class": EpisodeRewardReplayBuffer,
            "replay_buffer_kwargs": buffer,
            "seed": self.seed,
            "device": self.device,
            "verbose": 0,
        }

    def sb3_env(self, env: CompressionEnv) -> CompressionEnv | CompressionVecEnv:
        """What the SB3 algorithm is given: ``env`` itself, or ``n_envs`` lockstep episodes of it."""
        return env if self.n_envs == 1 else CompressionVecEnv(env, self.n_envs)

    def _zero_actor(self) -> None:
        """Zero the last linear layer of the policy's action head, so every observation maps to action 0."""
        assert self.model is not None
        policy = self.model.policy
        if hasattr(policy, "actor") and hasattr(policy.actor, "mu"):  # TD3/DDPG (Sequential ending in Tanh), SAC
            mu = policy.actor.mu
            head = [m for m in mu.modules() if isinstance(m, nn.Linear)][-1] if isinstance(mu, nn.Module) else None
        else:  # PPO/A2C
            head = getattr(policy, "action_net", None)
        if not isinstance(head, nn.Linear):
            raise AmcError(
                f"{type(policy).__name__} has no linear action head to zero; set agent.zero_init_actor=false"
            )
        with torch.no_grad():
            head.weight.zero_()
            if head.bias is not None:
                head.bias.zero_()
        if hasattr(policy, "actor_target"):
            policy.actor_target.load_state_dict(policy.actor.state_dict())

    @property
    def probe_episodes(self) -> int:
        """Episodes the probe is expected to take: 1 with ``probe`` and no demonstration (which may measure it)."""
        return int(self.probe and not self.demos)

    @property
    def probed(self) -> int:
        """1 once the probe episode ran (it is the first episode after the demonstrations), else 0."""
        return int(len(self.history) > self.n_demo and self.history[self.n_demo]["phase"] == "probe")

    @property
    def n_demo(self) -> int:
        """Episodes the demonstrations take."""
        return sum(self.demo_episodes)

    def phase(self) -> str:
        """The phase of the next learner episode."""
        return "warmup" if self.episodes_done < self.n_demo + self.probed + self.warmup else "explore"

    # --- search ---------------------------------------------------------------------------------
    def adopt(self, record: EpisodeRecord, phase: str, callback: SearchCallback) -> EpisodeRecord:
        """Log another agent's finished episode as this agent's (renumbered, with ``phase``)."""
        # The learner's own extras (same columns in every row of the episode log), not the demo's.
        rec = EpisodeRecord(
            **{
                **record.to_dict(),
                "episode": self.episodes_done + 1,
                "phase": phase,
                "extras": self.episode_extras(phase),
            }
        )
        is_best = self.best_of == "all" and rec.eligible and (self.best is None or rec.reward > self.best.reward)
        if is_best:
            self.best = rec
        self.history.append(rec.row())
        callback.on_episode(self, rec, is_best)
        return rec

    def _search(self, env: CompressionEnv, episodes: int, callback: SearchCallback) -> None:
        assert self.model is not None
        forward = _DemoForwarder(self, callback)
        start = 0
        for demo, n in zip(self.demos, self.demo_episodes):
            if self.episodes_done < start + n:
                demo._search(env, n, forward)
            start += n
        if not self.reference_done:
            self._adopt_reference(env)
            if self.episodes_done:  # the demonstrations' transitions are in the buffer now
                callback.on_safe_point(self, self.episodes_done)
        learn_end = int(episodes) - self.n_exploit
        if self.probe and self.episodes_done == self.n_demo and not self.legal and learn_end > self.episodes_done:
            self._play_actor(env, "probe", callback)
        learning = max(0, learn_end - self.episodes_done) // self.n_envs * self.n_envs  # whole batches
        steps = self.learn_steps(learning * env.n_units)
        if steps > 0:
            if self.model._last_obs is not None:  # a probe, demonstration or replay since may have left it mid-way
                self.model._last_obs = self.model.env.reset()  # type: ignore[union-attr,assignment]
            self.model.learn(steps, callback=_Bridge(self, callback), log_interval=None, reset_num_timesteps=False)  # type: ignore[arg-type]
        if self.n_envs > 1:
            self._exploit_parallel(int(episodes), callback)
        while self.episodes_done < int(episodes):
            self._play_actor(env, "exploit", callback)

    def _play_actor(self, env: CompressionEnv, phase: str, callback: SearchCallback) -> None:
        """One episode of the actor without exploration noise, recorded as ``phase`` (not stored for learning)."""
        assert self.model is not None
        t0 = time.perf_counter()
        obs, _ = env.reset()
        info: dict[str, Any] = {}
        for _ in range(env.n_units):
            action, _ = self.model.predict(obs, deterministic=True)
            obs, _, _, _, info = env.step(np.asarray(action, dtype=np.float32))
        self.record(info, phase, time.perf_counter() - t0, callback, extras=self.episode_extras(phase))
        callback.on_safe_point(self, self.episodes_done)

    def _exploit_parallel(self, episodes: int, callback: SearchCallback) -> None:
        """The noise-free episodes, ``n_envs`` at a time (the actor is fixed, so they are one configuration)."""
        assert self.model is not None
        vec = self.model.env
        assert isinstance(vec, CompressionVecEnv)
        while self.episodes_done < episodes:
            n = min(self.n_envs, episodes - self.episodes_done)
            t0 = time.perf_counter()
            obs = vec.reset()
            infos: list[dict[str, Any]] = []
            for _ in range(vec.env.n_units):
                action, _ = self.model.predict(obs, deterministic=True)
                obs, _, _, infos = vec.step(np.asarray(action, dtype=np.float32))
            seconds = (time.perf_counter() - t0) / n
            for info in infos[:n]:
                self.record(info, "exploit", seconds, callback, extras=self.episode_extras("exploit"))
            callback.on_safe_point(self, self.episodes_done)
        self.model._last_obs = vec.reset()  # type: ignore[assignment]

    def episode_extras(self, phase: str) -> dict[str, float]:
        """Agent-specific scalars logged with an episode of ``phase``."""
        return {}

    def _recorded(self, record: EpisodeRecord) -> None:
        if record.eligible and record.policy is not None:  # a candidate centre for the next re-centring
            self.legal.append((record.policy, float(record.reward)))

    def learn_steps(self, steps: int) -> int:
        """Environment steps to give ``learn()`` for ``steps`` wanted (some algorithms stop only at a rollout's end)."""
        return steps

    def _adopt_reference(self, env: CompressionEnv) -> None:
        """After the demonstrations: centre the actions on the chosen reference and replay the demos into the buffer."""
        if self.reference == "none":
            env.set_reference(None)
        elif self.reference == "best" and self.legal:
            policy, _ = max(self.legal, key=lambda pr: pr[1])  # the first of equals
            env.set_reference(Policy.from_dict(policy, env.graph))
        ref = env.reference
        self.reference_policy = None if ref is None else {"kept": ref.kept, "w_bits": ref.w_bits, "a_bits": ref.a_bits}
        self.reference_done = True
        if isinstance(self.model, OffPolicyAlgorithm):
            buffer = self.model.replay_buffer
            assert buffer is not None
            buffer.pos, buffer.full = 0, False
            if hasattr(buffer, "episode_positions"):
                buffer.episode_positions = []
            keep = buffer.buffer_size // env.n_units * self.n_envs  # the newest episodes that fit
            newest = self.legal[-keep:] if keep else []
            self._replay(env, [(Policy.from_dict(p, env.graph), r) for p, r in newest])

    def reanchor_due(self) -> bool:
        """Whether the actions should now be re-centred on the best episode so far.

        Once when the warm-up ends, then every ``reanchor_every`` learning episodes when the best legal
        episode is no longer the reference.
        """
        if self.reference != "best" or self.env is None:
            return False
        start = self.n_demo + self.probed + self.warmup
        if self.warmup > 0 and not self.reanchored:
            return self.episodes_done >= start
        done = self.episodes_done - start
        # A multiple of reanchor_every was reached by the last batch of n_envs episodes.
        if self.reanchor_every <= 0 or done <= 0 or done % self.reanchor_every >= self.n_envs or not self.legal:
            return False
        best, _ = max(self.legal, key=lambda pr: pr[1])
        return Policy.from_dict(best, self.env.graph) != self.env.reference

    def reanchor(self) -> None:
        """Centre the actions on the best legal episode so far, re-express the replay buffer, restart the actor at it.

        When the warm-up ends, its random episodes (around the first reference) may have found a better
        region than the demonstrations or the environment's uniform policy; later (``reanchor_every``),
        exploration may have. The critic keeps what it learned (on the re-expressed transitions).
        """
        assert self.model is not None and self.env is not None
        self._adopt_reference(self.env)
        if self.zero_init_actor:
            self._zero_actor()
        self.reanchored = True
        # The next episode's first observation carries the new reference (the env's reset draws nothing).
        self.model._last_obs = self.model.env.reset()  # type: ignore[union-attr,assignment]

    def _replay(self, env: CompressionEnv, episodes: Sequence[tuple[Policy, float]]) -> None:
        """Add legal configurations' episodes to the replay buffer under the current action mapping.

        The episodes fill the buffer's ``n_envs`` columns ``n_envs`` at a time (one at a time with one env).
        Every column of a buffer row must hold a transition, so a last group smaller than ``n_envs`` is
        filled up with the first episodes again (a few demonstration transitions are stored twice).
        """
        assert isinstance(self.model, OffPolicyAlgorithm)
        buffer = self.model.replay_buffer
        assert buffer is not None
        if not episodes:
            return
        rows = []  # per episode: (obs, next_obs, actions, rewards, dones), each (n_units, ...)
        for policy, reward in episodes:
            actions = env.actions_for(policy.kept, policy.w_bits, policy.a_bits)
            obs_, next_ = [], []
            with env.unclipped():
                obs, _ = env.reset()
                for t in range(env.n_units):
                    env.decide(actions[t])
                    nxt = env.observation()
                    obs_.append(obs)
                    next_.append(nxt)
                    obs = nxt
            rewards = np.zeros(env.n_units, dtype=np.float32)
            rewards[-1] = reward
            dones = np.zeros(env.n_units, dtype=bool)
            dones[-1] = True
            rows.append((np.stack(obs_), np.stack(next_), actions, rewards, dones))
        env.reset()
        n = self.n_envs
        for start in range(0, len(rows), n):
            group = [rows[(start + j) % len(rows)] for j in range(n)]
            for t in range(env.n_units):
                obs, nxt, act, rew, done = (np.stack([g[k][t] for g in group]) for k in range(5))
                buffer.add(obs, nxt, act, rew, done, [{} for _ in range(n)])

    def train_metrics(self) -> dict[str, float]:
        assert self.model is not None
        out: dict[str, float] = {}
        for key, value in self.model.logger.name_to_value.items():
            if key.startswith("train/") and key[6:] in ("actor_loss", "critic_loss", "ent_coef", "loss", "value_loss"):
                out[key[6:]] = float(value)
        return out

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        assert self.model is not None
        return {
            "counters": {k: int(getattr(self.model, k)) for k in COUNTERS if hasattr(self.model, k)},
            "action_space_rng": self.model.action_space.np_random.bit_generator.state,
            "loss": {k: float(v) for k, v in self.model.logger.name_to_value.items() if k.startswith("train/")},
            "demos": [
                {"history": d.history, "best": None if d.best is None else d.best.to_dict(), "state": d.state_dict()}
                for d in self.demos
            ],
            "legal": [[p, r] for p, r in self.legal],
            "reanchored": self.reanchored,
            "reference_done": self.reference_done,
            "reference_policy": self.reference_policy,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        assert self.model is not None and self.env is not None
        for k, v in state["counters"].items():
            setattr(self.model, k, int(v))
        self.model.action_space.np_random.bit_generator.state = dict(state["action_space_rng"])
        self.model.logger.name_to_value.update(state["loss"])
        for demo, saved in zip(self.demos, state["demos"]):
            demo.history = list(saved["history"])
            demo.best = None if saved["best"] is None else EpisodeRecord.from_dict(saved["best"])
            demo.load_state_dict(saved["state"])
        self.legal = [(p, float(r)) for p, r in state["legal"]]
        self.reanchored = bool(state["reanchored"])
        self.reference_done = bool(state["reference_done"])
        self.reference_policy = state["reference_policy"]
        if self.reference_done:
            if self.reference_policy is None:
                self.env.set_reference(None)
            else:
                ref = self.reference_policy
                self.env.set_reference(Policy(ref["kept"], ref["w_bits"], ref["a_bits"]))

    def _save_files(self, directory: Path) -> None:
        assert self.model is not None
        # SB3's own format for networks and optimizers (read back with set_parameters, which only
        # loads tensors); the replay buffer as plain tensors instead of SB3's pickle.
        self.model.save(
            directory / "agent.zip",
            exclude=[
                "action_noise",
                "replay_buffer",
                "rollout_buffer",
                "_last_obs",
                "_last_original_obs",
                "_last_episode_starts",
            ],
        )
        buffer = getattr(self.model, "replay_buffer", None)
        if buffer is not None:
            buffer.save(directory / "replay_buffer.pt")

    def _load_files(self, directory: Path) -> None:
        assert self.model is not None
        try:
            self.model.set_parameters(str(directory / "agent.zip"), exact_match=True, device=self.device)
            buffer = getattr(self.model, "replay_buffer", None)
            if buffer is not None:
                buffer.load(directory / "replay_buffer.pt")
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise AmcError(
                f"checkpoint {directory} holds no readable {self.name} networks/replay buffer "
                f"({type(exc).__name__}); resume another run directory or start a new run"
            ) from exc
        # Reset now (this reseeds the env once, as SB3's first reset does) so that learn() does not
        # reset again after the caller restores the environment's generators.
        self.model._last_obs = self.model.env.reset()  # type: ignore[union-attr,assignment]
        self.model._last_episode_starts = np.ones((self.n_envs,), dtype=bool)


class _Bridge(BaseCallback):
    """Turns SB3's per-step callbacks into the search callbacks: one record per episode, safe points."""

    def __init__(self, agent: SB3Agent, callback: SearchCallback) -> None:
        super().__init__()
        self.agent = agent
        self.search_callback = callback
        self._t0 = time.perf_counter()
        self._pending = False  # an episode ended and its training phase has not been followed by a safe point

    def _on_rollout_start(self) -> None:
        if self.agent.reanchor_due():
            self.agent.reanchor()
        if self._pending:  # the previous episode's training phase is over
            self._pending = False
            self.search_callback.on_safe_point(self.agent, self.agent.episodes_done)
        self._t0 = time.perf_counter()

    def _on_step(self) -> bool:
        ended = np.flatnonzero(self.locals["dones"])  # every env's episode ends at the same step
        if len(ended):
            seconds = (time.perf_counter() - self._t0) / len(ended)
            for i in ended:  # in env order
                phase = self.agent.phase()
                self.agent.record(
                    self.locals["infos"][i],
                    phase,
                    seconds,
                    self.search_callback,
                    extras=self.agent.episode_extras(phase),
                )
            self._pending = True
            self._t0 = time.perf_counter()
        return True

    def _on_training_end(self) -> None:
        if self._pending:
            self._pending = False
            self.search_callback.on_safe_point(self.agent, self.agent.episodes_done)


class SACAgent(SB3Agent):
    """SAC (Haarnoja et al. 2018) on SB3, with AMC's reward back-fill and the schedule of :class:`SB3Agent`.

    Exploration comes from the stochastic policy (entropy-tuned), not from added noise.

    Args:
        learning_rate: actor, critic and entropy learning rate (SB3 default 3e-4).
        batch_size: minibatch size (AMC 64).
        buffer_episodes: replay buffer capacity in episodes.
        tau: soft target update coefficient (AMC 0.01).
        gamma: discount (1, as AMC).
        reward_backfill: give every step the episode's final reward (AMC).
        reward_baseline: subtract a moving-average reward baseline (AMC).
        relabel: store the actions of the evaluated configuration.
        **kwargs: :class:`SB3Agent` arguments (warmup, demos, reference, zero_init_actor, exploit,
            updates_per_step, net_arch, seed, device).
    """

    name: ClassVar[str] = "sac"

    def __init__(
        self,
        learning_rate: float = 3e-4,
        batch_size: int = 64,
        buffer_episodes: int = 100,
        tau: float = 0.01,
        gamma: float = 1.0,
        reward_backfill: bool = True,
        reward_baseline: bool = True,
        relabel: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.learning_rate, self.batch_size, self.buffer_episodes = (
            float(learning_rate),
            int(batch_size),
            int(buffer_episodes),
        )
        self.tau, self.gamma = float(tau), float(gamma)
        self.reward_backfill, self.reward_baseline, self.relabel = (
            bool(reward_backfill),
            bool(reward_baseline),
            bool(relabel),
        )

    def _make_model(self, env: CompressionEnv, episodes: int) -> BaseAlgorithm:
        from stable_baselines3 import SAC

        return SAC(
            "MlpPolicy",
            self.sb3_env(env),
            learning_rate=self.learning_rate,
            tau=self.tau,
            gamma=self.gamma,
            policy_kwargs={"net_arch": list(self.net_arch)},
            **self.off_policy_kwargs(
                env,
                self.batch_size,
                self.buffer_episodes,
                backfill=self.reward_backfill,
                baseline=self.reward_baseline,
                relabel=self.relabel,
            ),
        )

    def state_dict(self) -> dict[str, Any]:
        # SB3 saves the entropy coefficient as a "pytorch variable", which set_parameters does not read back.
        log_ent = getattr(self.model, "log_ent_coef", None)
        extra = {} if log_ent is None else {"log_ent_coef": log_ent.detach().cpu().reshape(-1).tolist()}
        return {**super().state_dict(), **extra}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        log_ent = getattr(self.model, "log_ent_coef", None)
        if log_ent is not None and "log_ent_coef" in state:
            with torch.no_grad():
                log_ent.copy_(torch.tensor(state["log_ent_coef"], dtype=log_ent.dtype).reshape(log_ent.shape))


class PPOAgent(SB3Agent):
    """PPO (Schulman et al. 2017) on SB3: on-policy, one update per ``episodes_per_rollout`` episodes.

    Demonstrations only set the reference (an on-policy algorithm has no replay buffer to put them in);
    warm-up defaults to none.

    Args:
        learning_rate: Adam learning rate (SB3 default 3e-4).
        episodes_per_rollout: episodes collected between updates (rollout = that many x units steps); with
            ``n_envs`` environments each plays ``ceil(episodes_per_rollout / n_envs)`` of them.
        n_epochs: passes over a rollout per update (SB3 default 10).
        gamma: discount (1: the episode's final reward is every step's return).
        gae_lambda: GAE lambda (1: Monte-Carlo returns, fitting a reward at the end only).
        ent_coef: entropy bonus (SB3 default 0).
        **kwargs: :class:`SB3Agent` arguments.
    """

    name: ClassVar[str] = "ppo"

    def __init__(
        self,
        learning_rate: float = 3e-4,
        episodes_per_rollout: int = 4,
        n_epochs: int = 10,
        gamma: float = 1.0,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("warmup", 0)
        super().__init__(**kwargs)
        self.learning_rate, self.episodes_per_rollout, self.n_epochs = (
            float(learning_rate),
            int(episodes_per_rollout),
            int(n_epochs),
        )
        self.gamma, self.gae_lambda, self.ent_coef = float(gamma), float(gae_lambda), float(ent_coef)

    def validate(self, episodes: int) -> None:
        super().validate(episodes)
        if self.episodes_per_rollout < 1:
            raise AmcError(f"agent.episodes_per_rollout={self.episodes_per_rollout} must be >= 1")
        if self.warmup:
            raise AmcError("PPO has no warm-up phase (it learns on-policy from the start); set agent.warmup=0")

    @property
    def rollout_episodes_per_env(self) -> int:
        """Episodes each of the ``n_envs`` environments plays per rollout (``episodes_per_rollout``, rounded up)."""
        return -(-self.episodes_per_rollout // self.n_envs)

    def learn_steps(self, steps: int) -> int:
        """Whole rollouts only: SB3's PPO finishes the rollout it started, which would eat exploitation episodes."""
        assert self.env is not None
        rollout = self.rollout_episodes_per_env * self.n_envs * self.env.n_units
        return (steps // rollout) * rollout

    def _make_model(self, env: CompressionEnv, episodes: int) -> BaseAlgorithm:
        from stable_baselines3 import PPO

        n_steps = self.rollout_episodes_per_env * env.n_units  # per environment
        return PPO(
            "MlpPolicy",
            self.sb3_env(env),
            learning_rate=self.learning_rate,
            n_steps=n_steps,
            batch_size=n_steps * self.n_envs,  # the whole rollout in one minibatch, as with one environment
            n_epochs=self.n_epochs,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            ent_coef=self.ent_coef,
            policy_kwargs={"net_arch": list(self.net_arch)},
            seed=self.seed,
            device=self.device,
            verbose=0,
        )
