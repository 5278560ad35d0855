"""Layer descriptions the hardware model reads, and their lowering to a grouped matrix multiply.

The compressible-layer graph (:mod:`amc.graph`) hands over duck-typed "unit" objects; :class:`LayerSpec`
names the attributes used here and :class:`Layer` is a plain implementation for tests and hand-written
models. :func:`lower` turns one (possibly pruned) layer into a :class:`Gemm`: ``groups`` independent
matrix multiplies of a ``P x K`` input matrix by a ``K x M`` weight matrix, where

* ``P = N * E * F`` (batch times output pixels),
* ``K = (C_in / g) * R * S`` (the reduction: input channels per group times the kernel window),
* ``M = C_out / g`` (output channels per group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from amc.errors import AmcError

#: Bit widths a query may ask for: integer 1..16 (the search's range, ``env.w_bits``/``env.a_bits``), or 32
#: for "unquantized" (the accelerator's native format). A preset that cannot run a width says so by its
#: ``max_bits`` (the environment refuses wider bit ranges, naming the preset).
VALID_BITS: tuple[int, ...] = (*range(1, 17), 32)
#: The bit axis :func:`amc.hardware.tables.build_table` tabulates by default (HAQ's 1..8, and float).
TABLE_BITS: tuple[int, ...] = (*range(1, 9), 32)
#: The value meaning "not quantized".
FLOAT_BITS = 32


@runtime_checkable
class LayerSpec(Protocol):
    """The attributes of a compressible layer (``nn.Conv2d`` or ``nn.Linear``) the cost model reads.

    Attributes:
        kind: ``"conv"`` or ``"linear"``.
        in_channels: dense input channels (features).
        out_channels: dense output channels (features).
        kernel_size: (R, S); (1, 1) for linear.
        stride: (stride_h, stride_w); (1, 1) for linear.
        groups: convolution groups; 1 for linear.
        in_hw: input spatial size; (1, 1) for linear.
        out_hw: output spatial size (E, F); (1, 1) for linear.
        depthwise: one filter per channel (groups == in_channels == out_channels).
        name: the module's name, for reports and table checks.
    """

    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    depthwise: bool
    name: str


@dataclass(frozen=True)
class Layer:
    """A plain :class:`LayerSpec`; see there for the fields."""

    kind: str
    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    groups: int = 1
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)
    depthwise: bool = False
    name: str = "layer"

    @classmethod
    def conv(
        cls,
        in_channels: int,
        out_channels: int,
        kernel: int,
        out_hw: int | tuple[int, int],
        *,
        stride: int = 1,
        groups: int = 1,
        in_hw: int | tuple[int, int] | None = None,
        name: str = "conv",
    ) -> Layer:
        """A square-kernel convolution; ``in_hw`` defaults to the 'same'-padding size ``out_hw * stride``.

        Args:
            in_channels: input channels.
            out_channels: output channels.
            kernel: kernel size (square).
            out_hw: output size (int for square).
            stride: stride on both axes.
            groups: convolution groups; ``groups == in == out`` makes it depthwise.
            in_hw: input size; only used for input traffic.
            name: layer name.
        """
        out = (out_hw, out_hw) if isinstance(out_hw, int) else tuple(out_hw)
        if in_hw is None:
            inp = (out[0] * stride, out[1] * stride)
        else:
            inp = (in_hw, in_hw) if isinstance(in_hw, int) else tuple(in_hw)
        depthwise = groups > 1 and groups == in_channels == out_channels
        return cls(
            "conv",
            in_channels,
            out_channels,
            (kernel, kernel),
            (stride, stride),
            groups,
            (int(inp[0]), int(inp[1])),
            (int(out[0]), int(out[1])),
            depthwise,
            name,
        )

    @classmethod
    def linear(cls, in_features: int, out_features: int, *, name: str = "fc") -> Layer:
        """A fully connected layer.

        Args:
            in_features: input features.
            out_features: output features.
            name: layer name.
        """
        return cls("linear", in_features, out_features, name=name)


@dataclass(slots=True)
class Gemm:
    """One layer lowered to ``groups`` matrix multiplies of (P x K) by (K x M).

    Attributes:
        groups: independent multiplies (convolution groups).
        p: rows of the input matrix: batch x output pixels.
        k: reduction length per group: (C_in / g) x R x S.
        m: output channels per group.
        n: batch size.
        r: kernel height (1 for linear).
        s: kernel width.
        e: output height.
        f: output width.
        in_elems: elements of the (pruned) input tensor for the whole batch.
        out_elems: elements of the (pruned) output tensor for the whole batch.
        w_elems: weight elements (no bias).
        macs: useful multiply-accumulates, ``groups * p * k * m``.
    """

    groups: int
    p: int
    k: int
    m: int
    n: int
    r: int
    s: int
    e: int
    f: int
    in_elems: int
    out_elems: int
    w_elems: int
    macs: int


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, slots=True)
class Geometry:
    """The parts of a unit the lowering needs, extracted once per unit (see :func:`geometry`).

    Attributes:
        name: layer name.
        r: kernel height.
        s: kernel width.
        e: output height (token count for a linear layer).
        f: output width.
        in_pixels: input positions per image.
        groups: dense convolution groups.
        depthwise: groups follow the kept channels.
    """

    name: str
    r: int
    s: int
    e: int
    f: int
    in_pixels: int
    groups: int
    depthwise: bool


def geometry(unit: LayerSpec) -> Geometry:
    """Extract a unit's static shape (validating its kind).

    Args:
        unit: the dense layer.
    """
    if unit.kind == "linear":
        # A linear layer applied to a token sequence reports its token count as ``positions``.
        tokens = int(getattr(unit, "positions", 1) or 1)
        return Geometry(str(unit.name), 1, 1, tokens, 1, tokens, 1, False)
    if unit.kind != "conv":
        raise AmcError(f"layer {unit.name!r} has kind {unit.kind!r}; the hardware model handles 'conv' and 'linear'")
    r, s = int(unit.kernel_size[0]), int(unit.kernel_size[1])
    e, f = int(unit.out_hw[0]), int(unit.out_hw[1])
    in_pixels = int(unit.in_hw[0]) * int(unit.in_hw[1])
    return Geometry(str(unit.name), r, s, e, f, in_pixels, max(1, int(unit.groups)), bool(unit.depthwise))


def lower_geometry(geo: Geometry, c_in: int, c_out: int, batch: int = 1) -> Gemm:
    """:func:`lower` for an already extracted :class:`Geometry` (the fast path of a cache miss)."""
    if c_in < 1 or c_out < 1:
        raise AmcError(f"layer {geo.name!r}: kept channels must be >= 1 (got c_in={c_in}, c_out={c_out})")
    if batch < 1:
        raise AmcError(f"batch={batch} is not positive; use a batch size >= 1")
    g = c_out if geo.depthwise else geo.groups
    k = -(-c_in // g) * geo.r * geo.s
    m = -(-c_out // g)
    p = batch * geo.e * geo.f
    return Gemm(
        g,
        p,
        k,
        m,
        batch,
        geo.r,
        geo.s,
        geo.e,
        geo.f,
        batch * geo.in_pixels * c_in,
        p * c_out,
        g * k * m,
        g * p * k * m,
    )


def lower(unit: LayerSpec, c_in: int, c_out: int, batch: int = 1) -> Gemm:
    """Lower a pruned layer to a grouped matrix multiply.

    For a depthwise unit the group count follows the kept channels (``groups = c_out``); for any other
    grouped convolution ``groups`` stays and each group gets ``ceil(c / groups)`` channels (PyTorch needs
    them to divide evenly; rounding up charges the largest group when they do not).

    Args:
        unit: the dense layer.
        c_in: input channels kept.
        c_out: output channels kept.
        batch: images per inference.

    Returns:
        The lowered shape.
    """
    return lower_geometry(geometry(unit), c_in, c_out, batch)


def round_channels(c: int, multiple: int, maximum: int | None = None) -> int:
    """Round a channel count up to a multiple (the accelerator's natural step), optionally capped.

    A 32-wide array spends the same cycles on 33 as on 64 output channels, so a pruned count is worth
    rounding up to the next multiple: the extra channels are free. The cap keeps the dense count when
    rounding would exceed it.

    Args:
        c: the channel count (>= 1).
        multiple: the step, e.g. :attr:`Accelerator.channel_multiple`.
        maximum: never return more than this (the layer's dense channel count).

    Returns:
        ``ceil(c / multiple) * multiple``, at most ``maximum``.
    """
    if c < 1 or multiple < 1:
        raise AmcError(f"round_channels needs c >= 1 and multiple >= 1 (got c={c}, multiple={multiple})")
    rounded = _ceil_div(int(c), int(multiple)) * int(multiple)
    return rounded if maximum is None else min(rounded, int(maximum))


def check_bits(bits: int, what: str = "bits") -> int:
    """Validate one bit width: 1..16, or 32 for "unquantized".

    Args:
        bits: the bit width.
        what: its name, for the error message.
    """
    if bits not in VALID_BITS:
        raise AmcError(f"{what}={bits!r} is not supported; use an integer in 1..16, or 32 for unquantized")
    return int(bits)


def layer_signature(unit: LayerSpec) -> dict[str, object]:
    """The shape fields of a unit as plain JSON data (used to check a lookup table belongs to a model).

    Args:
        unit: the layer.
    """
    return {
        "name": str(unit.name),
        "kind": str(unit.kind),
        "in_channels": int(unit.in_channels),
        "out_channels": int(unit.out_channels),
        "kernel_size": [int(x) for x in unit.kernel_size],
        "stride": [int(x) for x in unit.stride],
        "groups": int(unit.groups),
        "in_hw": [int(x) for x in unit.in_hw],
        "out_hw": [int(x) for x in unit.out_hw],
        "depthwise": bool(unit.depthwise),
    }
