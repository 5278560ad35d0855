"""Parallel episodes for SB3 agents (``agent.n_envs`` > 1): a vector env over one environment, and shared noise.

:class:`CompressionVecEnv` is an SB3 :class:`~stable_baselines3.common.vec_env.VecEnv` of ``n``
episodes of *one* :class:`~amc.envs.CompressionEnv`. The episodes differ only in their decisions so
far (:meth:`CompressionEnv.episode_state`); everything else (compressor, budget wall, reference,
cache, reward) is shared, so a change of reference reaches every episode at once. Each step loads
an episode's state, takes its action through the wall and stores the state back; the steps before
the last cost microseconds. Every episode has ``n_units`` steps, so the ``n`` episodes run in
lockstep and end together: at the last step their policies are measured together on the
environment's evaluation workers (:meth:`CompressionEnv.finish_many`). That is where the time goes,
and what runs in parallel; SB3's ``SubprocVecEnv`` would instead copy the whole environment (model,
calibration data) into every worker and ship every step over a pipe.

:class:`SharedScheduleNoise` gives the ``n`` episodes one exploration schedule: one generator draws
each episode's noise in env order, and sigma decays once per finished episode, as with one env.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from amc.agents.noise import TruncatedNormalNoise
from amc.envs import CompressionEnv
from stable_baselines3.common.noise import VectorizedActionNoise
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn


class CompressionVecEnv(VecEnv):
    """``n`` lockstep episodes of one compression environment, measured together at their last step.

    Args:
        env: the environment (its evaluation workers measure the finished episodes when it has them).
        n: number of episodes side by side.
    """

    def __init__(self, env: CompressionEnv, n: int) -> None:
        self.env = env
        self.render_mode = None
        self._states: list[dict[str, Any]] = []
        self._actions: np.ndarray | None = None
        super().__init__(int(n), env.observation_space, env.action_space)
        self._states = [env.episode_state() for _ in range(self.num_envs)]

    def reset(self) -> VecEnvObs:
        """Start ``n`` episodes at the first unit."""
        obs = []
        for i in range(self.num_envs):
            _, self.reset_infos[i] = self.env.reset(seed=self._seeds[i], options=self._options[i] or None)
            self._states[i] = self.env.episode_state()
            obs.append(self.env.observation())
        self._reset_seeds()
        self._reset_options()
        return np.stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        assert self._actions is not None
        env, n = self.env, self.num_envs
        obs = []
        for i in range(n):
            env.load_episode_state(self._states[i])
            env.decide(self._actions[i])
            self._states[i] = env.episode_state()
            obs.append(env.observation())
        rewards = np.zeros(n, dtype=np.float32)
        last = int(self._states[0]["t"]) == env.n_units
        assert all((int(s["t"]) == env.n_units) == last for s in self._states), "episodes out of lockstep"
        if not last:
            return np.stack(obs), rewards, np.zeros(n, dtype=bool), [{} for _ in range(n)]
        infos = env.finish_many(self._states)
        for i, info in enumerate(infos):
            rewards[i] = float(info["reward"])
            info["terminal_observation"] = obs[i]
            info["TimeLimit.truncated"] = False
            env.reset()  # SB3's vector envs start the next episode at once
            self._states[i] = env.episode_state()
            obs[i] = env.observation()
        return np.stack(obs), rewards, np.ones(n, dtype=bool), infos

    def close(self) -> None:
        """Nothing to release: the evaluation workers belong to the search (:meth:`CompressionEnv.parallel`)."""

    def _indices(self, indices: VecEnvIndices) -> Sequence[int]:
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.env, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.env, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        return [getattr(self.env, method_name)(*method_args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]


class SharedScheduleNoise(VectorizedActionNoise):
    """One :class:`TruncatedNormalNoise` schedule for ``n`` parallel episodes.

    SB3 would wrap a plain noise in :class:`VectorizedActionNoise`, which deep-copies it per env: ``n``
    identical generators (the same noise in every episode) and ``n`` separate sigma schedules. Here
    one noise object (built with ``n_envs``) draws all ``n`` episodes' noise from its one generator,
    and ``reset(indices)`` decays sigma once per finished episode, so sigma follows the episode count
    exactly as with one env.

    Args:
        base: the noise, built with ``n_envs=n``.
    """

    def __init__(self, base: TruncatedNormalNoise) -> None:  # no super().__init__: it would copy ``base``
        self.base_noise = base
        self.schedule = base
        self.n_envs = base.n_envs
        self._drawn = np.zeros(self.n_envs, dtype=bool)  # per env: its current episode drew noise

    def __call__(self) -> np.ndarray:
        out = self.schedule()
        if self.schedule.drawn:
            self._drawn[:] = True
        return out

    def reset(self, indices: Iterable[int] | None = None) -> None:
        """End of the episodes ``indices`` (``None``: SB3's call at the start of ``learn()``).

        SB3 calls this once per finished env; each decays sigma once if its episode drew noise.
        """
        for i in range(self.n_envs) if indices is None else indices:
            if self._drawn[i]:
                self.schedule.drawn = True
                self.schedule.reset()
                self._drawn[i] = False
        self.schedule.drawn = bool(self._drawn.any())

    def __repr__(self) -> str:
        return f"SharedScheduleNoise({self.schedule!r}, n_envs={self.n_envs})"


__all__ = ["CompressionVecEnv", "SharedScheduleNoise"]
