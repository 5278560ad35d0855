"""CIFAR-style ResNets and their plain (shortcut-free) counterpart (He et al., 2016, section 4.2).

The networks have a 3x3 stem with 16 channels followed by three stages of ``n`` basic blocks with 16, 32
and 64 channels; the first block of stages two and three halves the resolution. Depth is ``6n + 2``:
ResNet-20/32/56 use ``n = 3/5/9``. Global average pooling before the classifier makes the networks
input-size agnostic, so ``in_channels=1`` on 28x28 images is the Fashion-MNIST variant.

Shortcuts that change shape use option B of the paper (a 1x1 stride-2 conv plus BatchNorm projection)
instead of option A (stride-2 subsampling plus zero-padding of the new channels): torch-pruning cannot
trace the zero-padding of option A into its dependency graph, whereas a projection conv is an ordinary
prunable layer. This adds about 2.7 k parameters to ResNet-20 (0.272 M instead of the paper's 0.27 M).

``plain20`` is the same network with every shortcut removed, i.e. a 20-layer VGG-style stack; comparing
it with ``resnet20`` shows how residual adds couple channels into shared pruning groups.
"""

from __future__ import annotations

from torch import Tensor, nn

from amc.errors import AmcError
from amc.models.layers import ConvBNAct, init_weights


class BasicBlock(nn.Module):
    """Two 3x3 Conv-BN layers with an optional identity or projection shortcut.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the first conv (2 to downsample).
        residual: add the shortcut; ``False`` gives the block of a plain network.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if residual and (stride != 1 or in_channels != out_channels):
            # Option B projection; see the module docstring for why not option A.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        # `residual` is a constructor flag, not a tensor value, so tracing sees a fixed graph.
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu2(out)


class CifarResNet(nn.Module):
    """A ``6n + 2``-layer CIFAR ResNet (or plain network when ``residual=False``).

    Args:
        blocks_per_stage: ``n``, the number of basic blocks in each of the three stages.
        num_classes: number of output logits.
        in_channels: input image channels.
        residual: use shortcut connections.
        widths: channels of the three stages.
    """

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        in_channels: int = 3,
        residual: bool = True,
        widths: tuple[int, int, int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if blocks_per_stage < 1:
            raise AmcError(f"blocks_per_stage={blocks_per_stage} must be at least 1")
        self.stem = ConvBNAct(in_channels, widths[0])
        stages: list[nn.Module] = []
        channels = widths[0]
        for stage_index, width in enumerate(widths):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(channels, width, stride, residual))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


def _depth_to_blocks(depth: int) -> int:
    if depth < 8 or (depth - 2) % 6:
        raise AmcError(f"CIFAR ResNet depth={depth} is invalid; use 6n+2, e.g. 20, 32, 44, 56 or 110")
    return (depth - 2) // 6


def cifar_resnet(depth: int, num_classes: int = 10, in_channels: int = 3, residual: bool = True) -> nn.Module:
    """Build a CIFAR ResNet (or plain network) of any valid depth ``6n + 2``.

    Args:
        depth: total number of weighted layers, ``6n + 2``.
        num_classes: number of output logits.
        in_channels: input image channels.
        residual: use shortcut connections; ``False`` gives the plain network.

    Returns:
        The model, freshly initialised.
    """
    return CifarResNet(_depth_to_blocks(depth), num_classes, in_channels, residual)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-20 for 32x32 (or 28x28) images: about 0.27 M parameters and 41 M MACs at 3x32x32.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.

    Returns:
        The model, freshly initialised.
    """
    return cifar_resnet(20, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-32: about 0.47 M parameters.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.

    Returns:
        The model, freshly initialised.
    """
    return cifar_resnet(32, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-56: about 0.86 M parameters.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.

    Returns:
        The model, freshly initialised.
    """
    return cifar_resnet(56, num_classes, in_channels)


def plain20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Plain-20: ResNet-20 without shortcuts, so every conv is its own pruning group.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.

    Returns:
        The model, freshly initialised.
    """
    return cifar_resnet(20, num_classes, in_channels, residual=False)
