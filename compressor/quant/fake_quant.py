"""Fake quantization with LSQ gradients (Esser et al. 2020).

The forward pass computes exactly what ``torch.fake_quantize_per_*_affine``
computes (``round(x * (1/s) + zp)``, clamped, dequantized), so the
simulation and the exported QuantizeLinear/DequantizeLinear pairs agree bit
for bit; without gradients those native kernels run directly. With
gradients, one autograd Function gives LSQ's backward pass: straight-through
rounding, a clipped input gradient, a step-size gradient scaled by
``grad_scale`` and the LSQ+ zero-point gradient. It saves one mask and one
float tensor per call instead of the ~8 intermediates of the same formula
written with tensor ops, which is what keeps QAT's memory and time low.
"""
from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _sum_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum a broadcast gradient back to the shape of ``like``."""
    if like.dim() == 0:
        return grad.sum()
    return grad.sum_to_size(like.shape)


class _LSQFakeQuantize(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin, qmax, grad_scale):  # type: ignore[override]
        zp = torch.round(zero_point)
        v = x * (1.0 / scale) + zp
        inside = (v >= qmin) & (v <= qmax)
        q = torch.round(torch.clamp(v, qmin, qmax))
        # d out / d scale: round(v) - v inside the range, q - zp at the clip
        dscale = torch.where(inside, q - v, q - zp)
        ctx.save_for_backward(inside, dscale, scale, zero_point)
        ctx.grad_scale = grad_scale
        return (q - zp) * scale

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        inside, dscale, scale, zero_point = ctx.saved_tensors
        g = ctx.grad_scale
        grad_x = grad_out * inside if ctx.needs_input_grad[0] else None
        grad_scale = _sum_to(grad_out * dscale, scale) * g if ctx.needs_input_grad[1] else None
        grad_zp = None
        if ctx.needs_input_grad[2]:
            # LSQ+: the rounded offset moves the output only where x is clipped
            grad_zp = _sum_to(grad_out * (inside.to(grad_out.dtype) - 1.0) * scale, zero_point) * g
        return grad_x, grad_scale, grad_zp, None, None, None


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
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale = scale.reshape(shape)
        zero_point = zero_point.reshape(shape)
    return _LSQFakeQuantize.apply(x, scale, zero_point, qmin, qmax, grad_scale)


def quantize_to_int(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """The integer codes the deployed model holds (no gradient)."""
    return torch.clamp(torch.round(x * (1.0 / scale) + torch.round(zero_point)), qmin, qmax)
