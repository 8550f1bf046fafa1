"""Fake quantization with LSQ gradients (Esser et al. 2020).

The forward pass is ``torch.fake_quantize_per_*_affine`` (``round(x * (1/s)
+ zp)``, clamped, dequantized), so the simulation and the exported
QuantizeLinear/DequantizeLinear pairs agree bit for bit. With gradients,
torch's fused learnable kernels give LSQ's backward pass: straight-through
rounding, a clipped input gradient, a step-size gradient scaled by
``grad_scale`` and the LSQ+ zero-point gradient (tests check both against the
formulas). One fused kernel per tensor instead of ~12 elementwise ops keeps
QAT's memory and time low.
"""
from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    grad_scale: float = 1.0,
    axis: int | None = None,
) -> torch.Tensor:
    """Fake-quantize ``x`` with ``scale``/``zero_point`` (per tensor, or per ``axis``).

    ``zero_point`` is a float tensor rounded here, so a learned offset always
    lands on an integer as the int8 runtimes require. ``scale`` and
    ``zero_point`` are 0-d tensors, or 1-d along ``axis``.
    """
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad or zero_point.requires_grad)
    if not needs_grad:
        zp = torch.round(zero_point).to(torch.int32)
        if axis is None:
            return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()).float(), zp.reshape(()), qmin, qmax)
        return torch.fake_quantize_per_channel_affine(x, scale.float(), zp, axis, qmin, qmax)
    if axis is None:
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, scale.reshape(1), zero_point.reshape(1), qmin, qmax, grad_scale)
    return torch._fake_quantize_learnable_per_channel_affine(x, scale, zero_point, axis, qmin, qmax, grad_scale)


def quantize_to_int(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """The integer codes the deployed model holds (no gradient)."""
    return torch.clamp(torch.round(x * (1.0 / scale) + torch.round(zero_point)), qmin, qmax)
