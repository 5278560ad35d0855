"""amc: reinforcement-learning search of pruning and mixed-precision policies for PyTorch models."""

from amc.errors import AmcError

__all__ = ["AmcError"]
__version__ = "0.1.0"
