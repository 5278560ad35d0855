"""Training options that must change what the agent learns from: each test fails if its option is ignored.

``reward_backfill`` and ``reward_baseline`` through a real DDPG search (not only the buffer's unit test),
and the noise schedule: the noise is drawn for every learning step and its sigma follows sigma -> sigma_floor.
(``from_scratch`` and ``kd`` are checked on a real fine-tuning in ``test_finetune.py``.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from amc.agents import DDPGAgent, TruncatedNormalNoise
from test_agents import Recorder, small_env


def _search(**kw) -> tuple[DDPGAgent, Recorder, int]:
    env, rec = small_env(), Recorder()
    agent = DDPGAgent(**{"warmup": 2, "exploit": 1, "seed": 0, "sigma": 0.5, "sigma_floor": 0.1, **kw})
    agent.search(env, 6, rec)
    return agent, rec, env.n_units


@pytest.mark.parametrize("backfill", [True, False])
def test_ddpg_buffer_holds_the_episode_reward_at_every_step_with_backfill(backfill: bool) -> None:
    agent, rec, n = _search(reward_backfill=backfill, reward_baseline=False)
    assert agent.model is not None
    buf = agent.model.replay_buffer
    learned = [r for r in rec.records if r.phase != "exploit"]  # the deterministic exploit episode is not stored
    assert buf.pos == n * len(learned)
    rewards = buf.rewards[: buf.pos, 0].reshape(len(learned), n)
    for row, record in zip(rewards, learned):
        assert record.reward != 0.0
        expected = [record.reward] * n if backfill else [0.0] * (n - 1) + [record.reward]
        assert row.tolist() == pytest.approx(expected), (record.episode, row)
    assert buf.baseline is None  # reward_baseline=False: sampled rewards stay raw


@pytest.mark.parametrize("baseline", [True, False])
def test_ddpg_reward_baseline_is_a_moving_average_of_the_stored_rewards(baseline: bool) -> None:
    agent, rec, _ = _search(reward_baseline=baseline)
    assert agent.model is not None
    buf = agent.model.replay_buffer
    metrics = agent.train_metrics()
    if not baseline:
        assert buf.baseline is None and "reward_baseline" not in metrics
        return
    stored = buf.rewards[: buf.pos, 0]
    # An average of sampled batch means lies between the smallest and largest stored reward.
    assert buf.baseline is not None and stored.min() - 1e-9 <= buf.baseline <= stored.max() + 1e-9
    assert metrics["reward_baseline"] == buf.baseline


def test_noise_is_drawn_at_every_learning_step_and_decays_to_its_floor() -> None:
    agent, rec, n = _search(sigma_decay=0.5)
    assert agent.noise is not None
    # SB3 asks the noise once per step of every stored episode (zeros during warm-up), never when exploiting.
    stored = [r for r in rec.records if r.phase != "exploit"]
    assert agent.noise.calls == n * len(stored)
    sigmas = [r.extras["sigma"] for r in rec.records if r.phase == "explore"]
    assert sigmas == pytest.approx([0.5, 0.25, 0.125])  # halved after each noisy episode
    assert agent.noise.sigma == pytest.approx(0.1)  # 0.0625 is below the floor


@pytest.mark.parametrize("sigma", [0.0, 0.4])
def test_noise_spread_follows_sigma(sigma: float) -> None:
    noise = TruncatedNormalNoise(4, sigma=sigma, decay=1.0, seed=0, center=lambda: np.zeros(4))
    draws = np.stack([noise() for _ in range(4000)])
    # Std of N(0, 2 * sigma) truncated to [-1, 1] (2 * sigma: sigma is a fraction of the range [-1, 1]).
    if sigma == 0.0:
        assert np.all(draws == 0)
        return
    std = 2 * sigma
    grid = np.linspace(-1, 1, 200001)
    dens = np.exp(-0.5 * (grid / std) ** 2)
    expected = float(np.sqrt((grid**2 * dens).sum() / dens.sum()))
    assert draws.std() == pytest.approx(expected, rel=0.05)
    assert np.all(np.abs(draws) <= 1.0)


# --- proximal actor objective (agent.anchor: TD3+BC's alpha, anchored at the reference) ------------
def test_anchored_actor_objective_is_td3_bc_at_action_zero() -> None:
    from amc.agents.policies import ProximalCritic

    agent = DDPGAgent(warmup=1, exploit=0, seed=0, anchor=2.5)
    agent.setup(small_env(), episodes=3)
    assert agent.model is not None
    critic = agent.model.critic
    assert isinstance(critic, ProximalCritic) and critic.anchor == 2.5
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(32, agent.model.observation_space.shape[0], generator=gen)
    act = torch.rand(32, agent.model.action_space.shape[0], generator=gen) * 2 - 1
    with torch.no_grad():
        q = critic.q_networks[0](torch.cat([obs, act], dim=1))  # the raw first critic
        expected = 2.5 / q.abs().mean() * q - (act**2).mean(dim=1, keepdim=True)
        assert torch.allclose(critic.q1_forward(obs, act), expected, atol=1e-6)
        assert torch.equal(critic(obs, act)[0], q)  # the critic's own loss sees the raw Q
    plain = DDPGAgent(warmup=1, exploit=0, seed=0)
    plain.setup(small_env(), episodes=3)
    assert plain.model is not None and not isinstance(plain.model.critic, ProximalCritic)


def test_anchor_keeps_the_actor_near_the_reference() -> None:
    """A strong anchor (small alpha) holds the learned actor near action 0 (the reference); without it the same
    search drives the actor's outputs far from it (measured: mean |action| 0.92 plain, 0.17 with alpha 0.1)."""

    def spread(anchor: float | None) -> float:
        agent, _, _ = _search(anchor=anchor, updates_per_step=4.0)
        assert agent.model is not None
        buf = agent.model.replay_buffer
        obs = torch.as_tensor(buf.observations[: buf.pos, 0])
        with torch.no_grad():
            return float(agent.model.actor(obs).abs().mean())

    plain, anchored = spread(None), spread(0.1)
    assert plain > 0.5 and anchored < plain / 3, (plain, anchored)


def test_anchor_needs_a_reference_and_a_positive_alpha() -> None:
    from amc.errors import AmcError

    with pytest.raises(AmcError, match=r"^agent\.anchor holds the actor near action 0.*set agent\.anchor=null"):
        DDPGAgent(reference="none", anchor=2.5, warmup=1, exploit=0).validate(10)
    with pytest.raises(AmcError, match=r"^agent\.anchor=0 must be > 0"):
        DDPGAgent(anchor=0.0, warmup=1, exploit=0).validate(10)
    DDPGAgent(reference="none", anchor=None, warmup=1, exploit=0).validate(10)  # AMC's set-up stays valid
