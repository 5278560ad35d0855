"""A TD3/DDPG policy with separate actor and critic learning rates (AMC: 1e-4 and 1e-3) and an optional
proximal actor objective that keeps the actor near the reference (TD3+BC, Fujimoto & Gu 2021)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch as th
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.type_aliases import Schedule
from stable_baselines3.td3.policies import TD3Policy


class ScaledLrAdam(th.optim.Adam):
    """Adam that steps with ``lr_scale`` times the learning rate in its parameter groups.

    SB3 writes the one learning rate of its schedule into every optimizer before each training
    phase, so a different critic rate cannot live in the parameter groups; it lives in the scale.

    Args:
        params: parameters to optimize.
        lr: base learning rate (what SB3 sets).
        lr_scale: multiplier applied at every step.
        **kwargs: other Adam arguments.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, lr_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(params, lr=lr, **kwargs)
        self.lr_scale = float(lr_scale)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        base = [group["lr"] for group in self.param_groups]
        for group in self.param_groups:
            group["lr"] = group["lr"] * self.lr_scale
        try:
            return super().step(closure)
        finally:
            for group, lr in zip(self.param_groups, base):
                group["lr"] = lr


class ProximalCritic(ContinuousCritic):
    """SB3's critic whose actor objective (``q1_forward``) is TD3+BC's, anchored at action 0.

    SB3's TD3 and DDPG use ``q1_forward`` only in the actor loss ``-q1_forward(s, actor(s)).mean()``.
    Here it returns ``lambda * Q1(s, a) - mean_j a_j^2`` with ``lambda = anchor / mean |Q1(s, a)|``
    (batch mean, not differentiated), so the actor loss is TD3+BC's (Fujimoto & Gu 2021, eq. 3,
    ``alpha`` 2.5) with the behaviour action replaced by 0: the reference the actions are centred on
    (the best legal episode so far with ``agent.reference=best``). The actor leaves the reference only
    where the critic's normalised gain outweighs the squared distance, which stops a critic fitted on
    a few dozen episodes from dragging the actor into collapsed configurations. The critic's own loss
    (``forward``) is untouched.

    Args:
        *args: :class:`~stable_baselines3.common.policies.ContinuousCritic` arguments.
        anchor: TD3+BC's ``alpha`` (> 0; larger: closer to plain DDPG).
        **kwargs: its keyword arguments.

    Shapes: ``obs`` (batch, obs_dim), ``actions`` (batch, action_dim) in [-1, 1]; returns (batch, 1).
    """

    def __init__(self, *args: Any, anchor: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.anchor = float(anchor)

    def q1_forward(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        q = super().q1_forward(obs, actions)
        lam = self.anchor / q.abs().mean().detach().clamp_min(1e-8)
        return lam * q - actions.pow(2).mean(dim=1, keepdim=True)


class ActorCriticLrPolicy(TD3Policy):
    """SB3's TD3 policy whose critic optimizer uses its own learning rate.

    The actor uses the algorithm's ``learning_rate``; the critic uses ``critic_lr`` (``None``: the
    same rate, SB3's behaviour). With ``anchor`` the critics are :class:`ProximalCritic` (the actor
    objective of TD3+BC, anchored at the reference); ``None`` keeps SB3's objective.

    Args:
        *args: :class:`~stable_baselines3.td3.policies.TD3Policy` arguments.
        critic_lr: the critic's learning rate.
        anchor: TD3+BC's ``alpha`` for the actor objective, or ``None`` (plain DDPG/TD3).
        **kwargs: :class:`~stable_baselines3.td3.policies.TD3Policy` keyword arguments.
    """

    def __init__(self, *args: Any, critic_lr: float | None = None, anchor: float | None = None, **kwargs: Any) -> None:
        self.critic_lr = None if critic_lr is None else float(critic_lr)
        self.anchor = None if anchor is None else float(anchor)
        super().__init__(*args, **kwargs)

    def make_critic(self, features_extractor: Any = None) -> ContinuousCritic:
        if self.anchor is None:
            return super().make_critic(features_extractor)
        critic_kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return ProximalCritic(**critic_kwargs, anchor=self.anchor).to(self.device)

    def _build(self, lr_schedule: Schedule) -> None:
        super()._build(lr_schedule)
        if self.critic_lr is None:
            return
        if self.optimizer_class is not th.optim.Adam:
            raise ValueError("critic_lr needs the Adam optimizer (AMC's); drop critic_lr to use another optimizer")
        base = float(lr_schedule(1))
        self.critic.optimizer = ScaledLrAdam(
            self.critic.parameters(), lr=base, lr_scale=self.critic_lr / base, **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), "critic_lr": self.critic_lr, "anchor": self.anchor}
