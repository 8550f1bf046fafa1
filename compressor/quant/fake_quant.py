"""Differentiable fake quantization (LSQ, Esser et al. 2020).

The forward pass computes exactly what ``torch.fake_quantize_per_*_affine``
computes (``round(x * (1/s) + zp)``, clamped, dequantized), so the simulation
and the exported QuantizeLinear/DequantizeLinear pairs agree bit for bit. The
backward pass is LSQ's: straight-through rounding, a clipped input gradient,
and a step-size gradient scaled by ``grad_scale``.
"""
from __future__ import annotations

import torch


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def scale_grad(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Value of ``x``, gradient multiplied by ``factor`` (LSQ's gradient scale)."""
    scaled = x * factor
    return (x - scaled).detach() + scaled


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    qmin: int,
    qmax: int,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """LSQ fake quantization; ``scale``/``zero_point`` broadcast against ``x``.

    ``zero_point`` is a float tensor that is rounded here (STE), so a learned
    offset always lands on an integer as the int8 runtimes require.
    """
    s = scale_grad(scale, grad_scale)
    zp = scale_grad(round_ste(zero_point), grad_scale)
    # Clamping before rounding equals rounding before clamping (integer
    # bounds) and keeps +-inf finite: round_ste(inf) would be NaN.
    q = round_ste(torch.clamp(x * (1.0 / s) + zp, qmin, qmax))
    return (q - zp) * s


def quantize_to_int(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """The integer codes the deployed model holds (no gradient)."""
    return torch.clamp(torch.round(x * (1.0 / scale) + torch.round(zero_point)), qmin, qmax)
