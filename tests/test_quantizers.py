"""Level counts and ranges of the weight and activation quantizers, for every bit width they allow (2..16).

Inputs are dense ramps (2^17 + 1 values, finer than the 16-bit step), so every level of the grid is hit and
the count is exactly the grid's size: one bit too many or too few changes it.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from amc.cost import FP32
from amc.quantize import ActivationQuantizer, quantize_model, quantize_weight

BITS = list(range(2, 17))
N = 2**17 + 1


def _ramp(lo: float, hi: float) -> torch.Tensor:
    return torch.linspace(lo, hi, N, dtype=torch.float64).float()


@pytest.mark.parametrize("bits", BITS)
def test_symmetric_weights_have_2_pow_b_minus_1_levels_on_the_channel_max(bits: int) -> None:
    w = torch.stack([_ramp(-1.0, 1.0), _ramp(-0.3, 0.5)])
    q = quantize_weight(w, bits, symmetric=True)
    qmax = 2 ** (bits - 1) - 1
    for row, amax in zip(q, (1.0, 0.5)):
        levels = (row / (amax / qmax)).double()
        assert torch.allclose(levels, levels.round(), atol=1e-3)  # integer multiples of amax / qmax
        assert levels.max().round() == qmax and row.max().item() == pytest.approx(amax, rel=1e-6)
    assert len(q[0].unique()) == 2**bits - 1  # -qmax..qmax, zero included
    assert q[0].min().item() == pytest.approx(-1.0, rel=1e-6)
    # The second channel has its own scale (0.5 / qmax): -0.3 is 0.6 * qmax steps below zero (never a tie).
    assert len(q[1].unique()) == qmax + int(0.6 * qmax + 0.5) + 1


@pytest.mark.parametrize("bits", BITS)
def test_asymmetric_weights_have_2_pow_b_levels_over_min_to_max(bits: int) -> None:
    w = _ramp(-1.0, 3.0).unsqueeze(0)
    q = quantize_weight(w, bits, symmetric=False)[0]
    step = 4.0 / (2**bits - 1)
    assert len(q.unique()) == 2**bits
    assert q.min().item() == pytest.approx(-1.0, abs=step / 2 + 1e-6)
    assert q.max().item() == pytest.approx(3.0, abs=step / 2 + 1e-6)
    gaps = q.unique().diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, step), rtol=1e-3, atol=1e-6)


def _activation(bits: int, x: torch.Tensor) -> torch.Tensor:
    q = ActivationQuantizer(bits)
    assert q((None), (x,)) is None  # calibrating: passes through
    q.calibrating = False
    out = q(None, (x,))
    assert out is not None
    return out[0]


@pytest.mark.parametrize("bits", BITS)
def test_unsigned_activations_have_2_pow_b_levels_from_0_to_the_calibrated_max(bits: int) -> None:
    x = _ramp(0.0, 2.0)
    q = _activation(bits, x)
    assert len(q.unique()) == 2**bits
    assert q.min().item() == 0.0 and q.max().item() == pytest.approx(2.0, rel=1e-6)
    gaps = q.unique().diff()
    torch.testing.assert_close(gaps, torch.full_like(gaps, 2.0 / (2**bits - 1)), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("bits", BITS)
def test_signed_activations_have_2_pow_b_minus_1_symmetric_levels(bits: int) -> None:
    x = _ramp(-2.0, 2.0)
    q = _activation(bits, x)
    assert len(q.unique()) == 2**bits - 1
    assert q.min().item() == pytest.approx(-2.0, rel=1e-6) and q.max().item() == pytest.approx(2.0, rel=1e-6)


def test_activation_range_is_the_calibration_max_and_clips_beyond_it() -> None:
    q = ActivationQuantizer(4)
    q(None, (torch.tensor([0.0, 3.0]),))
    q(None, (torch.tensor([1.5, 0.5]),))  # a later, narrower batch does not shrink the range
    q.calibrating = False
    out = q(None, (torch.tensor([0.0, 0.11, 0.29, 3.0, 7.0]),))[0]
    torch.testing.assert_close(out, torch.tensor([0.0, 0.2, 0.2, 3.0, 3.0]))  # step 3/15, 7 clipped at 3
    signed = ActivationQuantizer(3)
    signed(None, (torch.tensor([-1.5, 3.0]),))
    signed.calibrating = False
    out = signed(None, (torch.tensor([-7.0, -3.0, -0.6, 0.4, 7.0]),))[0]
    torch.testing.assert_close(out, torch.tensor([-3.0, -3.0, -1.0, 0.0, 3.0]))  # narrow: -3..3 steps of 1


@pytest.mark.parametrize("bits", [0, 1])
def test_fewer_than_two_bits_are_refused(bits: int) -> None:
    with pytest.raises(ValueError, match=r"weight bits must be >= 2"):
        quantize_weight(torch.ones(2, 3), bits)
    with pytest.raises(ValueError, match=r"activation bits must be >= 2"):
        ActivationQuantizer(bits)


def test_float_bits_leave_weights_and_activations_unchanged() -> None:
    w = torch.randn(3, 5)
    assert quantize_weight(w, FP32) is w
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    before = [p.clone() for p in model.parameters()]
    hooks = quantize_model(model, ["0", "2"], [FP32, 4], [FP32, FP32], [torch.randn(8, 5)])
    assert hooks == [] and torch.equal(model[0].weight, before[0]) and not torch.equal(model[2].weight, before[2])
    # Per unit: 4-bit weights on the second layer only, 7 levels per output channel.
    assert all(len(row.unique()) <= 7 for row in model[2].weight)
