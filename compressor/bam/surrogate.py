"""Heaviside activations with the SuperSpike surrogate derivative (Zenke & Ganguli 2018).

Forward: H(x) = 1 for x >= 0, else 0 (exactly 0/1). Backward: the
derivative of a fast sigmoid, 1 / (beta * |x| + 1)^2, instead of the Dirac
delta, so a network with binary activation maps trains with backprop.
"""
from __future__ import annotations

import torch
from torch import nn

from compressor.errors import ConfigError


class SuperSpike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.beta = beta
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad / (ctx.beta * x.abs() + 1.0) ** 2, None


def superspike_derivative(x: torch.Tensor, beta: float) -> torch.Tensor:
    """The surrogate derivative itself (for tests and plots)."""
    return 1.0 / (beta * x.abs() + 1.0) ** 2


class Heaviside(nn.Module):
    """Binary activation: the surrogate gradient while training, ``where(x >= 0, 1, 0)`` when traced.

    The eval-mode form is plain ATen (ge + where on constants), which
    ``quantize()`` and both exporters lower to int8 compare/select ops; the
    output is exactly 0 or 1.
    """

    def __init__(self, beta: float = 5.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ConfigError(f"SuperSpike beta must be > 0, got {beta!r}")
        self.beta = float(beta)
        self.register_buffer("one", torch.tensor(1.0), persistent=False)
        self.register_buffer("zero", torch.tensor(0.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            return SuperSpike.apply(x, self.beta)
        return torch.where(x >= 0, self.one, self.zero)

    def extra_repr(self) -> str:
        return f"beta={self.beta:g}"
