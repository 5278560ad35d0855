"""The seeded search split: a fixed held-out part of the training set, drawn with its own generator."""

from __future__ import annotations

import torch
from torch import Tensor

from amc.errors import AmcError


def split_indices(n: int, search_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Split ``range(n)`` into a training part and a search part of ``search_size`` elements.

    The split depends only on ``(n, search_size, seed)`` and uses its own generator.

    Args:
        n: size of the training set.
        search_size: how many indices go to the search part (``0 <= search_size < n``).
        seed: the split seed.

    Returns:
        ``(train_indices, search_indices)``, each a sorted int64 tensor.

    Raises:
        AmcError: ``search_size`` is negative or leaves no training image.
    """
    if search_size < 0 or search_size >= n:
        raise AmcError(
            f"search_size={search_size} does not fit a training set of {n} images: "
            f"set data.search_size between 0 and {n - 1}"
        )
    generator = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(n, generator=generator)
    return perm[search_size:].sort().values, perm[:search_size].sort().values
