"""Exact rewrites applied right after tracing, before quantizers are planned.

Each function takes an op's ATen arguments and computes the same values with
ops that have int8 kernels, so the simulation quantizes the same
intermediate tensors the files will hold (a SiLU becomes x * sigmoid(x), and
the sigmoid's output gets the runtimes' fixed 1/256 grid). No-ops in eval
mode (detach, dropout, a cast to the same dtype, a lifted constant) become
the tensor itself. The op registry names each record's function
(``OpRecord.decompose``); ``torch.export``'s ``run_decompositions`` applies
them, keeping each node's source line and module path.
"""
from __future__ import annotations

import math
from typing import Any

import torch

aten = torch.ops.aten


def same_tensor(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """detach, lift_fresh_copy, eval-mode dropout, a float cast to the same dtype: the input itself."""
    return x


def to_dtype(x: torch.Tensor, dtype: torch.dtype, *args: Any, **kwargs: Any) -> torch.Tensor:
    if dtype != x.dtype:
        # a real conversion (float16, int): no int8 form; keep the op so quantize() refuses it by name
        return aten._to_copy.default(x, dtype=dtype)
    return x


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def elu(x: torch.Tensor, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0) -> torch.Tensor:
    # multiplications by 1 left out: each would be one more quantized tensor in the simulation
    negative = torch.exp(x * input_scale if input_scale != 1 else x) - 1
    if alpha * scale != 1:
        negative = negative * (alpha * scale)
    return torch.where(x > 0, x * scale if scale != 1 else x, negative)


def log10(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x) * (1 / math.log(10))


def log1p(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x + 1)


def softmax(x: torch.Tensor, dim: int, dtype: Any = None) -> torch.Tensor:
    """Softmax over the last axis (LiteRT's int8 SOFTMAX); another axis is moved there and back."""
    last = x.dim() - 1
    dim = dim % x.dim()
    if dim == last:
        return aten._softmax.default(x, last, False)
    return aten._softmax.default(x.transpose(dim, last), last, False).transpose(dim, last)


def broadcast_to(x: torch.Tensor, size: Any) -> torch.Tensor:
    return x.expand(size)


def upsample_nearest(x: torch.Tensor, output_size: Any, scale_factors: Any) -> torch.Tensor:
    """Nearest upsampling by integer factors: each sample repeated (data movement only)."""
    axes = x.dim() - 2
    if scale_factors is None:
        factors = [int(o) // int(i) for o, i in zip(output_size, x.shape[2:])]
    else:
        factors = [int(f) for f in scale_factors]
    if any(f < 1 for f in factors) or (scale_factors is not None and any(f != int(f) for f in scale_factors)):
        raise NotImplementedError("nearest upsampling by a non-integer factor")
    out = x
    for axis, factor in zip(range(2, 2 + axes), factors):
        if factor == 1:
            continue
        shape = list(out.shape)
        out = out.unsqueeze(axis + 1).expand(*shape[: axis + 1], factor, *shape[axis + 1:])
        out = out.flatten(axis, axis + 1)
    return out


__all__ = ["broadcast_to", "elu", "log10", "log1p", "same_tensor", "silu", "softmax", "to_dtype",
           "upsample_nearest"]
