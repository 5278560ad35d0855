"""VGG-16 (Simonyan and Zisserman, 2015), configuration D.

Two variants:

* ``"imagenet"``: the classic network for 224x224 inputs, 13 3x3 convs with biases, 7x7 adaptive average
  pooling and three fully connected layers 4096-4096-classes (15.5 G MACs, 138 M parameters). Optional
  BatchNorm after every conv (``batch_norm=True``, VGG-16-BN). Parameter names match torchvision's
  ``vgg16``/``vgg16_bn``, so their ImageNet state dicts load unchanged.
* ``"cifar"``: the common 32x32 adaptation: the same 13 convs, always with BatchNorm (and without conv
  biases, which BatchNorm makes redundant), global average pooling of the 512-channel map (1x1 at 32x32
  input after five max-pools) and a single linear classifier (313 M MACs, 14.7 M parameters).
"""

from __future__ import annotations

from torch import Tensor, nn

from amc.errors import AmcError
from amc.models.layers import ConvBNAct, init_weights

VARIANTS = ("imagenet", "cifar")

# Output channels of each conv; "M" is a 2x2 max-pool.
VGG16_CONFIG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


def _imagenet_features(in_channels: int, batch_norm: bool) -> nn.Sequential:
    # Flat Sequential of Conv, (BN), ReLU, MaxPool, as in torchvision, to keep its parameter names.
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        assert isinstance(item, int)
        layers.append(nn.Conv2d(channels, item, 3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(item))
        layers.append(nn.ReLU(inplace=True))
        channels = item
    return nn.Sequential(*layers)


def _cifar_features(in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        assert isinstance(item, int)
        layers.append(ConvBNAct(channels, item))
        channels = item
    return nn.Sequential(*layers)


class VGG16(nn.Module):
    """VGG-16 in its ImageNet or CIFAR form.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.
        variant: ``"imagenet"`` or ``"cifar"``.
        batch_norm: add BatchNorm after every conv (ImageNet variant only; CIFAR always has it).
        dropout: dropout probability between the ImageNet variant's fully connected layers.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        variant: str = "imagenet",
        batch_norm: bool = False,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise AmcError(f"vgg16 variant={variant!r} is unknown; use one of {', '.join(VARIANTS)}")
        self.flatten = nn.Flatten(1)
        if variant == "imagenet":
            self.features = _imagenet_features(in_channels, batch_norm)
            self.avgpool = nn.AdaptiveAvgPool2d(7)
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, 4096),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(4096, num_classes),
            )
            init_weights(self, linear_std=0.01)
        else:
            self.features = _cifar_features(in_channels)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Linear(512, num_classes))
            init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


def vgg16(
    num_classes: int = 10,
    in_channels: int = 3,
    variant: str = "imagenet",
    batch_norm: bool = False,
    dropout: float = 0.5,
) -> nn.Module:
    """Build VGG-16.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.
        variant: ``"imagenet"`` for 224x224 inputs or ``"cifar"`` for 32x32 inputs.
        batch_norm: add BatchNorm after every conv (ImageNet variant; the CIFAR variant always has it).
        dropout: dropout probability between the ImageNet variant's fully connected layers.

    Returns:
        The model, freshly initialised.
    """
    return VGG16(num_classes, in_channels, variant, batch_norm, dropout)
