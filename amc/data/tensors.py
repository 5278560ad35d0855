"""In-memory image datasets as uint8 tensors: batched augmentation, a batch sampler and the dataset view.

The loaders of the small datasets (MNIST, Fashion-MNIST, CIFAR) hand whole batches of indices to the
dataset (:class:`BatchIndexSampler` instead of per-sample ``__getitem__``), and
:class:`InMemoryImageDataset` gathers, augments and normalises the batch with a few tensor ops.
Augmentation randomness comes from a per-batch seed drawn from the sampler's own generator, so results
do not depend on ``num_workers`` and no global RNG is touched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

Batch = tuple[Tensor, Tensor]


@dataclass(frozen=True)
class Augmentation:
    """Batched light augmentation on uint8 images: random crop after zero padding, optional h-flip.

    Attributes:
        pad: zero padding on each side before cropping back to the original size (0 disables cropping).
        flip: flip each image horizontally with probability 1/2.
    """

    pad: int = 0
    flip: bool = False

    @property
    def active(self) -> bool:
        """Whether this augmentation changes anything."""
        return self.pad > 0 or self.flip

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augment a ``B x C x H x W`` batch, drawing all randomness from ``generator``."""
        if not self.active or images.shape[0] == 0:
            return images
        b, c, h, w = images.shape
        p = self.pad
        src = torch.nn.functional.pad(images, (p, p, p, p)) if p else images
        oy = torch.randint(0, 2 * p + 1, (b, 1), generator=generator)
        ox = torch.randint(0, 2 * p + 1, (b, 1), generator=generator)
        rows = oy + torch.arange(h)
        cols = ox + torch.arange(w)
        if self.flip:
            flip = torch.rand(b, 1, generator=generator) < 0.5
            cols = torch.where(flip, cols.flip(1), cols)
        # One gather over the flattened padded image: ~4x faster than 4-D advanced indexing.
        index = (rows[:, :, None] * (w + 2 * p) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
        return src.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


class BatchRequest(NamedTuple):
    """What the batch sampler hands to :class:`InMemoryImageDataset`: positions and an augmentation seed."""

    positions: np.ndarray
    seed: int | None


class BatchIndexSampler(Sampler[BatchRequest]):
    """Yields whole batches of positions (optionally shuffled), each with its own augmentation seed.

    Every ``iter()`` is one epoch; the permutations and seeds come from a generator created from ``seed``,
    so two samplers with the same arguments give the same sequence of epochs.

    Args:
        n: dataset length.
        batch_size: positions per batch.
        shuffle: permute each epoch.
        drop_last: drop a last, smaller batch.
        seed: seed of the sampler's generator.
        seeded: attach a per-batch augmentation seed.
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, drop_last: bool, seed: int, seeded: bool) -> None:
        self.n, self.batch_size, self.shuffle, self.drop_last, self.seeded = (
            n,
            batch_size,
            shuffle,
            drop_last,
            seeded,
        )
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[BatchRequest]:
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        order_np = order.numpy()
        count = len(self)
        seeds = torch.randint(0, 2**62, (count,), generator=self.generator).tolist() if self.seeded else None
        for i in range(count):
            chunk = order_np[i * self.batch_size : (i + 1) * self.batch_size]
            yield BatchRequest(chunk, seeds[i] if seeds is not None else None)


class InMemoryImageDataset(Dataset):
    """A view of in-memory uint8 images that normalises (and optionally augments) on the fly.

    ``ds[i]`` gives one normalised ``C x H x W`` float image and its int label (never augmented);
    ``ds[BatchRequest(...)]``, ``ds[list]``, ``ds[slice]`` or ``ds[tensor]`` give a whole batch
    ``(B x C x H x W float, B int64)``; a :class:`BatchRequest` with a seed is augmented.

    Args:
        images: ``N x C x H x W`` uint8 tensor (shared, not copied).
        labels: ``N`` int64 tensor.
        indices: the positions of this view in ``images`` (``None``: all).
        mean: per-channel mean of pixel values scaled to [0, 1].
        std: per-channel standard deviation.
        augmentation: applied to seeded batch requests.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        indices: Tensor | None,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        augmentation: Augmentation | None = None,
    ) -> None:
        self.images, self.labels, self.indices = images, labels, indices
        std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) / std_t
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.indices) if self.indices is not None else len(self.images)

    def normalize(self, images: Tensor) -> Tensor:
        """Turn a uint8 ``B x C x H x W`` batch into normalised float32."""
        return torch.addcmul(self.shift, images.float(), self.scale)

    def batch(self, positions: Tensor | np.ndarray, generator: torch.Generator | None = None) -> Batch:
        """Gather, augment (when ``generator`` is given) and normalise the images at ``positions``.

        Args:
            positions: positions within this view.
            generator: randomness for the augmentation; ``None`` means no augmentation.
        """
        pos = torch.as_tensor(positions, dtype=torch.int64)
        if pos.numel() and (int(pos.min()) < -len(self) or int(pos.max()) >= len(self)):
            raise IndexError(f"positions out of range for a dataset of {len(self)} images")
        pos = pos % max(len(self), 1)
        rows = self.indices[pos] if self.indices is not None else pos
        images = self.images.index_select(0, rows)
        if generator is not None and self.augmentation is not None:
            images = self.augmentation(images, generator)
        return self.normalize(images), self.labels.index_select(0, rows)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, BatchRequest):
            gen = torch.Generator().manual_seed(key.seed) if key.seed is not None else None
            return self.batch(key.positions, gen)
        if isinstance(key, slice):
            return self.batch(torch.arange(len(self))[key])
        if isinstance(key, list | tuple | np.ndarray) or (isinstance(key, Tensor) and key.ndim > 0):
            return self.batch(torch.as_tensor(key))
        i = int(key)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)} images")
        x, y = self.batch(torch.tensor([i]))
        return x[0], int(y[0])
