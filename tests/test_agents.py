"""Agents without Hydra: AMC's noise, reward assignment and learning rates on SB3, every agent end to end, state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from amc.agents import (
    ActorCriticLrPolicy,
    CallbackList,
    DDPGAgent,
    EpisodeRecord,
    EpisodeRewardReplayBuffer,
    GreedySearch,
    ILPSearch,
    PPOAgent,
    RandomSearch,
    SACAgent,
    ScaledLrAdam,
    SearchCallback,
    TD3Agent,
    TruncatedNormalNoise,
    UniformSearch,
    learner_best,
)
from amc.agents.base import Agent, actions_for, run_episode
from amc.agents.callbacks import Checkpointer, latest_checkpoint, restore_rng
from amc.envs import CompressionEnv
from gymnasium import spaces

from amc.compress import Compressor, Policy
from amc.errors import AmcError
from amc.graph import build_graph
from amc.models import build_model

BUDGETS = {"macs": 0.5, "size": 0.15}


def small_env(mode: str = "joint", budgets: dict | None = None, seed: int = 0) -> CompressionEnv:
    """fmnist_cnn (random weights) on 64 random images: ~20 ms per episode."""
    torch.manual_seed(seed)
    model = build_model("fmnist_cnn", num_classes=10, in_channels=1).eval()
    graph = build_graph(model, (1, 28, 28))
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(16, 1, 28, 28, generator=gen)]
    x, y = torch.randn(64, 1, 28, 28, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    return CompressionEnv(
        Compressor(model, graph, calibration=calib), (x, y), budgets=BUDGETS if budgets is None else budgets, mode=mode
    )


class Recorder(SearchCallback):
    def __init__(self) -> None:
        self.records: list[EpisodeRecord] = []
        self.safe: list[int] = []
        self.train: list[dict[str, float]] = []

    def on_episode(self, agent: Agent, record: EpisodeRecord, is_best: bool) -> None:
        self.records.append(record)

    def on_safe_point(self, agent: Agent, episodes_done: int) -> None:
        self.safe.append(episodes_done)
        self.train.append(agent.train_metrics())


# --- noise ---------------------------------------------------------------------------------------
def test_noise_is_silent_in_warmup_and_decays_only_after_noisy_episodes() -> None:
    noise = TruncatedNormalNoise(3, sigma=0.5, decay=0.9, warmup_steps=4, seed=0)
    for _ in range(2):  # a warm-up episode of two steps
        assert np.all(noise() == 0)
    noise.reset()  # end of a warm-up episode
    noise.reset()  # SB3's reset at the start of learn()
    assert noise.sigma == 0.5
    noise(), noise()
    noise.reset()
    assert noise.sigma == 0.5  # still the warm-up's steps
    noise()
    noise.reset()
    noise.reset()  # a learn() call right after: no second decay
    assert noise.sigma == pytest.approx(0.45)


@pytest.mark.parametrize("center", [None, np.array([0.95, -0.95, 0.0])])
def test_noise_is_truncated_to_the_bounds(center: np.ndarray | None) -> None:
    noise = TruncatedNormalNoise(3, sigma=0.5, seed=1, center=None if center is None else (lambda: center))
    draws = np.array([noise() for _ in range(4000)])
    if center is None:
        assert np.all(np.abs(draws) <= 2.0) and abs(draws.mean()) < 0.05
    else:
        actions = center + draws
        assert np.all(actions >= -1.0 - 1e-6) and np.all(actions <= 1.0 + 1e-6)
        # No mass piles up at a bound (as it would with add-and-clip).
        assert np.mean(np.isclose(actions, 1.0)) < 0.01
        assert actions[:, 0].mean() < 0.95 < actions[:, 0].max() + 0.1


def test_noise_state_round_trip() -> None:
    a = TruncatedNormalNoise(2, seed=3, warmup_steps=1)
    a(), a(), a.reset(), a()
    b = TruncatedNormalNoise(2, seed=99)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a(), b()) and a.sigma == b.sigma and a.calls == b.calls


# --- replay buffer -------------------------------------------------------------------------------
def make_buffer(size: int = 5, **kwargs) -> EpisodeRewardReplayBuffer:
    return EpisodeRewardReplayBuffer(
        size, spaces.Box(0, 1, (2,), np.float32), spaces.Box(-1, 1, (1,), np.float32), device="cpu", **kwargs
    )


def add_episode(buf: EpisodeRewardReplayBuffer, steps: int, reward: float) -> None:
    for t in range(steps):
        done = t == steps - 1
        buf.add(
            np.zeros((1, 2)),
            np.zeros((1, 2)),
            np.zeros((1, 1)),
            np.array([reward if done else 0.0]),
            np.array([done]),
            [{}],
        )


def test_buffer_backfills_episode_reward_even_across_the_wrap() -> None:
    buf = make_buffer(5, baseline=False)
    add_episode(buf, 3, 0.7)
    assert buf.rewards[:3, 0].tolist() == pytest.approx([0.7] * 3)
    add_episode(buf, 3, 0.2)  # positions 3, 4, 0
    assert buf.rewards[[3, 4, 0], 0].tolist() == pytest.approx([0.2] * 3)
    assert buf.rewards[[1, 2], 0].tolist() == pytest.approx([0.7] * 2)
    plain = make_buffer(5, backfill=False, baseline=False)
    add_episode(plain, 3, 0.7)
    assert plain.rewards[:3, 0].tolist() == pytest.approx([0.0, 0.0, 0.7])


def test_buffer_baseline_is_a_moving_average_of_sampled_rewards(tmp_path: Path) -> None:
    buf = make_buffer(6, baseline_alpha=0.5)
    add_episode(buf, 3, 1.0)
    np.random.seed(0)
    first = buf.sample(4)
    assert buf.baseline == pytest.approx(1.0) and torch.allclose(first.rewards, torch.zeros(4, 1))
    add_episode(buf, 3, 0.0)
    batch = buf.sample(8)
    raw = batch.rewards + buf.baseline
    assert buf.baseline == pytest.approx(1.0 + 0.5 * (float(raw.mean()) - 1.0))
    buf.save(tmp_path / "rb.pt")
    other = make_buffer(6, baseline_alpha=0.5)
    other.load(tmp_path / "rb.pt")
    assert other.pos == buf.pos and other.baseline == buf.baseline and np.array_equal(other.rewards, buf.rewards)


# --- learning rates ------------------------------------------------------------------------------
def test_scaled_adam_steps_with_the_scaled_rate() -> None:
    p = torch.nn.Parameter(torch.zeros(4))
    opt = ScaledLrAdam([p], lr=1e-4, lr_scale=10.0)
    p.grad = torch.ones(4)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((4,), -1e-3), rtol=1e-3)  # Adam's first step is lr * sign
    assert opt.param_groups[0]["lr"] == 1e-4


def test_ddpg_actor_and_critic_learn_at_their_own_rates() -> None:
    agent = DDPGAgent(warmup=1, exploit=0, actor_lr=1e-4, critic_lr=1e-3)
    agent.setup(small_env(), episodes=3)
    assert agent.model is not None
    policy = agent.model.policy
    assert isinstance(policy, ActorCriticLrPolicy)
    agent.model._update_learning_rate([agent.model.actor.optimizer, agent.model.critic.optimizer])
    assert agent.model.actor.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    critic_opt = agent.model.critic.optimizer
    assert isinstance(critic_opt, ScaledLrAdam)
    assert critic_opt.param_groups[0]["lr"] * critic_opt.lr_scale == pytest.approx(1e-3)
    assert [m.out_features for m in policy.actor.mu if isinstance(m, torch.nn.Linear)][:2] == [300, 300]


# --- agents end to end ---------------------------------------------------------------------------
def ddpg(**kw) -> DDPGAgent:
    return DDPGAgent(**{"warmup": 3, "sigma_decay": 0.95, "exploit": 0, "seed": 0, **kw})


AGENTS = {
    "ddpg": lambda: ddpg(),
    "td3": lambda: TD3Agent(warmup=2, exploit=1, seed=0),
    "sac": lambda: SACAgent(warmup=2, exploit=1, seed=0),
    "ppo": lambda: PPOAgent(warmup=0, exploit=1, episodes_per_rollout=2, seed=0),
    "random": lambda: RandomSearch(seed=0),
    "uniform": lambda: UniformSearch(),
    "greedy": lambda: GreedySearch(keep_levels=[0.5], bit_levels=[4]),
    "ilp": lambda: ILPSearch(keep_levels=[0.5], bit_levels=[4]),
}
SCANNING = ("greedy", "ilp")


@pytest.mark.parametrize("name", list(AGENTS))
def test_every_agent_searches_within_budget(name: str) -> None:
    env, agent, rec = small_env(), AGENTS[name](), Recorder()
    episodes = 22 if name in SCANNING else 6
    result = agent.search(env, episodes, rec)
    assert result.agent == name and result.best is not None and result.best.eligible
    assert 1 <= len(result.episodes) <= episodes
    assert [r.episode for r in rec.records] == list(range(1, len(rec.records) + 1))
    # PPO's state is whole only between rollouts (2 episodes each here); its learning rounds down to whole rollouts.
    assert rec.safe == ([2, 4, 5, 6] if name == "ppo" else list(range(1, len(rec.records) + 1)))
    for r in rec.records:
        if r.eligible:
            assert all(b["achieved"] <= b["target"] * (1 + 1e-9) for b in r.budgets.values())
    assert result.best.reward == max(r.reward for r in rec.records if r.eligible)
    policy = Policy.from_dict(result.best.policy, env.graph)
    assert len(policy.w_bits) == env.n_units
    phases = [r.phase for r in rec.records]
    if name == "ddpg":
        assert phases == ["warmup"] * 3 + ["explore"] * 3
        assert [r.extras["sigma"] for r in rec.records[3:]] == pytest.approx([0.5, 0.475, 0.45125])
        assert "critic_loss" in rec.train[-1] and "actor_loss" in rec.train[-1] and "reward_baseline" in rec.train[-1]
        assert "critic_loss" not in rec.train[2]  # no update during warm-up
    if name in ("td3", "sac", "ppo"):
        assert phases[-1] == "exploit" and "explore" in phases
    if name in SCANNING:
        assert phases.count("scan") == len(rec.records) - 1 and phases[-1] == name
        assert not any(r.eligible for r in rec.records[:-1])


def test_sigma_schedule_fits_the_budget_then_exploits_without_noise() -> None:
    """Sigma decays from ``sigma`` to ``sigma_floor`` by ``noise_end`` of the learning episodes, for any budget."""
    for episodes in (12, 30):
        agent, rec = DDPGAgent(warmup=2, exploit=2, sigma=0.4, sigma_floor=0.04, noise_end=0.5, seed=0), Recorder()
        agent.search(small_env(), episodes, rec)
        phases = [r.phase for r in rec.records]
        learn = episodes - 4
        assert phases == ["warmup"] * 2 + ["explore"] * learn + ["exploit"] * 2
        sigmas = [r.extras["sigma"] for r in rec.records if r.phase == "explore"]
        span = round(0.5 * learn)
        assert sigmas[0] == pytest.approx(0.4)
        assert sigmas[span] == pytest.approx(0.04) and all(s == pytest.approx(0.04) for s in sigmas[span:])
        assert all(a > b for a, b in zip(sigmas[:span], sigmas[1 : span + 1]))
        assert all(r.extras["sigma"] == 0 for r in rec.records if r.phase == "exploit")
        # The exploitation episodes run the deterministic actor: one policy, repeated.
        exploit = [r.policy for r in rec.records if r.phase == "exploit"]
        assert exploit[0] == exploit[1]


@pytest.mark.parametrize("cls", [DDPGAgent, TD3Agent, SACAgent, PPOAgent])
def test_untrained_actor_reproduces_the_reference(cls: type) -> None:
    env = small_env()
    agent = cls(warmup=0 if cls is PPOAgent else 1, exploit=1, seed=4)
    agent.setup(env, 10)
    assert agent.model is not None
    ref = env.reference
    assert ref is not None and env.wall.feasible(ref.kept, ref.w_bits, ref.a_bits)
    obs, _ = env.reset()
    for _ in range(env.n_units):
        action, _ = agent.model.predict(obs, deterministic=True)
        assert np.all(action == 0)
        obs, _, done, _, info = env.step(action)
    assert done and env.policy() == ref
    # Without zero-initialisation the actor is somewhere else.
    other = cls(warmup=0 if cls is PPOAgent else 1, exploit=1, seed=4, zero_init_actor=False)
    other.setup(small_env(), 10)
    assert other.model is not None
    assert np.any(other.model.predict(env.reset()[0], deterministic=True)[0] != 0)


def test_demonstrations_set_the_reference_and_seed_the_replay_buffer() -> None:
    env, rec = small_env(), Recorder()
    demos = [UniformSearch(), GreedySearch(keep_levels=[0.5], bit_levels=[4])]
    n_uniform, n_greedy = demos[0].episodes_needed(env), demos[1].episodes_needed(env)
    agent = DDPGAgent(demos=demos, warmup=1, exploit=1, seed=0, best_of="learner", demo_budget=1.0)
    result = agent.search(env, n_uniform + n_greedy + 4, rec)
    phases = [r.phase for r in rec.records]
    assert phases == (
        ["demo_uniform"] * n_uniform
        + ["demo_scan"] * (n_greedy - 1)
        + ["demo_greedy", "warmup", "explore", "explore", "exploit"]
    )
    legal = [r for r in rec.records if r.phase.startswith("demo") and r.eligible]
    best_demo = max(legal, key=lambda r: r.reward)
    assert env.reference == Policy.from_dict(best_demo.policy, env.graph)
    assert agent.model is not None
    # Every legal demonstration is in the buffer, before the learner's own episodes, with its reward back-filled.
    buffer = agent.model.replay_buffer
    n = env.n_units
    for i, r in enumerate(legal):
        assert buffer.rewards[i * n : (i + 1) * n, 0] == pytest.approx([r.reward] * n)
        actions = env.actions_for(
            *(np.array(x) for x in (lambda p: (p.kept, p.w_bits, p.a_bits))(Policy.from_dict(r.policy, env.graph)))
        )
        assert buffer.actions[i * n : (i + 1) * n, 0] == pytest.approx(actions)
    # best_of=learner: the best comes from the learner's own episodes even where a demonstration scored higher.
    assert result.best is not None and result.best.phase in ("warmup", "explore", "exploit")
    assert learner_best(result.episodes)["episode"] == result.best.episode


def test_same_seed_same_ddpg_search() -> None:
    runs = [ddpg(warmup=2, seed=5).search(small_env(), 5).episodes for _ in range(2)]
    strip = [[{k: v for k, v in row.items() if k not in ("seconds", "cached")} for row in rows] for rows in runs]
    assert strip[0] == strip[1]


def test_uniform_candidate_is_legal_unclipped_and_the_largest() -> None:
    env = small_env()
    agent = UniformSearch()
    agent.setup(env, 10)
    ratio, bits = agent.candidates[0]
    config = env.uniform_config(ratio, bits)
    assert env.wall.feasible(*config)
    run_episode(env, actions_for(env, *config), legal=True)
    assert np.array_equal(env.kept, config[0]) and np.array_equal(env.w, config[1])
    bigger = env.uniform_config(min(1.0, ratio + 0.02), bits)
    assert not np.array_equal(bigger[0], config[0]) and not env.wall.feasible(*bigger)


def test_agents_refuse_bad_episode_counts() -> None:
    with pytest.raises(AmcError, match="episodes=0 must be positive"):
        RandomSearch().validate(0)
    with pytest.raises(AmcError, match=r"agent.warmup \(10\) \+ agent.exploit \(0\) episodes leave none to learn"):
        DDPGAgent(warmup=10, exploit=0).validate(10)
    greedy = GreedySearch(keep_levels=[0.5], bit_levels=[4])
    n = greedy.episodes_needed(small_env())
    with pytest.raises(AmcError, match=rf"demonstrations \({n} episodes\).* raise episodes to at least {n + 2}"):
        DDPGAgent(demos=[greedy], warmup=1, exploit=0, demo_budget=1.0).setup(small_env(), n + 1)
    # A demonstration larger than demo_budget of the episodes is skipped, not an error.
    agent = DDPGAgent(demos=[UniformSearch(), GreedySearch(keep_levels=[0.5], bit_levels=[4])], warmup=1)
    agent.setup(small_env(), 2 * n - 1)
    assert [d.name for d in agent.demos] == ["uniform"]
    # 15: activation bits cost nothing under a size+MACs budget, so only weight bits and channels are scanned.
    with pytest.raises(AmcError, match="greedy needs 15 episodes"):
        GreedySearch(keep_levels=[0.5], bit_levels=[4]).setup(small_env(), 10)
    with pytest.raises(AmcError, match="PPO has no warm-up"):
        PPOAgent(warmup=2).validate(10)


class _Stop(Exception):
    pass


class _StopAt(SearchCallback):
    """Interrupts a search right after the safe point at ``episode`` (after the checkpoint was written)."""

    def __init__(self, episode: int) -> None:
        self.episode = episode

    def on_safe_point(self, agent: Agent, episodes_done: int) -> None:
        if episodes_done == self.episode:
            raise _Stop("stopped at a safe point")


RESUMABLE = {
    "ddpg": (lambda: DDPGAgent(warmup=2, exploit=2, seed=3), 9, 4),
    "ddpg_demos": (lambda: DDPGAgent(demos=[UniformSearch()], warmup=1, exploit=1, seed=3), 9, 1),
    "ddpg_reanchor": (lambda: DDPGAgent(warmup=2, exploit=1, reanchor_every=2, sigma=0.5, seed=3), 10, 5),
    "ddpg_probe_anchor": (lambda: DDPGAgent(warmup=2, exploit=1, probe=True, anchor=2.5, seed=3), 9, 1),
    "ddpg_probe_mid": (lambda: DDPGAgent(warmup=2, exploit=1, probe=True, reanchor_every=2, seed=3), 10, 4),
    "td3": (lambda: TD3Agent(warmup=2, exploit=2, seed=3), 9, 8),
    "sac": (lambda: SACAgent(warmup=2, exploit=2, seed=3), 9, 4),
    "ppo": (lambda: PPOAgent(warmup=0, exploit=1, episodes_per_rollout=2, seed=3), 9, 4),
    "random": (lambda: RandomSearch(seed=3), 7, 4),
}


@pytest.mark.parametrize("name", list(RESUMABLE))
def test_saved_state_continues_like_an_uninterrupted_search(name: str, tmp_path: Path) -> None:
    """Interrupted at a checkpoint (after a demonstration, mid-learning or mid-exploitation), then resumed."""
    make, total, stop = RESUMABLE[name]
    straight = make().search(small_env(), total).episodes

    env = small_env()
    first = make()
    with pytest.raises(_Stop, match=r"^stopped at a safe point$"):
        first.search(
            env, total, CallbackList([Checkpointer(tmp_path / "checkpoints", every=1, env=env), _StopAt(stop)])
        )
    np.random.seed(123), torch.manual_seed(123)  # whatever happens in between must not matter
    env2 = small_env()
    resumed = make()
    ckpt = latest_checkpoint(tmp_path)
    resumed.load(ckpt, env2, total)
    restore_rng(ckpt, env2)
    rest = resumed.search(env2, total).episodes
    strip = [
        [{k: v for k, v in row.items() if k not in ("seconds", "cached")} for row in rows] for rows in (straight, rest)
    ]
    assert strip[0] == strip[1]


def test_probe_measures_the_reference_first_and_only_when_no_demonstration_did() -> None:
    env, rec = small_env(), Recorder()
    reference = env.reference
    agent = DDPGAgent(warmup=2, exploit=1, probe=True, seed=0)
    agent.search(env, 6, rec)
    assert [r.phase for r in rec.records] == ["probe", "warmup", "warmup", "explore", "explore", "exploit"]
    assert rec.records[0].policy is not None and Policy.from_dict(rec.records[0].policy, env.graph) == reference
    assert rec.records[0].extras["sigma"] == 0.0
    # A demonstration measured a legal configuration: the probe would replay its result as the learner's.
    env, rec = small_env(), Recorder()
    DDPGAgent(demos=[UniformSearch()], warmup=1, exploit=1, probe=True, seed=0).search(env, 6, rec)
    assert "probe" not in [r.phase for r in rec.records]


def test_warmup_end_recentres_on_the_best_episode_and_reexpresses_the_buffer() -> None:
    env, rec = small_env(), Recorder()
    agent = DDPGAgent(warmup=4, exploit=0, seed=0, sigma=0.0)  # no noise: the first learner episode is the actor's
    agent.search(env, 5, rec)
    warm = [r for r in rec.records if r.phase == "warmup"]
    best = max((r for r in warm if r.eligible), key=lambda r: r.reward)
    assert env.reference == Policy.from_dict(best.policy, env.graph)
    assert env.reference != small_env().reference  # it moved away from the uniform policy
    # The actor restarted at the new centre: the first learner episode replays the best warm-up policy.
    assert rec.records[4].phase == "explore" and rec.records[4].policy == best.policy
    # Every stored episode is expressed in the new action mapping (replayed configurations, rewards back-filled).
    assert agent.model is not None
    buffer, n = agent.model.replay_buffer, env.n_units
    for i, r in enumerate(warm):
        p = Policy.from_dict(r.policy, env.graph)
        assert buffer.actions[i * n : (i + 1) * n, 0] == pytest.approx(env.actions_for(p.kept, p.w_bits, p.a_bits))
        assert buffer.rewards[i * n : (i + 1) * n, 0] == pytest.approx([r.reward] * n)


def test_reanchor_every_recentres_on_each_new_best() -> None:
    env, rec = small_env(), Recorder()
    agent = DDPGAgent(warmup=2, exploit=0, reanchor_every=2, sigma=0.5, seed=1)
    refs = []

    class Watch(SearchCallback):
        def on_safe_point(self, agent: Agent, episodes_done: int) -> None:
            refs.append((episodes_done, env.reference))

    agent.search(env, 12, CallbackList([rec, Watch()]))
    # At every re-centring point the reference is the best legal episode so far.
    for done, ref in refs:
        if done >= 2 and (done - 2) % 2 == 0:
            legal = [r for r in rec.records[:done] if r.eligible]
            best = max(legal, key=lambda r: r.reward)
            assert ref == Policy.from_dict(best.policy, env.graph) or best.reward == max(
                r.reward for r in legal if Policy.from_dict(r.policy, env.graph) == ref
            )
    assert len({str(r) for _, r in refs}) >= 2  # it moved at least once


def test_callback_list_adds_up_the_seconds_of_each_callback() -> None:
    import time

    class Slow(SearchCallback):
        def on_episode(self, agent: Agent, record: EpisodeRecord, is_best: bool) -> None:
            time.sleep(0.02)

    env, rec = small_env(), Recorder()
    callbacks = CallbackList([rec, Slow()])
    RandomSearch(seed=0).search(env, 3, callbacks)
    assert set(callbacks.seconds) == {"Recorder", "Slow"}
    assert callbacks.seconds["Slow"] >= 3 * 0.02 and 0 <= callbacks.seconds["Recorder"] < callbacks.seconds["Slow"]
