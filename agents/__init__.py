"""Search agents behind one interface: SB3 DDPG set up AMC-style, and the random, uniform and greedy baselines.

``agent.search(env, episodes, callback) -> SearchResult`` for every agent; ``conf/agent/*.yaml`` picks
one (``agent=ddpg|random|uniform|greedy``).
"""

from amc.agents.base import Agent, CallbackList, EpisodeRecord, SearchCallback, SearchResult
from amc.agents.baselines import GreedySearch, RandomSearch, UniformSearch
from amc.agents.buffers import EpisodeRewardReplayBuffer
from amc.agents.ddpg import DDPGAgent, TD3Agent
from amc.agents.ilp import ILPSearch
from amc.agents.noise import TruncatedNormalNoise
from amc.agents.policies import ActorCriticLrPolicy, ScaledLrAdam
from amc.agents.sb3 import PPOAgent, SACAgent, SB3Agent, learner_best

__all__ = [
    "ActorCriticLrPolicy",
    "Agent",
    "CallbackList",
    "DDPGAgent",
    "EpisodeRecord",
    "EpisodeRewardReplayBuffer",
    "GreedySearch",
    "ILPSearch",
    "RandomSearch",
    "ScaledLrAdam",
    "SearchCallback",
    "SearchResult",
    "PPOAgent",
    "SACAgent",
    "SB3Agent",
    "TD3Agent",
    "TruncatedNormalNoise",
    "UniformSearch",
    "learner_best",
]
