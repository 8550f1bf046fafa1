"""Conv-TasNet (Luo & Mesgarani, 2019) in plain PyTorch.

No quantization code lives here: a quantizer is inserted from outside by
tracing the model with ``torch.export``. Every op is therefore a plain ATen
op (conv1d, conv_transpose1d, prelu, add, sub, mul, mean, rsqrt, sigmoid,
relu, softmax, pad, slicing, reshape), and the normalisations are written
out op by op so that each intermediate tensor can receive its own quantizer
(see DESIGN.md, "int8 forms of audio ops").

Shapes: the model maps a mixture ``(batch, time)`` to ``(batch, sources,
time)`` with the same time length; the input is padded to a whole number of
frames inside ``forward`` and the output is cropped back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compressor.configs import JsonConfig
from compressor.errors import ConfigError

_NORMS = ("gLN", "cLN")
_MASKS = ("sigmoid", "relu", "softmax")
_INT_FIELDS = ("N", "L", "B", "H", "P", "X", "R", "num_sources")


@dataclass(frozen=True)
class ConvTasNetConfig(JsonConfig):
    """Hyper-parameters of Conv-TasNet, named as in the paper.

    N: encoder filters; L: filter length (samples, even; hop is L // 2);
    B: bottleneck channels; H: channels inside a TCN block; P: depthwise
    kernel size; X: blocks per repeat (dilations 1 .. 2**(X-1)); R: repeats.
    """

    N: int = 64
    L: int = 32
    B: int = 64
    H: int = 128
    P: int = 3
    X: int = 6
    R: int = 2
    norm: str = "gLN"
    causal: bool = False
    mask_nonlinear: str = "sigmoid"
    num_sources: int = 1

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(
                    f"ConvTasNetConfig.{name} must be an int, got {value!r}"
                )
            if value < 1:
                raise ConfigError(
                    f"ConvTasNetConfig.{name} must be positive, got {value}"
                )
        if self.L < 2 or self.L % 2:
            raise ConfigError(
                f"ConvTasNetConfig.L must be even and >= 2 (hop is L // 2), got {self.L}"
            )
        if self.norm not in _NORMS:
            raise ConfigError(
                f"ConvTasNetConfig.norm must be one of {_NORMS}, got {self.norm!r}"
            )
        if not isinstance(self.causal, bool):
            raise ConfigError(
                f"ConvTasNetConfig.causal must be a bool, got {self.causal!r}"
            )
        if self.causal and self.norm != "cLN":
            raise ConfigError(
                "ConvTasNetConfig: causal=True requires norm='cLN' "
                f"(gLN looks at the whole signal), got norm={self.norm!r}"
            )
        if self.mask_nonlinear not in _MASKS:
            raise ConfigError(
                "ConvTasNetConfig.mask_nonlinear must be one of "
                f"{_MASKS}, got {self.mask_nonlinear!r}"
            )
        if self.mask_nonlinear == "softmax" and self.num_sources < 2:
            raise ConfigError(
                "ConvTasNetConfig: mask_nonlinear='softmax' (over sources) "
                f"needs num_sources >= 2, got {self.num_sources}"
            )


class _LayerNorm(nn.Module):
    """Normalise over ``dims`` with explicit ops, then a per-channel affine."""

    dims: tuple[int, ...]

    def __init__(self, channels: int, eps: float = 1e-8) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.ones(1, channels, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, T)
        mean = x.mean(dim=self.dims, keepdim=True)
        d = x - mean
        var = (d * d).mean(dim=self.dims, keepdim=True)
        y = d * torch.rsqrt(var + self.eps)
        return y * self.gamma + self.beta


class GlobalLayerNorm(_LayerNorm):
    """gLN: normalise over channels and time of each item, then affine.

    Written as explicit ops (mean, sub, mul, mean, add, rsqrt, mul, mul, add)
    so each intermediate can be quantized; the difference is squared with
    ``d * d`` rather than ``pow``.
    """

    dims = (1, 2)


class ChannelwiseLayerNorm(_LayerNorm):
    """cLN: normalise each frame over channels only (causal), then affine."""

    dims = (1,)


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "gLN":
        return GlobalLayerNorm(channels)
    if kind == "cLN":
        return ChannelwiseLayerNorm(channels)
    raise ConfigError(f"unknown norm {kind!r}; known: {_NORMS}")


class TemporalBlock(nn.Module):
    """1-D conv block: 1x1 B->H, PReLU, norm, depthwise dilated conv, PReLU,
    norm, then a residual 1x1 H->B and a skip 1x1 H->B."""

    def __init__(
        self, B: int, H: int, P: int, dilation: int, norm: str, causal: bool
    ) -> None:
        super().__init__()
        self.in_conv = nn.Conv1d(B, H, 1)
        self.prelu1 = nn.PReLU()
        self.norm1 = make_norm(norm, H)
        total_pad = (P - 1) * dilation
        if causal:
            self.pad = (total_pad, 0)
        else:
            self.pad = (total_pad // 2, total_pad - total_pad // 2)
        self.dconv = nn.Conv1d(H, H, P, dilation=dilation, groups=H)
        self.prelu2 = nn.PReLU()
        self.norm2 = make_norm(norm, H)
        self.res_conv = nn.Conv1d(H, B, 1)
        self.skip_conv = nn.Conv1d(H, B, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.norm1(self.prelu1(self.in_conv(x)))
        y = F.pad(y, self.pad)
        y = self.norm2(self.prelu2(self.dconv(y)))
        return x + self.res_conv(y), self.skip_conv(y)


class ConvTasNet(nn.Module):
    """Conv-TasNet: learned encoder, TCN mask estimator, shared decoder."""

    def __init__(self, config: ConvTasNetConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else ConvTasNetConfig()
        if not isinstance(cfg, ConvTasNetConfig):
            raise ConfigError(
                f"ConvTasNet expects a ConvTasNetConfig, got {type(cfg).__name__}"
            )
        self.config = cfg
        self.hop = cfg.L // 2

        self.encoder = nn.Conv1d(1, cfg.N, cfg.L, stride=self.hop, bias=False)
        self.encoder_act = nn.ReLU()

        self.in_norm = make_norm(cfg.norm, cfg.N)
        self.bottleneck = nn.Conv1d(cfg.N, cfg.B, 1)
        self.blocks = nn.ModuleList(
            TemporalBlock(cfg.B, cfg.H, cfg.P, 2**x, cfg.norm, cfg.causal)
            for _ in range(cfg.R)
            for x in range(cfg.X)
        )
        self.out_prelu = nn.PReLU()
        self.mask_conv = nn.Conv1d(cfg.B, cfg.num_sources * cfg.N, 1)
        if cfg.mask_nonlinear == "sigmoid":
            self.mask_act: nn.Module = nn.Sigmoid()
        elif cfg.mask_nonlinear == "relu":
            self.mask_act = nn.ReLU()
        else:
            self.mask_act = nn.Softmax(dim=1)  # over sources, see forward

        self.decoder = nn.ConvTranspose1d(cfg.N, 1, cfg.L, stride=self.hop, bias=False)

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        """mixture: (batch, time) -> estimates: (batch, num_sources, time)."""
        cfg = self.config
        batch = mixture.shape[0]
        length = mixture.shape[-1]
        # Pad at the end to a whole number of hops, always *more* than the
        # input length (one spare hop when it is already a multiple of the
        # hop) and to at least two frames (L + hop). Both keep torch.export
        # from specialising: with padded == length it would fix the final
        # crop on that equality, and a single frame is a size-1 dimension
        # (0/1 specialisation); either would reject other lengths.
        padded = max(cfg.L + self.hop, self.hop * (length // self.hop + 1))
        x = F.pad(mixture, (0, padded - length)).unsqueeze(1)  # (B, 1, T')

        w = self.encoder_act(self.encoder(x))  # (B, N, K)

        y = self.bottleneck(self.in_norm(w))
        skip_sum: torch.Tensor | None = None
        for block in self.blocks:
            y, skip = block(y)
            skip_sum = skip if skip_sum is None else skip_sum + skip
        assert skip_sum is not None  # R, X >= 1 is validated
        m = self.mask_conv(self.out_prelu(skip_sum))  # (B, S*N, K)
        frames = m.shape[-1]
        m = m.reshape(batch, cfg.num_sources, cfg.N, frames)
        m = self.mask_act(m)  # softmax over dim 1 = sources

        masked = w.unsqueeze(1) * m  # (B, S, N, K)
        masked = masked.reshape(batch * cfg.num_sources, cfg.N, frames)
        out = self.decoder(masked)[..., :length]  # (B*S, 1, time)
        return out.reshape(batch, cfg.num_sources, length)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements in ``model``."""
    return sum(
        p.numel() for p in model.parameters() if p.requires_grad or not trainable_only
    )
