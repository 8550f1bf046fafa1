"""Small single-op models: the export parity grid's fixtures and the source of the README op table.

Each op record in compressor/ops/registry.py names the fixtures that exercise it.

Each model wraps one op of interest (most behind a 1x1 conv, so the op
sees a learned, signed input); ``quantized_fixture`` quantizes and
calibrates one.
"""
from __future__ import annotations

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


FIXTURES = {
    "conv1d": lambda: Conv1d(),
    "conv1d_depthwise": lambda: Conv1d(groups=8),
    "conv1d_dilated": lambda: Conv1d(dilation=4),
    "conv2d": lambda: Conv2d(),
    "conv_transpose1d": lambda: ConvTranspose1d(),
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
