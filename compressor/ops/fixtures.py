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
    def __init__(self, grouped: bool = False) -> None:
        super().__init__()
        # grouped: a kernel that is not a multiple of the stride, padding and output_padding
        self.conv = (nn.ConvTranspose1d(8, 4, 5, stride=2, padding=2, output_padding=1, groups=2) if grouped
                     else nn.ConvTranspose1d(8, 2, 16, stride=8))

    def forward(self, x):
        return self.conv(x)


class ConvTranspose2d(nn.Module):
    """A CRN/GTCRN-style decoder layer on (batch, 8 channels, frames, frequency bins)."""

    def __init__(self, kind: str = "freq") -> None:
        super().__init__()
        self.frames = 8 if kind == "stride2" else 4
        self.conv = {
            # stride 2 along frequency (the last axis), kernel a multiple of the stride
            "freq": lambda: nn.ConvTranspose2d(8, 4, (1, 4), stride=(1, 2), padding=(0, 1)),
            # stride 2 on both axes, kernel 3 (zero-padded to 4), output_padding
            "stride2": lambda: nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1),
            # grouped, kernel (2, 3) along (time, frequency) as GTCRN's decoder
            "grouped": lambda: nn.ConvTranspose2d(8, 4, (2, 3), stride=(1, 2), padding=(0, 1), groups=2),
            # depthwise, dilated along time, stride 1 (GTCRN's GTConvBlock as a deconvolution)
            "depthwise": lambda: nn.ConvTranspose2d(8, 8, 3, padding=(2, 1), dilation=(2, 1), groups=8),
        }[kind]()

    def forward(self, x):
        return self.conv(x.reshape(x.shape[0], 8, self.frames, -1))


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


class GatedMaskReLU(nn.Module):
    """asteroid DPTNet's mask: relu(reshape(tanh(conv) * sigmoid(conv))), the ReLU after a reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.out = nn.Conv1d(8, 8, 1)
        self.gate = nn.Conv1d(8, 8, 1)

    def forward(self, x):
        y = torch.tanh(self.out(x)) * torch.sigmoid(self.gate(x))
        return torch.relu(y.reshape(x.shape[0], 2, 4, -1))


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


class ZNorm(nn.Module):
    """asteroid's z_norm (gLN with torch.var) and a norm by torch.std over the channels, after a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 1)

    def forward(self, x):
        y = self.conv(x)
        mean = y.mean(dim=(1, 2), keepdim=True)
        z = (y - mean) / torch.sqrt(torch.var(y, dim=(1, 2), keepdim=True, unbiased=False) + 1e-8)
        return z * (torch.std(y, dim=1, keepdim=True) + 0.5)


class NormTwice(nn.Module):
    """A norm written as plain ops, ``x - m`` twice (as users write it), after Conv1d + SiLU.

    Each ``x - m`` gets its own quantizer; QAT (or MSE ranges on different
    calibration samples) leaves them on different grids, which
    ``after_calibration`` mimics. The converter's CSE merges the two SUBs
    unless the lowering keeps them apart (exporters/lowering.py, keep_ops_apart).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 1)
        self.gamma = nn.Parameter(torch.rand(1, 8, 1) + 0.5)
        self.beta = nn.Parameter(torch.randn(1, 8, 1) * 0.1)

    def forward(self, x):
        y = nn.functional.silu(self.conv(x))
        m = y.mean(dim=(1, 2), keepdim=True)
        v = ((y - m) ** 2).mean(dim=(1, 2), keepdim=True)
        return (y - m) / torch.sqrt(v + 1e-8) * self.gamma + self.beta

    @staticmethod
    def after_calibration(qmodel) -> None:
        """The second ``y - m`` on a 3% wider step than the first, as training leaves it."""
        from compressor.quant.graph import quantizer_at

        gm = qmodel.graph_module
        subs = [n for n in gm.graph.nodes if n.op == "call_function" and n.target == torch.ops.aten.sub.Tensor]
        with torch.no_grad():
            quantizer_at(gm, next(iter(subs[1].users))).scale.mul_(1.03)


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


class UnfoldFold(nn.Module):
    """Dual-path chunking as asteroid's DPRNN/DPTNet: F.unfold into overlapping chunks, a Linear over each
    chunk, F.fold (overlap-add) back. "odd": a 2-D unfold/fold whose kernels are no multiple of the strides,
    dilated along H."""

    def __init__(self, odd: bool = False) -> None:
        super().__init__()
        self.odd = odd
        self.conv = nn.Conv1d(8, 8, 1)
        self.fc = nn.Linear(6 if odd else 8, 6 if odd else 8)
        if odd:
            self.args = dict(kernel_size=(3, 6), dilation=(2, 1), padding=(2, 2), stride=(2, 4))
        else:  # asteroid: kernel_size=(chunk, 1), padding=(chunk, 0), stride=(hop, 1)
            self.args = dict(kernel_size=(8, 1), padding=(8, 0), stride=(4, 1))

    def forward(self, x):
        y = self.conv(x)
        b, c, t = y.shape
        image = y.reshape(b, 1, c, t) if self.odd else y.unsqueeze(-1)
        chunks = _F.unfold(image, **self.args)  # [B, C' * kh * kw, L]
        n = chunks.shape[-1]
        k = self.fc.in_features
        chunks = self.fc(chunks.reshape(b, -1, k, n).transpose(2, 3)).transpose(2, 3).reshape(b, -1, n)
        out = _F.fold(chunks, tuple(image.shape[2:]), **self.args)
        return out.reshape(b, c, t)


class StandardNorm(nn.Module):
    """Users' own norm layers, which quantize() swaps for mean/sub/mul/rsqrt forms ("norm" substitution):
    "layer_norm_btc": nn.LayerNorm over the features of (batch, time, features); "layer_norm_plain":
    F.layer_norm over (channels, time) without affine; "group_norm_global": nn.GroupNorm(1, C) (asteroid's gLN);
    "group_norm_channels": nn.GroupNorm(C, C); "group_norm_groups": F.group_norm with 4 groups, no affine."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv1d(8, 8, 1)
        self.norm = {"layer_norm_btc": lambda: nn.LayerNorm(8), "group_norm_global": lambda: nn.GroupNorm(1, 8),
                     "group_norm_channels": lambda: nn.GroupNorm(8, 8)}.get(kind, lambda: None)()
        if self.norm is not None:  # trained-looking affine parameters
            nn.init.uniform_(self.norm.weight, 0.5, 1.5)
            nn.init.normal_(self.norm.bias, std=0.1)

    def forward(self, x):
        y = self.conv(x)
        if self.kind == "layer_norm_btc":
            return self.norm(y.transpose(1, 2))
        if self.kind == "layer_norm_plain":
            return _F.layer_norm(y, y.shape[1:])
        if self.kind == "group_norm_groups":
            return _F.group_norm(y, 4)
        return self.norm(y)


class BatchNormAfter(nn.Module):
    """Eval-mode BatchNorm ("batchnorm" substitution) with trained-looking statistics: after a Conv1d and after a
    Conv2d (folded into them), and after a ReLU (no conv before it: a per-channel mul + add)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv2d(2, 6, 3, padding=1) if kind == "conv2d" else nn.Conv1d(8, 8, 3, padding=1)
        channels = self.conv.out_channels
        self.bn = nn.BatchNorm2d(channels) if kind == "conv2d" else nn.BatchNorm1d(channels)
        with torch.no_grad():
            self.bn.running_mean.normal_(std=0.3)
            self.bn.running_var.uniform_(0.2, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.normal_(std=0.1)

    def forward(self, x):
        if self.kind == "conv2d":
            return self.bn(self.conv(x.reshape(x.shape[0], 2, 4, -1)))
        y = self.conv(x)
        return self.bn(torch.relu(y) if self.kind == "alone" else y)


class Attention(nn.Module):
    """Users' attention ("attention" substitution), 2 heads over (batch, time, 8 features): nn.MultiheadAttention
    batch-first without weights (F.scaled_dot_product_attention inside), sequence-first with averaged weights
    (written out by torch), and F.scaled_dot_product_attention with is_causal between a q/k/v projection and an
    output projection, as attention blocks are written (without the output projection the file's output was
    2 LSB off the simulation in LiteRT, every op within 1: attention averages the values, so one LSB of v is
    more than one of its output)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = nn.Conv1d(8, 8 if kind.startswith("mha") else 24, 1)
        if kind.startswith("mha"):
            self.mha = nn.MultiheadAttention(8, 2, batch_first=kind == "mha")
        else:
            self.out = nn.Linear(8, 8)

    def forward(self, x):
        y = self.conv(x).transpose(1, 2)  # (batch, time, features)
        if self.kind == "mha":
            return self.mha(y, y, y, need_weights=False)[0]
        if self.kind == "mha_seq_first":
            z = y.transpose(0, 1)
            out, weights = self.mha(z, z, z)
            return out.transpose(0, 1)
        b, t, _ = y.shape
        q, k, v = y.reshape(b, t, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (batch, heads, time, 4)
        return self.out(_F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, 8))


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
    # over channels and over time (x - max - log(sum(exp(x - max))))
    "log_softmax": (lambda a, b: torch.log_softmax(a, dim=1) + _F.log_softmax(4 * b, dim=-1), 2),
    "sum": (lambda a: a.sum(dim=1, keepdim=True) + a.sum(dim=-1, keepdim=True), 1),
    "avg_pool": (lambda a: _F.avg_pool1d(a, 4, 4), 1),
    "adaptive_avg_pool": (lambda a, b: _F.adaptive_avg_pool1d(a, 1) * b, 2),
    "max_pool": (lambda a: _F.max_pool1d(a, 3, 2, 1), 1),
    "amax": (lambda a: a.amax(dim=1, keepdim=True), 1),
    "max_dim": (lambda a: a.max(dim=-1, keepdim=True).values * a, 1),
    "amin": (lambda a: a.amin(dim=-1, keepdim=True) + a.min(dim=1, keepdim=True).values, 1),
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
    # squares of Conv1d outputs (which the converter writes as a RESHAPE): lowered to |x| * |x|
    "square_conv": (lambda a, b: a * a + b ** 2, 2),
    "upsample_linear": (lambda a: _F.interpolate(a, scale_factor=2.0, mode="linear"), 1),
    # [B, C, F, T] as a spectrogram-like 2-D map
    "upsample_bilinear": (lambda a: _F.interpolate(a.reshape(a.shape[0], 2, 4, -1), scale_factor=2.0,
                                                   mode="bilinear"), 1),
    # a frame-wise unfold of K=5 and S=3 (K % S != 0), padded
    "unfold_odd": (lambda a: _F.unfold(a.unsqueeze(-1), (5, 1), padding=(2, 0), stride=(3, 1)), 1),
}


class Recurrent(nn.Module):
    """nn.GRU / nn.LSTM as users call them, on 8 frames (the exporters unroll every frame)."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        if cell == "gru":
            self.rnn = nn.GRU(8, 8, batch_first=True)
        else:
            self.rnn = nn.LSTM(8, 4, batch_first=True, bidirectional=True)

    def forward(self, x):
        frames = x[..., :8].transpose(1, 2)
        return self.rnn(frames)[0].transpose(1, 2)


FIXTURES = {
    "conv1d": lambda: Conv1d(),
    "conv1d_depthwise": lambda: Conv1d(groups=8),
    "conv1d_dilated": lambda: Conv1d(dilation=4),
    "conv2d": lambda: Conv2d(),
    "conv_transpose1d": lambda: ConvTranspose1d(),
    "conv_transpose1d_grouped": lambda: ConvTranspose1d(grouped=True),
    "conv_transpose2d": lambda: ConvTranspose2d("freq"),
    "conv_transpose2d_stride2": lambda: ConvTranspose2d("stride2"),
    "conv_transpose2d_grouped": lambda: ConvTranspose2d("grouped"),
    "conv_transpose2d_depthwise": lambda: ConvTranspose2d("depthwise"),
    "weight_norm": lambda: WeightNormConv(),
    "linear": lambda: Linear(),
    "prelu": lambda: Unary("prelu"),
    "prelu_shared": lambda: Unary("prelu_shared"),
    "relu": lambda: Unary("relu"),
    "relu_after_reshape": lambda: GatedMaskReLU(),
    "sigmoid": lambda: Unary("sigmoid"),
    "tanh": lambda: Unary("tanh"),
    "add": lambda: Binary("add"),
    "mul": lambda: Binary("mul"),
    "concat": lambda: Binary("concat"),
    "reshape_transpose": lambda: ReshapeTranspose(),
    "gln": lambda: Norm("gln"),
    "cln": lambda: Norm("cln"),
    "layernorm": lambda: Norm("layernorm"),
    "z_norm": lambda: ZNorm(),
    "mean": lambda: Mean(),
    "norm_twice": lambda: NormTwice(),
    "unfold_fold": lambda: UnfoldFold(),
    "gru": lambda: Recurrent("gru"),
    "lstm_bidirectional": lambda: Recurrent("lstm"),
    "unfold_fold_2d": lambda: UnfoldFold(odd=True),
    **{kind: (lambda kind=kind: StandardNorm(kind)) for kind in (
        "layer_norm_btc", "layer_norm_plain", "group_norm_global", "group_norm_channels", "group_norm_groups")},
    "batchnorm_conv1d": lambda: BatchNormAfter("conv1d"),
    "batchnorm_conv2d": lambda: BatchNormAfter("conv2d"),
    "batchnorm_alone": lambda: BatchNormAfter("alone"),
    "mha": lambda: Attention("mha"),
    "mha_seq_first": lambda: Attention("mha_seq_first"),
    "sdpa_causal": lambda: Attention("sdpa_causal"),
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
    if hasattr(model, "after_calibration"):
        model.after_calibration(qmodel)
    return qmodel


def calibration_chunks(count: int = 3):
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(*INPUT_SHAPE, generator=gen).numpy() for _ in range(count)]


__all__ = ["FIXTURES", "INPUT_SHAPE", "calibration_chunks", "quantized_fixture"]
