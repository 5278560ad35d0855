"""A TD3/DDPG policy with separate actor and critic learning rates (AMC: 1e-4 and 1e-3)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch as th
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


class ActorCriticLrPolicy(TD3Policy):
    """SB3's TD3 policy whose critic optimizer uses its own learning rate.

    The actor uses the algorithm's ``learning_rate``; the critic uses ``critic_lr`` (``None``: the
    same rate, SB3's behaviour).

    Args:
        *args: :class:`~stable_baselines3.td3.policies.TD3Policy` arguments.
        critic_lr: the critic's learning rate.
        **kwargs: :class:`~stable_baselines3.td3.policies.TD3Policy` keyword arguments.
    """

    def __init__(self, *args: Any, critic_lr: float | None = None, **kwargs: Any) -> None:
        self.critic_lr = None if critic_lr is None else float(critic_lr)
        super().__init__(*args, **kwargs)

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
        return {**super()._get_constructor_parameters(), "critic_lr": self.critic_lr}
