"""Linear fake quantization of weights and activations with PyTorch's native fake-quantize ops.

- Weights: per output channel, symmetric by default (narrow range, so b bits give at most 2^b - 1
  levels), asymmetric as an option. Applied in place to a compressed copy.
- Activations: per tensor, on each unit's input, calibrated on calibration batches (max of |x|; in a
  search episode the first batch, see ``amc.compress.recalibrate_bn``); unsigned
  when calibration saw no negative value (e.g. after ReLU). Implemented as a forward pre-hook object
  that holds its own scale, so deep copies and ``state_dict`` stay plain. A *running* calibration
  quantizes each batch with the range seen so far, so every unit's range is measured on the inputs
  the quantized units before it produce (one pass for the whole network; ``recalibrate_bn`` uses it to
  measure ranges and BatchNorm statistics together).

``FP32`` (32) bits means "leave this tensor in float".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from amc.cost import FP32


def quantize_weight(w: torch.Tensor, bits: int, symmetric: bool = True) -> torch.Tensor:
    """Fake-quantize a weight tensor per output channel (dim 0) to ``bits`` bits.

    Args:
        w: the weight.
        bits: 2..16, or ``FP32`` to return ``w`` unchanged.
        symmetric: symmetric narrow range (zero point 0) or asymmetric min/max.
    """
    if bits >= FP32:
        return w
    if bits < 2:
        raise ValueError(f"weight bits must be >= 2, got {bits}")
    flat = w.detach().reshape(w.shape[0], -1).float()
    eps = torch.finfo(torch.float32).tiny
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = (flat.abs().amax(dim=1) / qmax).clamp_min(eps)
        zero = torch.zeros(w.shape[0], dtype=torch.int32)
        qmin = -qmax
    else:
        qmin, qmax = 0, 2**bits - 1
        lo = flat.amin(dim=1).clamp_max(0)
        hi = flat.amax(dim=1).clamp_min(0)
        scale = ((hi - lo) / qmax).clamp_min(eps)
        zero = torch.round(-lo / scale).clamp(qmin, qmax).to(torch.int32)
    out = torch.fake_quantize_per_channel_affine(w.float(), scale, zero.to(w.device), 0, qmin, qmax)
    return out.to(w.dtype)


def fake_quantize_no_grad(x: torch.Tensor, scale: float, qmin: int, qmax: int) -> torch.Tensor:
    """``torch.fake_quantize_per_tensor_affine(x, scale, 0, qmin, qmax)`` without the gradient mask.

    The same float32 arithmetic as PyTorch's CPU kernel (``clamp(nearbyint(x * (1/scale)), qmin, qmax) *
    scale``, the reciprocal taken in float32), so the result is bit-identical; it skips the mask that
    only backward needs and works in place on one output, about 3x faster on CPU. Inference only.

    Args:
        x: a float32 tensor (any shape).
        scale: the quantization step (> 0).
        qmin: smallest integer level.
        qmax: largest integer level.
    """
    scale32 = np.float32(scale)
    inv = float(np.float32(1.0) / scale32)
    return x.mul(inv).round_().clamp_(qmin, qmax).mul_(float(scale32))


class ActivationQuantizer:
    """Forward pre-hook that fake-quantizes a module's input per tensor.

    Args:
        bits: activation bits (``FP32``: pass through).
    """

    def __init__(self, bits: int) -> None:
        if int(bits) < 2:
            raise ValueError(f"activation bits must be >= 2, got {bits}")
        self.bits = int(bits)
        self.max_abs = 0.0
        self.signed = False
        self.calibrating = True
        self.running = False  # while calibrating: quantize with the range so far instead of passing through

    def observe(self, x: torch.Tensor) -> None:
        """Widen the calibrated range to cover ``x``."""
        # One pass for both (abs().amax() and (x < 0).any() made three, and temporaries): max|x| is
        # max(-min, max), and a negative value exists iff min < 0.
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        self.max_abs = max(self.max_abs, -lo, hi)
        self.signed = self.signed or lo < 0

    def __call__(self, _module: nn.Module, inputs: tuple) -> tuple | None:
        x = inputs[0]
        if self.calibrating:
            self.observe(x)
            if not self.running:
                return None
        if self.bits >= FP32 or self.max_abs == 0.0:
            return None
        if self.signed:
            qmin, qmax = -(2 ** (self.bits - 1) - 1), 2 ** (self.bits - 1) - 1
        else:
            qmin, qmax = 0, 2**self.bits - 1
        scale = self.max_abs / qmax
        if (torch.is_grad_enabled() and x.requires_grad) or x.dtype != torch.float32:  # QAT: straight-through
            return (torch.fake_quantize_per_tensor_affine(x, scale, 0, qmin, qmax), *inputs[1:])
        return (fake_quantize_no_grad(x, scale, qmin, qmax), *inputs[1:])


def quantize_model(
    model: nn.Module,
    unit_names: Sequence[str],
    w_bits: Sequence[int],
    a_bits: Sequence[int],
    calibration: Sequence[torch.Tensor] | None,
    symmetric: bool = True,
) -> list[torch.utils.hooks.RemovableHandle]:
    """Quantize the weights of every unit in place and attach calibrated activation quantizers.

    Returns the hook handles (``handle.remove()`` restores float activations).

    Args:
        model: a (compressed) model; modified in place.
        unit_names: module names of the units, in graph order.
        w_bits: weight bits per unit.
        a_bits: activation bits per unit.
        calibration: input batches for the activation ranges (a running calibration, see the module
            docstring); ``None`` leaves the quantizers calibrating, for the caller to calibrate them (as
            ``amc.compress.recalibrate_bn`` does, together with the BatchNorm statistics).
        symmetric: symmetric (default) or asymmetric weight quantization.
    """
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, wb in zip(unit_names, w_bits):
            if int(wb) < FP32:
                m = modules[name]
                m.weight.copy_(quantize_weight(m.weight, int(wb), symmetric))
    hooks: list[tuple[ActivationQuantizer, torch.utils.hooks.RemovableHandle]] = []
    for name, ab in zip(unit_names, a_bits):
        if int(ab) < FP32:
            q = ActivationQuantizer(int(ab))
            hooks.append((q, modules[name].register_forward_pre_hook(q)))
    if hooks and calibration is not None:
        calibrate_ranges(model, [q for q, _ in hooks], calibration, running=True)
    return [h for _, h in hooks]


def activation_quantizers(model: nn.Module) -> dict[str, ActivationQuantizer]:
    """The activation quantizers attached to ``model``'s modules, by module name."""
    out = {}
    for name, m in model.named_modules():
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, ActivationQuantizer):
                out[name] = hook
    return out


def calibrate_ranges(
    model: nn.Module,
    quantizers: Sequence[ActivationQuantizer],
    batches: Sequence[torch.Tensor],
    running: bool = False,
) -> None:
    """Measure the ranges of ``quantizers`` (attached to ``model``) on ``batches`` in eval mode, then freeze them.

    Args:
        model: the model the quantizers hook into (its train/eval mode is restored).
        quantizers: the activation quantizers, observing from now until the end of the pass.
        batches: input batches.
        running: quantize each batch with the range seen so far while measuring (the module docstring),
            instead of measuring every range on float inputs.
    """
    for q in quantizers:
        q.calibrating, q.running = True, running
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for x in batches:
            model(x)
    model.train(was_training)
    for q in quantizers:
        q.calibrating = q.running = False
