"""Stable-Baselines3 DDPG set up as AMC (He et al. 2018) and HAQ (Wang et al. 2019) set up theirs.

The library is used unmodified; every AMC choice is a constructor argument (``conf/agent/ddpg.yaml``;
``docs/search.md`` lists each beside SB3's default):

- actor and critic ``[300, 300]``, actor lr 1e-4 and critic lr 1e-3 (:class:`ActorCriticLrPolicy`),
  ``tau`` 0.01, ``gamma`` 1.0, batch 64, replay buffer of ``buffer_episodes`` x units transitions;
- ``warmup`` episodes of uniform random actions (``learning_starts`` = warmup x units steps);
- one training phase per episode with as many gradient steps as the episode had steps;
- truncated-normal exploration whose sigma decays per episode (:class:`TruncatedNormalNoise`);
- every step of an episode rewarded with the final reward, minus a moving-average baseline
  (:class:`EpisodeRewardReplayBuffer`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from amc.agents.base import Agent, SearchCallback
from amc.agents.buffers import EpisodeRewardReplayBuffer
from amc.agents.noise import TruncatedNormalNoise
from amc.agents.policies import ActorCriticLrPolicy
from amc.envs import CompressionEnv
from stable_baselines3 import DDPG
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger

from amc.errors import AmcError

COUNTERS = ("num_timesteps", "_episode_num", "_n_updates")


class DDPGAgent(Agent):
    """AMC's DDPG search, on SB3's :class:`~stable_baselines3.DDPG` (defaults: AMC's values).

    Args:
        warmup: episodes of uniform random actions before learning (AMC 100, HAQ 20).
        actor_lr: actor learning rate.
        critic_lr: critic learning rate.
        net_arch: hidden layers of actor and critic.
        tau: soft target update coefficient.
        gamma: discount (1: the episode's reward counts fully at every step).
        batch_size: minibatch size.
        buffer_episodes: replay buffer capacity in episodes (x units transitions).
        sigma: initial exploration sigma, as a fraction of the action range.
        sigma_decay: sigma factor per episode after warm-up.
        noise_around_action: truncate the noise around the actor's action (AMC) instead of adding
            zero-mean noise and clipping (SB3).
        reward_backfill: give every step of an episode the final reward.
        reward_baseline: subtract a moving-average reward baseline in updates.
        baseline_alpha: the baseline's update rate.
        seed: seed of SB3 (networks, warm-up actions, replay sampling) and of the noise.
        device: torch device of the networks.
    """

    name = "ddpg"

    def __init__(
        self,
        warmup: int = 100,
        actor_lr: float = 1e-4,
        critic_lr: float = 1e-3,
        net_arch: Sequence[int] = (300, 300),
        tau: float = 0.01,
        gamma: float = 1.0,
        batch_size: int = 64,
        buffer_episodes: int = 100,
        sigma: float = 0.5,
        sigma_decay: float = 0.95,
        noise_around_action: bool = True,
        reward_backfill: bool = True,
        reward_baseline: bool = True,
        baseline_alpha: float = 0.5,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        super().__init__(seed)
        self.warmup = int(warmup)
        self.actor_lr, self.critic_lr = float(actor_lr), float(critic_lr)
        self.net_arch = [int(n) for n in net_arch]
        self.tau, self.gamma = float(tau), float(gamma)
        self.batch_size = int(batch_size)
        self.buffer_episodes = int(buffer_episodes)
        self.sigma, self.sigma_decay = float(sigma), float(sigma_decay)
        self.noise_around_action = bool(noise_around_action)
        self.reward_backfill, self.reward_baseline = bool(reward_backfill), bool(reward_baseline)
        self.baseline_alpha = float(baseline_alpha)
        self.device = device
        self.model: DDPG | None = None
        self.noise: TruncatedNormalNoise | None = None

    def validate(self, episodes: int) -> None:
        super().validate(episodes)
        if self.warmup < 0:
            raise AmcError(f"agent.warmup={self.warmup} must be >= 0")
        if self.warmup >= int(episodes):
            raise AmcError(
                f"agent.warmup={self.warmup} must be smaller than episodes={episodes}; "
                f"lower agent.warmup or raise episodes"
            )
        if self.buffer_episodes < 1 or self.batch_size < 1:
            raise AmcError("agent.buffer_episodes and agent.batch_size must be >= 1")

    def setup(self, env: CompressionEnv, episodes: int) -> None:
        super().setup(env, episodes)
        if self.model is not None:
            return
        n = env.n_units
        self.noise = TruncatedNormalNoise(
            env.action_dim,
            self.sigma,
            self.sigma_decay,
            float(env.action_space.low.min()),
            float(env.action_space.high.max()),
            warmup_steps=self.warmup * n,
            seed=self.seed,
            center=self._actor_action if self.noise_around_action else None,
        )
        self.model = DDPG(
            ActorCriticLrPolicy,
            env,
            learning_rate=self.actor_lr,
            buffer_size=self.buffer_episodes * n,
            learning_starts=self.warmup * n,
            batch_size=self.batch_size,
            tau=self.tau,
            gamma=self.gamma,
            train_freq=(1, "episode"),
            gradient_steps=-1,
            action_noise=self.noise,
            replay_buffer_class=EpisodeRewardReplayBuffer,
            replay_buffer_kwargs={
                "backfill": self.reward_backfill,
                "baseline": self.reward_baseline,
                "baseline_alpha": self.baseline_alpha,
            },
            policy_kwargs={"net_arch": list(self.net_arch), "critic_lr": self.critic_lr},
            seed=self.seed,
            device=self.device,
            verbose=0,
        )
        # Metrics go through our callbacks; SB3's logger only collects the training losses.
        self.model.set_logger(Logger(folder=None, output_formats=[]))

    def _actor_action(self) -> np.ndarray:
        assert self.model is not None
        # SB3 is choosing the action for this observation when it asks the noise for a sample.
        action, _ = self.model.predict(self.model._last_obs, deterministic=True)  # type: ignore[arg-type]
        return np.asarray(action).reshape(-1)

    def _search(self, env: CompressionEnv, episodes: int, callback: SearchCallback) -> None:
        assert self.model is not None
        steps = (episodes - self.episodes_done) * env.n_units
        self.model.learn(steps, callback=_Bridge(self, callback), log_interval=None, reset_num_timesteps=False)  # type: ignore[arg-type]

    def train_metrics(self) -> dict[str, float]:
        assert self.model is not None and self.noise is not None
        out = {"noise_sigma": self.noise.sigma}
        values = self.model.logger.name_to_value
        for key in ("actor_loss", "critic_loss"):
            if f"train/{key}" in values:
                out[key] = float(values[f"train/{key}"])
        buffer = self.model.replay_buffer
        if isinstance(buffer, EpisodeRewardReplayBuffer) and buffer.baseline is not None:
            out["reward_baseline"] = buffer.baseline
        return out

    # --- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        assert self.model is not None and self.noise is not None
        space = self.model.action_space
        return {
            "counters": {k: int(getattr(self.model, k)) for k in COUNTERS},
            "noise": self.noise.state_dict(),
            "action_space_rng": space.np_random.bit_generator.state,
            "loss": {k: float(v) for k, v in self.model.logger.name_to_value.items() if k.startswith("train/")},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        assert self.model is not None and self.noise is not None
        for k, v in state["counters"].items():
            setattr(self.model, k, int(v))
        self.noise.load_state_dict(state["noise"])
        self.model.action_space.np_random.bit_generator.state = dict(state["action_space_rng"])
        self.model.logger.name_to_value.update(state["loss"])

    def _save_files(self, directory: Path) -> None:
        assert self.model is not None
        # SB3's own format for networks and optimizers (read back with set_parameters, which only
        # loads tensors); the replay buffer as plain tensors instead of SB3's pickle.
        self.model.save(
            directory / "agent.zip",
            exclude=["action_noise", "replay_buffer", "_last_obs", "_last_original_obs", "_last_episode_starts"],
        )
        buffer = self.model.replay_buffer
        assert isinstance(buffer, EpisodeRewardReplayBuffer)
        buffer.save(directory / "replay_buffer.pt")

    def _load_files(self, directory: Path) -> None:
        assert self.model is not None
        self.model.set_parameters(str(directory / "agent.zip"), exact_match=True, device=self.device)
        buffer = self.model.replay_buffer
        assert isinstance(buffer, EpisodeRewardReplayBuffer)
        buffer.load(directory / "replay_buffer.pt")
        # Reset now (this reseeds the env once, as SB3's first reset does) so that learn() does not
        # reset again after the caller restores the environment's generators.
        self.model._last_obs = self.model.env.reset()  # type: ignore[union-attr,assignment]
        self.model._last_episode_starts = np.ones((1,), dtype=bool)


class _Bridge(BaseCallback):
    """Turns SB3's per-step callbacks into the search callbacks: one record per episode, safe points."""

    def __init__(self, agent: DDPGAgent, callback: SearchCallback) -> None:
        super().__init__()
        self.agent = agent
        self.search_callback = callback
        self._t0 = time.perf_counter()
        self._pending = False  # an episode ended and its training phase has not been followed by a safe point

    def _on_rollout_start(self) -> None:
        if self._pending:  # the previous episode's training phase is over
            self._pending = False
            self.search_callback.on_safe_point(self.agent, self.agent.episodes_done)
        self._t0 = time.perf_counter()

    def _on_step(self) -> bool:
        if bool(self.locals["dones"][0]):
            info = self.locals["infos"][0]
            phase = "warmup" if self.agent.episodes_done < self.agent.warmup else "explore"
            noise = self.agent.noise
            extras = {"sigma": noise.sigma if noise is not None and phase == "explore" else 0.0}
            self.agent.record(info, phase, time.perf_counter() - self._t0, self.search_callback, extras=extras)
            self._pending = True
        return True

    def _on_training_end(self) -> None:
        if self._pending:
            self._pending = False
            self.search_callback.on_safe_point(self.agent, self.agent.episodes_done)
