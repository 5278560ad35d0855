"""ImageNet ResNet-50 (He et al., 2016, Table 1): bottleneck blocks [3, 4, 6, 3], 25.6 M parameters.

Written in plain PyTorch (no torchvision) with the layout of the paper's v1.5 variant (stride on the
3x3 conv of a bottleneck, as in most public checkpoints) and projection shortcuts where shapes change.
Every block owns its activations, so each module is called once per forward pass (see
:mod:`amc.models.layers`). Global average pooling makes it input-size agnostic; small inputs only
shrink the final feature map.
"""

from __future__ import annotations

from torch import Tensor, nn

from amc.models.layers import init_weights


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), plus an identity or projection shortcut.

    Args:
        in_channels: input channels.
        width: channels of the 1x1/3x3 convs (the output has ``4 * width``).
        stride: stride of the 3x3 conv.
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out)
            )
        self.relu3 = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu1(self.bn1(self.conv1(x)))
        y = self.relu2(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu3(y + self.shortcut(x))


class ResNetImageNet(nn.Module):
    """ImageNet-style ResNet with bottleneck blocks.

    Args:
        blocks: blocks per stage.
        num_classes: classifier outputs.
        in_channels: input channels.
    """

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        layers: list[nn.Module] = []
        channels = 64
        for stage, n in enumerate(blocks):
            width = 64 * 2**stage
            for i in range(n):
                layers.append(Bottleneck(channels, width, stride=2 if stage > 0 and i == 0 else 1))
                channels = width * Bottleneck.expansion
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


def resnet50(num_classes: int = 10, in_channels: int = 3) -> ResNetImageNet:
    """ResNet-50: bottleneck stages of 3, 4, 6 and 3 blocks."""
    return ResNetImageNet((3, 4, 6, 3), num_classes, in_channels)
