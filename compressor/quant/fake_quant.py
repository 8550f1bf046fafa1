"""Fake quantization with LSQ gradients (Esser et al. 2020).

The forward pass computes ``clamp(round(x * (1/s)) + zp) - zp) * s`` with
round-half-to-even, exactly as ``torch.fake_quantize_per_*_affine`` does, so
the simulation and the exported QuantizeLinear/DequantizeLinear pairs agree
bit for bit (a test checks it). The backward pass is LSQ's: straight-through
rounding, an input gradient clipped to the range, a step-size gradient
scaled by ``grad_scale`` and the LSQ+ zero-point gradient.

Per-tensor activations dominate QAT's cost (one quantizer per activation,
each as large as the activation). torch's own fused kernels for them are
scalar code; the same arithmetic compiled by TorchInductor into one
vectorised loop forward and one backward is ~4x faster on CPU. The compiled
path checks itself once per process and falls back to torch's kernels (with
a warning) where no C++ compiler is available, or when
``COMPRESS_NO_COMPILE=1``. Weights (small, per channel) always use torch's
fused learnable kernel.
"""
from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger(__name__)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _fq_forward(x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return (torch.clamp(torch.round(x * (1.0 / scale)) + zp, qmin, qmax) - zp) * scale


def _fq_backward(grad: torch.Tensor, x: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor,
                 qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input gradient and the unscaled sums of the step-size and zero-point gradients.

    Recomputes the rounding from ``x`` instead of saving a mask: inside one
    compiled loop that is cheaper than storing and re-reading one.
    """
    scaled = x * (1.0 / scale)
    codes = torch.round(scaled) + zp
    below, above = codes < qmin, codes > qmax
    inside = ~(below | above)
    grad_x = torch.where(inside, grad, 0.0)
    # d out / d s: (q - zp) - x/s inside the range, the clipped code minus zp outside
    d_scale = torch.where(below, qmin - zp, torch.where(above, qmax - zp, codes - zp - scaled))
    # d out / d zp: 0 inside (straight-through), -s where clipped (LSQ+)
    d_zp = torch.where(inside, 0.0, grad).sum() * -scale
    return grad_x, (grad * d_scale).sum(), d_zp


class _Kernels:
    """The forward and backward loops: compiled once per process if possible, else eager."""

    forward = staticmethod(_fq_forward)
    backward = staticmethod(_fq_backward)
    compiled: bool | None = None  # None: not tried yet


def _kernels() -> type[_Kernels]:
    if _Kernels.compiled is None:
        _Kernels.compiled = False
        if os.environ.get("COMPRESS_NO_COMPILE", "") in ("", "0"):
            try:
                forward = torch.compile(_fq_forward, dynamic=True)
                backward = torch.compile(_fq_backward, dynamic=True)
                with torch.no_grad():
                    x = torch.linspace(-2.0, 2.0, _COMPILE_MIN_NUMEL + 1)
                    s, z = torch.tensor([0.01]), torch.tensor([3.0])
                    out = forward(x, s, z, -128, 127)
                    backward(torch.ones_like(x), x, s, z, -128, 127)
                if not torch.equal(out, torch.fake_quantize_per_tensor_affine(x, 0.01, 3, -128, 127)):
                    raise RuntimeError("compiled kernel differs from torch.fake_quantize_per_tensor_affine")
                _Kernels.forward, _Kernels.backward = staticmethod(forward), staticmethod(backward)
                _Kernels.compiled = True
            except Exception as err:  # noqa: BLE001 - any compiler failure means: use eager kernels
                first_line = str(err).splitlines()[0] if str(err) else ""
                log.warning("compiled fake-quant kernels unavailable (%s: %s); using eager ones, QAT will be "
                            "slower", type(err).__name__, first_line)
    return _Kernels


def _flat(t: torch.Tensor) -> torch.Tensor:
    # A flat non-view tensor: every rank, size and Parameter-ness of the
    # caller's tensor then shares one compiled variant.
    return t.reshape(-1).detach()


class _LSQPerTensor(torch.autograd.Function):
    """Per-tensor LSQ fake quantization with explicit gradients."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int, grad_scale: float):  # type: ignore[override]
        zp = torch.round(zero_point.detach())
        ctx.save_for_backward(x, scale, zp)
        ctx.config = (qmin, qmax, grad_scale)
        return _kernels().forward(_flat(x), _flat(scale), zp.reshape(-1), qmin, qmax).reshape(x.shape)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, scale, zp = ctx.saved_tensors
        qmin, qmax, grad_scale = ctx.config
        with torch.no_grad():
            grad_x, d_scale, d_zp = _kernels().backward(
                _flat(grad), _flat(x), _flat(scale), zp.reshape(-1), qmin, qmax)
        return (grad_x.reshape(x.shape), (d_scale * grad_scale).reshape(scale.shape),
                (d_zp * grad_scale).reshape(scale.shape), None, None, None)


# Small tensors (constants, tiny tests) gain nothing from the compiled
# kernels; torch's own stay bit-identical to them.
_COMPILE_MIN_NUMEL = 8192


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
    if axis is None:
        if x.dtype == torch.float32 and x.numel() >= _COMPILE_MIN_NUMEL and _kernels().compiled:
            if needs_grad:
                return _LSQPerTensor.apply(x, scale.reshape(1), zero_point.reshape(1), qmin, qmax, grad_scale)
            with torch.no_grad():
                zp = torch.round(zero_point.detach()).reshape(1)
                return _kernels().forward(_flat(x), _flat(scale), zp, qmin, qmax).reshape(x.shape)
        if not needs_grad:
            zp = torch.round(zero_point).to(torch.int32)
            return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()).float(), zp.reshape(()), qmin, qmax)
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, scale.reshape(1), zero_point.reshape(1), qmin, qmax, grad_scale)
    if not needs_grad:
        zp = torch.round(zero_point).to(torch.int32)
        return torch.fake_quantize_per_channel_affine(x, scale.float(), zp, axis, qmin, qmax)
    return torch._fake_quantize_learnable_per_channel_affine(x, scale, zero_point, axis, qmin, qmax, grad_scale)


def quantize_to_int(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> torch.Tensor:
    """The integer codes the deployed model holds (no gradient)."""
    return torch.clamp(torch.round(x * (1.0 / scale) + torch.round(zero_point)), qmin, qmax)
