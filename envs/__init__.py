"""The compression environment ``amc/Compression-v0`` and its parts (budget wall, features)."""

from amc.envs.compression import MODES, CompressionEnv, make_env
from gymnasium.envs.registration import register, registry

ENV_ID = "amc/Compression-v0"

if ENV_ID not in registry:
    register(id=ENV_ID, entry_point="amc.envs.compression:make")

__all__ = ["ENV_ID", "MODES", "CompressionEnv", "make_env"]
