"""The inference-only activation fake-quantizer and one-pass range observer match PyTorch's ops exactly."""

from __future__ import annotations

import pytest
import torch

from amc.quantize import ActivationQuantizer, fake_quantize_no_grad


@pytest.mark.parametrize("qmin,qmax", [(0, 3), (0, 15), (0, 255), (-1, 1), (-7, 7), (-127, 127)])
def test_fake_quantize_no_grad_is_bit_identical_to_torch(qmin: int, qmax: int) -> None:
    gen = torch.Generator().manual_seed(qmax - qmin)
    for _ in range(50):
        x = torch.randn(4096, generator=gen) * float(torch.rand(1, generator=gen) * 10)
        scale = float(torch.rand(1, generator=gen)) * 0.3 + 1e-4
        ref = torch.fake_quantize_per_tensor_affine(x, scale, 0, qmin, qmax)
        assert torch.equal(fake_quantize_no_grad(x, scale, qmin, qmax), ref)


def test_observer_matches_abs_max_and_sign() -> None:
    gen = torch.Generator().manual_seed(0)
    for shift in (-3.0, 0.0, 3.0):
        q = ActivationQuantizer(4)
        batches = [torch.randn(8, 3, 5, 5, generator=gen) + shift for _ in range(3)]
        for x in batches:
            q.observe(x)
        every = torch.cat([b.flatten() for b in batches])
        assert q.max_abs == float(every.abs().max())
        assert q.signed == bool((every < 0).any())


def test_hook_gives_straight_through_gradients_when_training() -> None:
    q = ActivationQuantizer(2)
    q.observe(torch.tensor([0.0, 3.0]))
    q.calibrating = False
    x = torch.tensor([0.4, 1.2, 2.9, 5.0], requires_grad=True)
    (out,) = q(None, (x,))
    out.sum().backward()
    # 2 unsigned bits over [0, 3]: levels 0, 1, 2, 3; inside the range the gradient passes, outside it is 0.
    assert out.tolist() == [0.0, 1.0, 3.0, 3.0]
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 0.0]
    with torch.no_grad():
        (fast,) = q(None, (x.detach(),))
    assert torch.equal(fast, out.detach())
