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


class SENet(nn.Module):
    """Conv + squeeze-and-excitation (the block's gate multiplies every channel) + conv + classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.se_pool = nn.AdaptiveAvgPool2d(1)
        self.se_fc1 = nn.Conv2d(16, 4, 1)
        self.se_fc2 = nn.Conv2d(4, 16, 1)
        self.c2 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.c1(x)))
        gate = torch.sigmoid(self.se_fc2(torch.relu(self.se_fc1(self.se_pool(x)))))
        x = torch.relu(self.c2(x * gate))
        return self.fc(x.mean(dim=(2, 3)))


class MLP(nn.Module):
    """Linear layers only (no convolution)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_channels * 28 * 28, 64)
        self.fc2 = nn.Linear(64, 32)
        self.fc3 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(self.flatten(x))))))


class Swish(nn.Module):
    """A custom parameter-free op (not a layer amc knows)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class CustomOpNet(nn.Module):
    """Convs with non-compressible custom ops (an elementwise op and a channel shuffle) between them."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, shuffle: bool = False) -> None:
        super().__init__()
        self.shuffle = shuffle
        self.c1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.act = Swish()
        self.c2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c1(x))
        if self.shuffle:  # ShuffleNet's channel shuffle: a fixed permutation of channels between groups
            n, c, h, w = x.shape
            x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = torch.relu(self.c2(x))
        return self.fc(x.mean(dim=(2, 3)))


class GroupedNet(nn.Module):
    """A grouped conv with groups (2) != channels between two ordinary convs."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.g = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.g(torch.relu(self.c1(x))))
        return self.fc(torch.relu(self.c3(x)).mean(dim=(2, 3)))


class TwiceUsed(nn.Module):
    """One conv module called twice in forward (weights shared between two positions)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.shared = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.shared(torch.relu(self.shared(torch.relu(self.c1(x)))))
        return self.fc(x.mean(dim=(2, 3)))


# The three models of ../shared/cases/any_model/odd_models.py (issue #15), as a new user wrote them.
class SpatialAttnNet(nn.Module):
    """A 1-output-channel conv used as a spatial attention map multiplied into 16-channel features."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.att = nn.Conv2d(16, 1, 1)
        self.c2 = nn.Conv2d(16, 24, 3, stride=2, padding=1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = x * torch.sigmoid(self.att(x))
        x = torch.relu(self.c2(x))
        return self.fc(x.mean(dim=(2, 3)))


class HardViewNet(nn.Module):
    """Conv features flattened with a hard-coded size (x.view(n, 16*7*7)) into a linear layer."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 16, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(16 * 7 * 7, 32)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = x.view(x.size(0), 16 * 7 * 7)
        return self.fc2(torch.relu(self.fc1(x)))


class AuxHeadNet(nn.Module):
    """Inception-style: training-mode forward returns (logits, aux_logits); eval mode returns logits."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(in_channels, 16, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.aux = nn.Linear(16, num_classes)
        self.c2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.bn1(self.c1(x)))
        aux = self.aux(x.mean(dim=(2, 3))) if self.training else None
        x = torch.relu(self.bn2(self.c2(x)))
        out = self.fc(x.mean(dim=(2, 3)))
        return (out, aux) if aux is not None else out


class NoArgNet(nn.Module):
    """A user's model whose constructor takes neither num_classes nor in_channels."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.c1(x)).mean(dim=(2, 3)))
