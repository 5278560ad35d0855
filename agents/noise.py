"""AMC's exploration noise as an SB3 :class:`~stable_baselines3.common.noise.ActionNoise`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from stable_baselines3.common.noise import ActionNoise


class TruncatedNormalNoise(ActionNoise):
    """AMC's exploration: a normal truncated to the action bounds whose sigma decays once per episode.

    AMC samples each action from ``N(actor action, sigma)`` truncated to the bounds (no mass piles up
    at a bound, unlike adding noise and clipping). SB3 hands an ``ActionNoise`` no action, so the
    centre comes from ``center`` (the DDPG agent passes the actor's action for SB3's current
    observation) and the noise returned is ``sample - centre``; SB3 adds it back and clips, which
    is then a no-op. Without ``center`` it is a zero-mean normal truncated to the width of the
    bounds, and SB3's clipping applies as usual.

    ``sigma`` is a fraction of the action range (AMC's actions live in [0, 1]; on SB3's [-1, 1] the
    standard deviation is ``2 * sigma``). AMC adds no noise to its warm-up's random actions, SB3
    does, so the first ``warmup_steps`` calls return zeros. ``reset`` decays sigma only after an
    episode in which noise was drawn: SB3 calls it at the end of every episode but also once at the
    start of every ``learn()``, and neither that call nor a warm-up episode decays sigma.

    Args:
        size: action dimension.
        sigma: initial standard deviation, as a fraction of the action range (AMC ``init_delta``).
        decay: factor applied to sigma after every noisy episode (AMC ``delta_decay``).
        low: lower action bound.
        high: upper action bound.
        warmup_steps: calls answered with zeros (SB3's ``learning_starts``).
        seed: seed of the noise's own generator.
        center: returns the actor's action for the current observation (truncation around it).
        floor: sigma never decays below this (0: AMC's unbounded decay).
        n_envs: parallel episodes (``agent.n_envs``): each call returns ``(n_envs, size)`` noise (drawn
            from the one generator in env order), ``center`` returns the actors' actions for all of them,
            and a call counts ``n_envs`` steps toward ``warmup_steps``. Wrap it in
            :class:`~amc.agents.vec_env.SharedScheduleNoise` for SB3.
    """

    def __init__(
        self,
        size: int,
        sigma: float = 0.5,
        decay: float = 0.95,
        low: float = -1.0,
        high: float = 1.0,
        warmup_steps: int = 0,
        seed: int = 0,
        center: Callable[[], np.ndarray] | None = None,
        floor: float = 0.0,
        n_envs: int = 1,
    ) -> None:
        super().__init__()
        if sigma < 0 or not 0 < decay <= 1:
            raise ValueError(f"sigma={sigma} must be >= 0 and decay={decay} in (0, 1]")
        self.size = int(size)
        self.n_envs = int(n_envs)
        self.shape = (self.size,) if self.n_envs == 1 else (self.n_envs, self.size)
        self.sigma0 = float(sigma)
        self.sigma = float(sigma)
        self.decay = float(decay)
        self.floor = min(float(floor), self.sigma0)
        self.low, self.high = float(low), float(high)
        self.center = center
        self.warmup_steps = int(warmup_steps)
        self.calls = 0
        self.rng = np.random.default_rng(seed)
        self.drawn = False

    @property
    def std(self) -> float:
        """Standard deviation in action units."""
        return self.sigma * (self.high - self.low)

    def __call__(self) -> np.ndarray:
        self.calls += self.n_envs
        if self.calls <= self.warmup_steps:
            return np.zeros(self.shape, dtype=np.float32)
        self.drawn = True
        count = self.size * self.n_envs
        if self.center is None:
            width = self.high - self.low
            return self._truncated(np.zeros(count), -width, width).reshape(self.shape)
        mu = np.clip(np.asarray(self.center(), dtype=np.float64).reshape(count), self.low, self.high)
        return (self._truncated(mu, self.low, self.high) - mu).astype(np.float32).reshape(self.shape)

    def _truncated(self, mu: np.ndarray, low: float, high: float) -> np.ndarray:
        """Rejection sampling of N(mu, std) on [low, high], per dimension (at least ~1/2 accepted per draw)."""
        std = self.std
        out = mu.astype(np.float64).copy()
        if std == 0:
            return out.astype(np.float32)
        todo = np.ones(mu.shape[0], dtype=bool)
        for _ in range(1000):
            draw = self.rng.normal(mu[todo], std)
            ok = (draw >= low) & (draw <= high)
            idx = np.flatnonzero(todo)
            out[idx[ok]] = draw[ok]
            todo[idx[ok]] = False
            if not todo.any():
                break
        out[todo] = np.clip(mu[todo], low, high)
        return out.astype(np.float32)

    def reset(self) -> None:
        """End of an episode: decay sigma if this episode drew noise."""
        if self.drawn:
            self.sigma = max(self.floor, self.sigma * self.decay)
        self.drawn = False

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state (sigma, pending decay flag, call count, generator)."""
        return {"sigma": self.sigma, "drawn": self.drawn, "calls": self.calls, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.sigma = float(state["sigma"])
        self.drawn = bool(state["drawn"])
        self.calls = int(state["calls"])
        self.rng.bit_generator.state = state["rng"]

    def __repr__(self) -> str:
        around = self.center is not None
        return f"TruncatedNormalNoise(sigma={self.sigma:.4g}, decay={self.decay}, around_action={around})"
