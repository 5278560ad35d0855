"""Stable-Baselines3 DDPG set up as AMC (He et al. 2018) and HAQ (Wang et al. 2019) set up theirs, and TD3.

The library is used unmodified; every choice is a constructor argument (``conf/agent/ddpg.yaml``;
``docs/search.md`` lists each beside AMC's, HAQ's and SB3's value):

- actor and critic ``[300, 300]``, actor lr 1e-4 and critic lr 1e-3 (:class:`ActorCriticLrPolicy`),
  ``tau`` 0.01, ``gamma`` 1.0, batch 64, replay buffer of ``buffer_episodes`` x units transitions;
- demonstrations, warm-up, exploration and a noise-free exploitation phase sized to the episode
  budget (:class:`~amc.agents.sb3.SB3Agent`);
- one training phase per episode with ``updates_per_step`` x its steps gradient steps;
- truncated-normal exploration around the actor's action whose sigma decays from ``sigma`` to
  ``sigma_floor`` by ``noise_end`` of the learning episodes (:class:`TruncatedNormalNoise`);
- every step of an episode rewarded with the final reward, minus a moving-average baseline
  (:class:`EpisodeRewardReplayBuffer`); with ``relabel`` the buffer stores the actions of the
  configuration that was evaluated (after the wall's repair) rather than the ones proposed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from amc.agents.base import Agent
from amc.agents.buffers import EpisodeRewardReplayBuffer
from amc.agents.noise import TruncatedNormalNoise
from amc.agents.policies import ActorCriticLrPolicy
from amc.agents.sb3 import SB3Agent
from amc.agents.vec_env import SharedScheduleNoise
from amc.envs import CompressionEnv
from stable_baselines3 import DDPG, TD3
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from amc.errors import AmcError


class DDPGAgent(SB3Agent):
    """AMC's DDPG search on SB3's :class:`~stable_baselines3.DDPG`, with the schedule of :class:`SB3Agent`.

    Args:
        warmup: episodes of uniform random actions before learning (fraction of the budget below 1;
            AMC 100 of 300+, HAQ 20).
        demos: agents run first as demonstrations (see :class:`~amc.agents.sb3.SB3Agent`).
        reference: ``best``, ``env`` or ``none`` (see :class:`~amc.agents.sb3.SB3Agent`).
        zero_init_actor: the untrained actor outputs 0, i.e. the reference.
        exploit: noise-free episodes at the end (fraction of the budget below 1).
        updates_per_step: gradient steps per environment step (AMC: 1).
        actor_lr: actor learning rate (AMC ``lr_a`` 1e-4).
        critic_lr: critic learning rate (AMC ``lr_c`` 1e-3).
        net_arch: hidden layers of actor and critic (AMC 300, 300).
        tau: soft target update coefficient (AMC 0.01).
        gamma: discount (AMC 1: the episode's reward counts fully at every step).
        batch_size: minibatch size (AMC 64).
        buffer_episodes: replay buffer capacity in episodes (x units transitions; AMC rmsize 100 per layer).
        sigma: initial exploration sigma, as a fraction of the action range (AMC ``init_delta`` 0.5).
        sigma_decay: sigma factor per episode after warm-up; ``None``: derived from ``sigma_floor`` and
            ``noise_end`` so the schedule fits any episode budget (AMC ``delta_decay`` 0.95, HAQ 0.99).
        sigma_floor: sigma never decays below this.
        noise_end: fraction of the learning episodes after which sigma sits at its floor.
        noise_around_action: truncate the noise around the actor's action (AMC) instead of adding
            zero-mean noise and clipping (SB3).
        reward_backfill: give every step of an episode the final reward (AMC).
        reward_baseline: subtract a moving-average reward baseline in updates (AMC ``moving_average``).
        baseline_alpha: the baseline's update rate (AMC ``moving_alpha`` 0.5).
        relabel: store the actions of the evaluated configuration (after the wall) in the buffer.
        anchor: TD3+BC's ``alpha`` (Fujimoto & Gu 2021: 2.5): the actor maximises
            ``alpha * Q / mean|Q| - mean(action^2)``, i.e. stays near action 0, the reference
            (:class:`~amc.agents.policies.ProximalCritic`); ``None``: SB3's plain actor loss.
        seed: seed of SB3 (networks, warm-up actions, replay sampling) and of the noise.
        device: torch device of the networks.
        best_of: ``all`` or ``learner`` (see :class:`~amc.agents.sb3.SB3Agent`).
        reanchor_every: re-centre on the best episode every this many learning episodes (0: once, after warm-up).
        demo_budget: largest fraction of the episodes the demonstrations may use (others are skipped).
        probe: without a measured demonstration, first measure the untrained actor's policy (the
            reference, with ``zero_init_actor``; see :class:`~amc.agents.sb3.SB3Agent`).
        n_envs: episodes played side by side and measured on as many evaluation workers (see
            :class:`~amc.agents.sb3.SB3Agent`); one noise schedule for all (:class:`SharedScheduleNoise`).
    """

    name: ClassVar[str] = "ddpg"
    algorithm: ClassVar[type[OffPolicyAlgorithm]] = DDPG

    def __init__(
        self,
        warmup: float = 0.1,
        demos: Sequence[Agent] = (),
        reference: str = "best",
        zero_init_actor: bool = True,
        exploit: float = 0.05,
        updates_per_step: float = 1.0,
        actor_lr: float = 1e-4,
        critic_lr: float = 1e-3,
        net_arch: Sequence[int] = (300, 300),
        tau: float = 0.01,
        gamma: float = 1.0,
        batch_size: int = 64,
        buffer_episodes: int = 100,
        sigma: float = 0.5,
        sigma_decay: float | None = None,
        sigma_floor: float = 0.05,
        noise_end: float = 0.8,
        noise_around_action: bool = True,
        reward_backfill: bool = True,
        reward_baseline: bool = True,
        baseline_alpha: float = 0.5,
        relabel: bool = True,
        anchor: float | None = None,
        seed: int = 0,
        device: str = "cpu",
        best_of: str = "all",
        reanchor_every: int = 0,
        demo_budget: float = 0.5,
        n_envs: int = 1,
        probe: bool = False,
    ) -> None:
        super().__init__(
            warmup,
            demos,
            reference,
            zero_init_actor,
            exploit,
            updates_per_step,
            net_arch,
            seed,
            device,
            best_of,
            reanchor_every,
            demo_budget,
            n_envs,
            probe,
        )
        self.actor_lr, self.critic_lr = float(actor_lr), float(critic_lr)
        self.tau, self.gamma = float(tau), float(gamma)
        self.batch_size = int(batch_size)
        self.buffer_episodes = int(buffer_episodes)
        self.sigma = float(sigma)
        self.sigma_decay = None if sigma_decay is None else float(sigma_decay)
        self.sigma_floor, self.noise_end = float(sigma_floor), float(noise_end)
        self.noise_around_action = bool(noise_around_action)
        self.reward_backfill, self.reward_baseline = bool(reward_backfill), bool(reward_baseline)
        self.baseline_alpha = float(baseline_alpha)
        self.relabel = bool(relabel)
        self.anchor = None if anchor is None else float(anchor)
        self.noise: TruncatedNormalNoise | None = None

    def validate(self, episodes: int) -> None:
        super().validate(episodes)
        if self.buffer_episodes < 1 or self.batch_size < 1:
            raise AmcError("agent.buffer_episodes and agent.batch_size must be >= 1")
        if not 0 < self.noise_end <= 1:
            raise AmcError(f"agent.noise_end={self.noise_end:g} must be in (0, 1]")
        if self.sigma < 0 or not 0 <= self.sigma_floor:
            raise AmcError("agent.sigma and agent.sigma_floor must be >= 0")
        if self.anchor is not None and not self.anchor > 0:
            raise AmcError(
                f"agent.anchor={self.anchor:g} must be > 0 (TD3+BC's alpha, e.g. 2.5), or null for plain DDPG"
            )
        if self.anchor is not None and self.reference == "none":
            raise AmcError(
                "agent.anchor holds the actor near action 0, the reference, but agent.reference=none centres the "
                "actions on nothing; set agent.anchor=null (AMC's plain actor loss) or agent.reference=best"
            )
        if self.sigma_decay is not None and not 0 < self.sigma_decay <= 1:
            raise AmcError(f"agent.sigma_decay={self.sigma_decay:g} must be in (0, 1] (or null: from the schedule)")

    def decay_for(self, episodes: int) -> float:
        """Sigma's factor per noisy episode: ``sigma_decay``, or the one reaching the floor at ``noise_end``."""
        if self.sigma_decay is not None:
            return self.sigma_decay
        noisy = int(episodes) - self.n_demo - self.probe_episodes - self.warmup - self.n_exploit
        span = max(1, int(round(self.noise_end * noisy)))
        if self.sigma <= 0 or self.sigma_floor <= 0 or self.sigma_floor >= self.sigma:
            return 1.0
        return float((self.sigma_floor / self.sigma) ** (1.0 / span))

    def _make_model(self, env: CompressionEnv, episodes: int) -> OffPolicyAlgorithm:
        n = env.n_units
        self.noise = TruncatedNormalNoise(
            env.action_dim,
            self.sigma,
            self.decay_for(episodes),
            float(env.action_space.low.min()),
            float(env.action_space.high.max()),
            warmup_steps=self.warmup * n,
            seed=self.seed,
            center=self._actor_action if self.noise_around_action else None,
            floor=self.sigma_floor,
            n_envs=self.n_envs,
        )
        return self.algorithm(
            ActorCriticLrPolicy,
            self.sb3_env(env),
            learning_rate=self.actor_lr,
            tau=self.tau,
            gamma=self.gamma,
            action_noise=self.noise if self.n_envs == 1 else SharedScheduleNoise(self.noise),
            policy_kwargs={"net_arch": list(self.net_arch), "critic_lr": self.critic_lr, "anchor": self.anchor},
            **self.off_policy_kwargs(
                env,
                self.batch_size,
                self.buffer_episodes,
                backfill=self.reward_backfill,
                baseline=self.reward_baseline,
                baseline_alpha=self.baseline_alpha,
                relabel=self.relabel,
            ),
            **self.algorithm_kwargs(),
        )

    def algorithm_kwargs(self) -> dict[str, Any]:
        """Extra constructor arguments of the SB3 algorithm (TD3's own)."""
        return {}

    def _actor_action(self) -> np.ndarray:
        assert self.model is not None
        # SB3 is choosing the action for this observation when it asks the noise for a sample.
        action, _ = self.model.predict(self.model._last_obs, deterministic=True)  # type: ignore[arg-type]
        return np.asarray(action).reshape(-1)

    def episode_extras(self, phase: str) -> dict[str, float]:
        noise = self.noise
        return {"sigma": noise.sigma if noise is not None and phase == "explore" else 0.0}

    def train_metrics(self) -> dict[str, float]:
        assert self.model is not None and self.noise is not None
        out = {"noise_sigma": self.noise.sigma, **super().train_metrics()}
        buffer = self.model.replay_buffer
        if isinstance(buffer, EpisodeRewardReplayBuffer) and buffer.baseline is not None:
            out["reward_baseline"] = buffer.baseline
        return out

    def state_dict(self) -> dict[str, Any]:
        assert self.noise is not None
        return {**super().state_dict(), "noise": self.noise.state_dict()}

    def load_state_dict(self, state: Any) -> None:
        assert self.noise is not None
        super().load_state_dict(state)
        self.noise.load_state_dict(state["noise"])


class TD3Agent(DDPGAgent):
    """TD3 (Fujimoto et al. 2018) with the same set-up: twin critics, delayed actor updates, target smoothing.

    Takes :class:`DDPGAgent`'s arguments plus:

    Args:
        policy_delay: critic updates per actor update (TD3 paper and SB3: 2).
        target_policy_noise: std of the target-action smoothing noise (TD3 paper and SB3: 0.2).
        target_noise_clip: its clip (TD3 paper and SB3: 0.5).
        **kwargs: :class:`DDPGAgent` arguments.
    """

    name: ClassVar[str] = "td3"
    algorithm: ClassVar[type[OffPolicyAlgorithm]] = TD3

    def __init__(
        self, policy_delay: int = 2, target_policy_noise: float = 0.2, target_noise_clip: float = 0.5, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.policy_delay = int(policy_delay)
        self.target_policy_noise, self.target_noise_clip = float(target_policy_noise), float(target_noise_clip)

    def algorithm_kwargs(self) -> dict[str, Any]:
        return {
            "policy_delay": self.policy_delay,
            "target_policy_noise": self.target_policy_noise,
            "target_noise_clip": self.target_noise_clip,
        }
