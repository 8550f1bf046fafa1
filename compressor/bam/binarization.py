"""Model changes the bam recipe makes from outside the zoo model.

- ``binarize_activations``: the conv activations become Heaviside (the
  SuperSpike surrogate while training); used both for QAT from scratch and
  for post-training binarization of a trained float model.
- ``binarize_weights``: conv weights become sign(w) * alpha per output
  channel (alpha = mean |w|, XNOR-Net style) with a straight-through
  gradient; ``bake_weights`` replaces the parametrization by its values.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from compressor.bam.surrogate import Heaviside
from compressor.errors import ConfigError


def conv_activation_names(model: nn.Module) -> list[str]:
    """The swappable conv activations of a DNSMOS-style model (``act1`` .. ``act4``)."""
    names = [n for n, _ in model.named_children() if n.startswith("act")]
    if not names:
        raise ConfigError(f"{type(model).__name__} has no act* activation modules to binarize")
    return sorted(names)


def binarize_activations(model: nn.Module, beta: float = 5.0, copy_model: bool = True) -> nn.Module:
    model = copy.deepcopy(model) if copy_model else model
    for name in conv_activation_names(model):
        setattr(model, name, Heaviside(beta))
    return model


class SignScale(nn.Module):
    """w -> sign(w) * mean|w| per output channel; the gradient passes straight through."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        alpha = w.detach().abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)
        binary = torch.where(w >= 0, alpha, -alpha)
        return binary + (w - w.detach())  # exactly the binary values; the gradient of w passes through


def binarize_weights(model: nn.Module) -> nn.Module:
    """Parametrize every Conv2d weight in place (training then sees binary weights)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"{type(model).__name__} has no Conv2d to binarize")
    for conv in convs:
        parametrize.register_parametrization(conv, "weight", SignScale())
    return model


def bake_weights(model: nn.Module) -> nn.Module:
    """Turn parametrized weights into plain parameters holding the binary values."""
    for m in model.modules():
        if parametrize.is_parametrized(m, "weight"):
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model
