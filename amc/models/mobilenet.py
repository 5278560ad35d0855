"""MobileNet-V1 (Howard et al., 2017) and MobileNet-V2 (Sandler et al., 2018).

Two input variants:

* ``"imagenet"``: the published 224x224 networks (MobileNet-V1: 569 M MACs, 4.2 M parameters;
  MobileNet-V2: 300 M MACs, 3.4-3.5 M parameters, the exact figure depending on whether BatchNorm scales
  are counted).
* ``"cifar"``: the common adaptation for 32x32 inputs (as in the widely used ``kuangliu/pytorch-cifar``
  models): the stem conv has stride 1 and, in MobileNet-V2, so does the first 24-channel stage, so the
  final feature map is 2x2 (V1) or 4x4 (V2) instead of collapsing to 1x1.

MobileNet-V2's parameter names match torchvision's ``mobilenet_v2``, so its ImageNet state dict loads
with ``load_state_dict`` (torchvision itself is not a dependency). Channel counts are scaled by
``width_mult`` and rounded to multiples of 8 with :func:`make_divisible`.
"""

from __future__ import annotations

from torch import Tensor, nn

from amc.errors import AmcError
from amc.models.layers import ConvBNAct, init_weights, make_divisible

VARIANTS = ("imagenet", "cifar")

# (output channels, stride) of MobileNet-V1's depthwise-separable blocks.
_V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)

# (expansion t, output channels c, repeats n, first stride s) of MobileNet-V2's stages.
_V2_STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _check_options(name: str, variant: str, width_mult: float) -> None:
    if variant not in VARIANTS:
        raise AmcError(f"{name} variant={variant!r} is unknown; use one of {', '.join(VARIANTS)}")
    if width_mult <= 0:
        raise AmcError(f"{name} width_mult={width_mult} must be positive, e.g. 1.0, 0.75 or 0.5")


class DepthwiseSeparable(nn.Sequential):
    """MobileNet-V1 block: depthwise 3x3 Conv-BN-ReLU followed by pointwise 1x1 Conv-BN-ReLU.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the depthwise conv.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            ConvBNAct(in_channels, in_channels, 3, stride=stride, groups=in_channels),
            ConvBNAct(in_channels, out_channels, 1),
        )


class MobileNetV1(nn.Module):
    """MobileNet-V1.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.
        variant: ``"imagenet"`` (224x224) or ``"cifar"`` (32x32, stride-1 stem).
        width_mult: channel multiplier (``alpha`` in the paper).
        dropout: dropout probability before the classifier (0 as in the paper).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        variant: str = "imagenet",
        width_mult: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_options("mobilenet_v1", variant, width_mult)
        channels = make_divisible(32 * width_mult)
        stem_stride = 2 if variant == "imagenet" else 1
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stride=stem_stride)]
        for out, stride in _V1_BLOCKS:
            out = make_divisible(out * width_mult)
            layers.append(DepthwiseSeparable(channels, out, stride))
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(channels, num_classes)
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        return self.classifier(self.dropout(self.flatten(self.pool(self.features(x)))))


class InvertedResidual(nn.Module):
    """MobileNet-V2 block: 1x1 expand (ReLU6), 3x3 depthwise (ReLU6), 1x1 linear projection.

    The input is added to the output when the block keeps resolution and channel count.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the depthwise conv.
        expand_ratio: hidden channels as a multiple of ``in_channels``; 1 skips the expand conv.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1, activation="relu6"))
        # The projection conv and its BatchNorm are separate entries (not a ConvBNAct) so that state-dict
        # keys match torchvision's MobileNet-V2 and its ImageNet weights load unchanged.
        layers += [
            ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden, activation="relu6"),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block."""
        # `use_residual` is fixed at construction, so the traced graph does not depend on tensor values.
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNet-V2.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.
        variant: ``"imagenet"`` (224x224) or ``"cifar"`` (32x32: stride-1 stem and first 24-channel stage).
        width_mult: channel multiplier.
        dropout: dropout probability before the classifier.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        variant: str = "imagenet",
        width_mult: float = 1.0,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        _check_options("mobilenet_v2", variant, width_mult)
        cifar = variant == "cifar"
        channels = make_divisible(32 * width_mult)
        # The paper keeps the 1280-channel head at full width for multipliers below 1.
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, stride=1 if cifar else 2, activation="relu6")]
        for t, c, n, s in _V2_STAGES:
            out = make_divisible(c * width_mult)
            if cifar and c == 24:
                s = 1
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t))
                channels = out
        layers.append(ConvBNAct(channels, last_channels, 1, activation="relu6"))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        init_weights(self, linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        return self.classifier(self.flatten(self.pool(self.features(x))))


def mobilenet_v1(
    num_classes: int = 10, in_channels: int = 3, variant: str = "imagenet", width_mult: float = 1.0
) -> nn.Module:
    """Build MobileNet-V1.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.
        variant: ``"imagenet"`` for 224x224 inputs or ``"cifar"`` for 32x32 inputs.
        width_mult: channel multiplier.

    Returns:
        The model, freshly initialised.
    """
    return MobileNetV1(num_classes, in_channels, variant, width_mult)


def mobilenet_v2(
    num_classes: int = 10, in_channels: int = 3, variant: str = "imagenet", width_mult: float = 1.0
) -> nn.Module:
    """Build MobileNet-V2.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.
        variant: ``"imagenet"`` for 224x224 inputs or ``"cifar"`` for 32x32 inputs.
        width_mult: channel multiplier.

    Returns:
        The model, freshly initialised.
    """
    return MobileNetV2(num_classes, in_channels, variant, width_mult)
