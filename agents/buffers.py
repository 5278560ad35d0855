"""AMC's reward assignment on top of SB3's replay buffer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.vec_env import VecNormalize

from amc.utils import atomic_torch_save

ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class EpisodeRewardReplayBuffer(ReplayBuffer):
    """A replay buffer that gives every step the episode's final reward and subtracts a moving baseline.

    The environment rewards only the last step. AMC stores each transition of an episode with that
    final reward (``backfill``) and, at every update, subtracts an exponential moving average of the
    sampled batches' mean reward (``baseline``, AMC's ``moving_average`` with ``moving_alpha``). The
    stored rewards stay raw; the baseline is applied to sampled batches only.

    Args:
        buffer_size: capacity in transitions.
        observation_space: observation space.
        action_space: action space.
        device: where sampled tensors go.
        n_envs: number of environments; with several, their episodes run in lockstep (same length,
            ending together: :class:`~amc.agents.vec_env.CompressionVecEnv`) and each env's column is
            back-filled and relabelled with its own episode's reward and actions.
        optimize_memory_usage: SB3's memory-saving layout (not supported here).
        handle_timeout_termination: SB3's timeout handling.
        backfill: give all transitions of an episode its final reward.
        baseline: subtract the moving-average baseline from sampled rewards.
        baseline_alpha: update rate of the baseline (AMC ``moving_alpha``).
        relabel: at the end of an episode, replace its stored actions with ``infos[i]["actions"]`` when
            the environment reports them (the actions of the configuration actually evaluated, e.g. after
            the budget wall's repair), so the critic learns the value of what was measured.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: torch.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        backfill: bool = True,
        baseline: bool = True,
        baseline_alpha: float = 0.5,
        relabel: bool = False,
    ) -> None:
        if optimize_memory_usage:
            raise ValueError("EpisodeRewardReplayBuffer does not support optimize_memory_usage")
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device,
            n_envs=n_envs,
            optimize_memory_usage=False,
            handle_timeout_termination=handle_timeout_termination,
        )
        self.backfill = bool(backfill)
        self.use_baseline = bool(baseline)
        self.baseline_alpha = float(baseline_alpha)
        self.relabel = bool(relabel)
        self.baseline: float | None = None
        self.episode_positions: list[int] = []

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """Store a transition; at the end of an episode, write its reward into all of its transitions."""
        self.episode_positions.append(self.pos)
        super().add(obs, next_obs, action, reward, done, infos)
        dones = np.asarray(done).reshape(-1)
        if bool(dones[0]):
            assert dones.all(), "parallel episodes must end together"
            rewards = np.asarray(reward, dtype=np.float32).reshape(-1)
            for i in range(self.n_envs):
                if self.backfill:
                    # An episode is shorter than the buffer, so its positions are distinct even after a wrap.
                    self.rewards[self.episode_positions, i] = rewards[i]
                executed = infos[i].get("actions") if infos else None
                if self.relabel and executed is not None and len(executed) == len(self.episode_positions):
                    self.actions[self.episode_positions, i] = np.asarray(executed, dtype=np.float32).reshape(
                        len(self.episode_positions), -1
                    )
            self.episode_positions = []

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        """A batch whose rewards have the moving baseline subtracted (when enabled)."""
        data = super().sample(batch_size, env=env)
        if not self.use_baseline:
            return data
        mean = float(data.rewards.mean())
        self.baseline = mean if self.baseline is None else self.baseline + self.baseline_alpha * (mean - self.baseline)
        return data._replace(rewards=data.rewards - self.baseline)

    def save(self, path: str | Path) -> None:
        """Write the contents as tensors (readable with ``torch.load(weights_only=True)``), atomically."""
        state: dict[str, Any] = {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name))) for name in ARRAYS}
        state.update(
            pos=int(self.pos),
            full=bool(self.full),
            baseline=self.baseline,
            episode_positions=list(self.episode_positions),
        )
        atomic_torch_save(state, path)

    def load(self, path: str | Path) -> None:
        """Read what :meth:`save` wrote (shapes must match this buffer)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name in ARRAYS:
            array = state[name].numpy()
            if array.shape != getattr(self, name).shape:
                raise ValueError(f"replay buffer {name} has shape {array.shape}, expected {getattr(self, name).shape}")
            getattr(self, name)[...] = array
        self.pos, self.full = int(state["pos"]), bool(state["full"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
        self.episode_positions = [int(p) for p in state["episode_positions"]]
