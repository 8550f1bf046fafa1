"""Small single-op models: the export parity grid's fixtures and the source of the README op table.

Each op record in compressor/ops/registry.py names the fixtures that exercise it.

Each model wraps one op of interest (most behind a 1x1 conv, so the op
sees a learned, signed input); ``quantized_fixture`` quantizes and
calibrates one.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class Conv1d(nn.Module):
    def __init__(self, groups: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3, groups=groups, dilation=dilation, padding=dilation)

    def forward(self, x):
        return self.conv(x)


class Conv2d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)

    def forward(self, x):
        return self.conv(x.reshape(x.shape[0], 2, 4, -1))


class ConvTranspose1d(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(8, 2, 16, stride=8)

    def forward(self, x):
        return self.conv(x)


class WeightNormConv(nn.Module):
    """A weight-normalised conv (as in many vocoders and enhancers): quantize() folds the norm into the weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(8, 8, 3, padding=1))

    def forward(self, x):
        return self.conv(x)


class Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 12)

    def forward(self, x):
        return self.fc(x.transpose(1, 2))


class Unary(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.conv = nn.Conv1d(8, 8, 1)  # gives the op a learned, signed input
        # per-channel slopes, or one slope as Conv-TasNet's nn.PReLU() (lowered differently)
        self.prelu = nn.PReLU(8 if op == "prelu" else 1) if op.startswith("prelu") else None
        if op == "prelu_shared":
            nn.init.constant_(self.prelu.weight, 0.2)

    def forward(self, x):
        y = self.conv(x)
        if self.prelu is not None:
            return self.prelu(y)
        return {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[self.op](y)


class Binary(nn.Module):
    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Conv1d(8, 8, 1)
        self.b = nn.Conv1d(8, 8, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        if self.op == "add":
            return a + b
        if self.op == "mul":
            return a * b
        return torch.cat([a, b], dim=1)


class ReshapeTranspose(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        return y.reshape(y.shape[0], 4, 2, -1).transpose(1, 3).reshape(y.shape[0], 8, -1)


class Norm(nn.Module):
    """gLN / cLN / LayerNorm over channels, written out op by op (quantize() refuses nn.LayerNorm)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv1d(8, 8, 1)
        self.gamma = nn.Parameter(torch.rand(8, 1) + 0.5)
        self.beta = nn.Parameter(torch.randn(8, 1) * 0.1)

    def forward(self, x):
        y = self.conv(x)
        dims = (1, 2) if self.kind == "gln" else (1,)
        mean = y.mean(dim=dims, keepdim=True)
        centered = y - mean
        var = (centered * centered).mean(dim=dims, keepdim=True)
        normed = centered * torch.rsqrt(var + 1e-5)
        if self.kind == "layernorm":  # LayerNorm over the feature axis of (batch, time, features)
            return normed.transpose(1, 2) * self.gamma.reshape(-1) + self.beta.reshape(-1)
        return normed * self.gamma + self.beta


class Mean(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 1)

    def forward(self, x):
        return self.conv(x).mean(dim=1, keepdim=True)


class AfterConv(nn.Module):
    """One op on the outputs of one or two 1x1 convs (learned, signed inputs of the shape audio models have)."""

    def __init__(self, op: Callable[..., torch.Tensor], inputs: int = 1) -> None:
        super().__init__()
        self.op = op
        self.a = nn.Conv1d(8, 8, 1)
        self.b = nn.Conv1d(8, 8, 1) if inputs > 1 else None

    def forward(self, x):
        if self.b is None:
            return self.op(self.a(x))
        return self.op(self.a(x), self.b(x))


def _attention(a: torch.Tensor, b: torch.Tensor, bmm: bool = False) -> torch.Tensor:
    product = torch.bmm if bmm else torch.matmul
    scores = product(a, b.transpose(1, 2))  # [B, 8, 8]
    return product(scores, b)  # [B, 8, T]


def _no_ops(a: torch.Tensor) -> torch.Tensor:
    y = a + torch.tensor([0.0])  # a lifted constant: lift_fresh_copy + detach_
    y = nn.functional.dropout2d(y.unsqueeze(-1), 0.1, training=False).squeeze(-1)
    return y.to(torch.float32).clone().contiguous().detach()


_F = nn.functional
# name -> model; every op record names the fixtures that exercise it (tests/test_op_registry.py)
_AFTER_CONV: dict[str, tuple[Callable[..., torch.Tensor], int]] = {
    "matmul": (_attention, 2),
    "bmm": (lambda a, b: _attention(a, b, bmm=True), 2),
    "sub": (lambda a, b: a - b, 2),
    "rsub": (lambda a: 1 - torch.sigmoid(a), 1),
    "div": (lambda a, b: a / (b.abs() + 1), 2),
    "div_scalar": (lambda a: a / 3, 1),
    "reciprocal": (lambda a: torch.reciprocal(a.abs() + 0.5), 1),
    "sqrt": (lambda a: torch.sqrt(a.abs()), 1),
    "log": (lambda a: torch.log(a.abs() + 0.01), 1),
    "log10": (lambda a: torch.log10(a.abs() + 0.01), 1),
    "log1p": (lambda a: torch.log1p(a.abs()), 1),
    "exp": (torch.exp, 1),
    "abs": (torch.abs, 1),
    "neg": (torch.neg, 1),
    "square": (lambda a, b: torch.square(a + b), 2),
    "clamp": (lambda a: torch.clamp(a, -0.5, 0.5), 1),
    "hardtanh": (_F.hardtanh, 1),
    "relu6": (_F.relu6, 1),
    "leaky_relu": (lambda a: _F.leaky_relu(a, 0.1), 1),
    "gelu": (_F.gelu, 1),
    "gelu_tanh": (lambda a: _F.gelu(a, approximate="tanh"), 1),
    "silu": (_F.silu, 1),
    "elu": (_F.elu, 1),
    "hardswish": (_F.hardswish, 1),
    "softmax": (lambda a: torch.softmax(a, dim=-1), 1),
    "softmax_channels": (lambda a: torch.softmax(a, dim=1), 1),
    "sum": (lambda a: a.sum(dim=1, keepdim=True) + a.sum(dim=-1, keepdim=True), 1),
    "avg_pool": (lambda a: _F.avg_pool1d(a, 4, 4), 1),
    "adaptive_avg_pool": (lambda a, b: _F.adaptive_avg_pool1d(a, 1) * b, 2),
    "max_pool": (lambda a: _F.max_pool1d(a, 3, 2, 1), 1),
    "amax": (lambda a: a.amax(dim=1, keepdim=True), 1),
    "max_dim": (lambda a: a.max(dim=-1, keepdim=True).values * a, 1),
    "constant": (lambda a: a + torch.full_like(a, 0.25) + torch.ones_like(a), 1),
    "no_op": (_no_ops, 1),
    "slice": (lambda a: a[:, 2:6, 1:-1] + a.narrow(1, 0, 4)[..., 2:] + a.select(1, 3).unsqueeze(1)[..., 2:], 1),
    "split": (lambda a: sum(a.chunk(2, dim=1)) + a.split([2, 2, 4], dim=1)[2], 1),
    "pad": (lambda a: _F.pad(a, (3, 2)), 1),
    "expand": (lambda a: a[:, :1].expand(-1, 8, -1) + a[:, :1].repeat(1, 8, 1), 1),
    "broadcast_to": (lambda a: torch.broadcast_to(a[:, :1], a.shape), 1),
    "flip": (lambda a: a.flip(-1), 1),
    "roll": (lambda a: a.roll(3, -1), 1),
    "index_select": (lambda a: a.index_select(1, torch.tensor([3, 1, 0])), 1),
    "stack": (lambda a, b: torch.stack([a, b], dim=1).flatten(1, 2), 2),
    "where": (lambda a, b: torch.where(a > 0, a, b), 2),
    "upsample_nearest": (lambda a: _F.interpolate(a, scale_factor=2.0, mode="nearest"), 1),
}


FIXTURES = {
    "conv1d": lambda: Conv1d(),
    "conv1d_depthwise": lambda: Conv1d(groups=8),
    "conv1d_dilated": lambda: Conv1d(dilation=4),
    "conv2d": lambda: Conv2d(),
    "conv_transpose1d": lambda: ConvTranspose1d(),
    "weight_norm": lambda: WeightNormConv(),
    "linear": lambda: Linear(),
    "prelu": lambda: Unary("prelu"),
    "prelu_shared": lambda: Unary("prelu_shared"),
    "relu": lambda: Unary("relu"),
    "sigmoid": lambda: Unary("sigmoid"),
    "tanh": lambda: Unary("tanh"),
    "add": lambda: Binary("add"),
    "mul": lambda: Binary("mul"),
    "concat": lambda: Binary("concat"),
    "reshape_transpose": lambda: ReshapeTranspose(),
    "gln": lambda: Norm("gln"),
    "cln": lambda: Norm("cln"),
    "layernorm": lambda: Norm("layernorm"),
    "mean": lambda: Mean(),
    **{name: (lambda op=op, n=n: AfterConv(op, n)) for name, (op, n) in _AFTER_CONV.items()},
}

INPUT_SHAPE = (1, 8, 64)  # (batch, channels, time)


def quantized_fixture(name: str, weight_bits: int = 8):
    from compressor.quant import QuantConfig, calibrate, quantize

    torch.manual_seed(0)
    model = FIXTURES[name]().eval()
    x = torch.randn(*INPUT_SHAPE)
    qmodel = quantize(model, torch.cat([x, x]), QuantConfig(weight_bits=weight_bits))
    calibrate(qmodel, [torch.randn(2, *INPUT_SHAPE[1:]) for _ in range(4)])
    return qmodel


def calibration_chunks(count: int = 3):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(*INPUT_SHAPE, generator=gen).numpy() for _ in range(count)]


__all__ = ["FIXTURES", "INPUT_SHAPE", "calibration_chunks", "quantized_fixture"]
