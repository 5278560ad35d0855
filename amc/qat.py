"""Quantization-aware training: fake-quantized weights with a straight-through estimator, and activation ranges.

:func:`prepare_qat` makes every unit with quantized weights re-quantize its float (shadow) weights on
each forward pass (:class:`WeightFakeQuant`, a ``torch.nn.utils.parametrize`` parametrization), so the
layer computes with the weights the policy's bits give while gradients reach the float weights;
:func:`strip_qat` leaves plain, quantized parameters again. Activations are quantized by the existing
:class:`amc.quantize.ActivationQuantizer` hooks; :func:`calibrate_activations` re-measures their ranges.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from amc.cost import FP32
from amc.graph import ModelGraph
from amc.quantize import activation_quantizers, calibrate_ranges, quantize_weight


class WeightFakeQuant(nn.Module):
    """Parametrization: the layer sees quantized weights, gradients reach the float shadow weights (STE).

    Args:
        bits: weight bits.
        symmetric: symmetric or asymmetric quantization (as the search used).
    """

    def __init__(self, bits: int, symmetric: bool = True) -> None:
        super().__init__()
        self.bits, self.symmetric = int(bits), bool(symmetric)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (quantize_weight(w.detach(), self.bits, self.symmetric) - w).detach()


def prepare_qat(model: nn.Module, graph: ModelGraph, w_bits: list[int], symmetric: bool) -> None:
    """Make every unit with quantized weights re-quantize its float weights on each forward pass.

    Args:
        model: the compressed model (module names as in ``graph``).
        graph: the dense model's graph.
        w_bits: weight bits per unit.
        symmetric: quantization mode.
    """
    modules = dict(model.named_modules())
    for u, b in zip(graph.units, w_bits):
        if int(b) < FP32:
            parametrize.register_parametrization(modules[u.name], "weight", WeightFakeQuant(int(b), symmetric))


def strip_qat(model: nn.Module) -> None:
    """Replace every weight parametrization by its (quantized) value, leaving plain parameters."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)


def reinitialise(model: nn.Module) -> None:
    """Fresh weights for every layer (``reset_parameters``; BatchNorm statistics too), drawn from torch's RNG."""
    for m in model.modules():
        if hasattr(m, "reset_parameters") and not isinstance(m, WeightFakeQuant):
            m.reset_parameters()


def calibrate_activations(model: nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-measure the ranges of ``model``'s activation quantizers on ``batches`` (eval mode)."""
    qs = list(activation_quantizers(model).values())
    if not qs:
        return
    for q in qs:
        q.max_abs, q.signed = 0.0, False
    calibrate_ranges(model, qs, batches)
