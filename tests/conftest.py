"""Shared test fixtures and small models that the built-in zoo does not cover."""

from __future__ import annotations

import torch
from torch import nn

torch.set_num_threads(1)


class ConcatNet(nn.Module):
    """Two branches concatenated on channels, then a conv and a classifier: the concat case for the graph."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 12, 3, padding=1)
        self.bna = nn.BatchNorm2d(12)
        self.b = nn.Conv2d(8, 6, 1)
        self.mix = nn.Conv2d(18, 16, 3, stride=2, padding=1)
        self.bnm = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.cat([torch.relu(self.bna(self.a(x))), torch.relu(self.b(x))], dim=1)
        x = torch.relu(self.bnm(self.mix(x)))
        return self.fc(x.mean(dim=(2, 3)))


class FlattenNet(nn.Module):
    """Conv features flattened into a linear layer (the multiplier case) with a depthwise conv in between."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 16, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.pw = nn.Conv2d(16, 8, 1)
        self.fc1 = nn.Linear(8 * 14 * 14, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.bn(self.dw(x)))
        x = torch.relu(self.pw(x))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))
