"""A small VGG-style CNN for Fashion-MNIST (1x28x28).

Layout (channels, spatial size at 28x28 input)::

    conv 16 @28 -> maxpool -> conv 32 @14 -> conv 32 @14 -> maxpool -> conv 64 @7 -> conv 64 @7
    -> global average pool -> linear 64->128 -> ReLU -> linear 128->classes

About 5.5 M MACs and 79 k parameters: cheap enough to evaluate many pruning policies per second on a CPU,
yet five Conv-BN-ReLU layers plus a hidden linear layer leave the agent a non-trivial search space. The
design follows the usual small BN CNNs that reach >= 90 % Fashion-MNIST test accuracy within a few SGD
epochs. The first conv is kept narrow because at full resolution it dominates the cost per channel.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from amc.errors import AmcError
from amc.models.layers import ConvBNAct, init_weights


class FmnistCNN(nn.Module):
    """Five Conv-BN-ReLU layers, two max-pools, global average pooling and a two-layer classifier.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.
        widths: output channels of the five convs.
        hidden: width of the hidden classifier layer.
        dropout: dropout probability before the last linear layer.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 32, 64, 64),
        hidden: int = 128,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise AmcError(f"fmnist_cnn widths={list(widths)} has {len(widths)} entries; give exactly 5 (one per conv)")
        c1, c2, c3, c4, c5 = (int(w) for w in widths)
        self.features = nn.Sequential(
            ConvBNAct(in_channels, c1),
            nn.MaxPool2d(2),
            ConvBNAct(c1, c2),
            ConvBNAct(c2, c3),
            nn.MaxPool2d(2),
            ConvBNAct(c3, c4),
            ConvBNAct(c4, c5),
        )
        # Global pooling keeps the classifier tiny and makes the model accept any input size.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            nn.Linear(c5, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """Return logits of shape ``(batch, num_classes)``."""
        return self.classifier(self.flatten(self.pool(self.features(x))))


def fmnist_cnn(
    num_classes: int = 10,
    in_channels: int = 1,
    widths: Sequence[int] = (16, 32, 32, 64, 64),
    hidden: int = 128,
    dropout: float = 0.2,
) -> nn.Module:
    """Build the Fashion-MNIST CNN (about 5.5 M MACs at 1x28x28).

    ``in_channels`` defaults to 1 (not 3 like the other factories) because the network is meant for
    grayscale Fashion-MNIST.

    Args:
        num_classes: number of output logits.
        in_channels: input image channels.
        widths: output channels of the five convs.
        hidden: width of the hidden classifier layer.
        dropout: dropout probability before the last linear layer.

    Returns:
        The model, freshly initialised.
    """
    return FmnistCNN(num_classes, in_channels, widths, hidden, dropout)
