"""Building blocks shared by the model zoo.

Every block creates its own activation and pooling modules so that no module instance is called twice in
a forward pass: torch-pruning's tracer and per-layer hooks (MAC counting, quantisation wrappers) key on
module identity, and a shared ``nn.ReLU`` would merge unrelated layers into one node.
"""

from __future__ import annotations

from torch import nn


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (the MobileNet convention).

    Rounding never goes more than 10% below ``value``, so width multipliers shrink layers roughly
    proportionally.

    Args:
        value: the unrounded channel count, e.g. ``32 * width_mult``.
        divisor: the multiple to round to.
        min_value: the smallest allowed result; defaults to ``divisor``.

    Returns:
        The rounded channel count.
    """
    if min_value is None:
        min_value = divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNAct(nn.Sequential):
    """``Conv2d -> BatchNorm2d -> activation`` with "same" padding for odd kernels.

    The conv has no bias because the following BatchNorm's shift makes it redundant.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size (odd).
        stride: convolution stride.
        groups: convolution groups (``in_channels`` for a depthwise conv).
        activation: ``"relu"``, ``"relu6"`` or ``None`` for a linear (projection) block.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: str | None = "relu",
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=kernel_size // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if activation == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif activation == "relu6":
            layers.append(nn.ReLU6(inplace=True))
        elif activation is not None:
            raise ValueError(f"unsupported activation {activation!r}")
        super().__init__(*layers)


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """Apply the standard initialisation: Kaiming-normal convs, unit BatchNorm.

    Args:
        model: the model whose submodules are initialised in place.
        linear_std: if given, linear weights are drawn from ``N(0, linear_std)`` (torchvision uses 0.01
            for the wide ImageNet heads of VGG and MobileNet); ``None`` keeps PyTorch's fan-in default,
            which suits narrow heads.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear_std is not None:
            nn.init.normal_(module.weight, 0.0, linear_std)
            nn.init.zeros_(module.bias)
