"""Conv-TasNet with FQSE's input splitter front-end and Residual Quantization Block.

Plain PyTorch, no quantization code: ``compressor.quantize()`` is applied
from outside. The module takes what the deployed int8 model takes and
returns what it returns, so the quantized graph's input and output
quantizers sit exactly on the int8 tensors a runtime exchanges:
- input: the split mixture ``(B, 2, T)`` (``io_codec.split``) with the
  splitter, else the mixture ``(B, T)``;
- output: ``(Y_o, eps)``, each ``(B, S, T)``, with the RQB, else ``Y_o``.
``FQSEPipeline`` (pipeline.py) adds the split and the combiner around it.

Splitter front-end: the encoder grows to two input channels. Two
initialisations of channel 1 (the low byte):
- ``preserve``: from ``x = X_hi + (X_lo + 1) / 256`` (io_codec), the
  original encoder W gives ``conv(x, W) = conv(X_hi, W) + conv(X_lo, W / 256)
  + sum(W) / 256``; channel 1 = W / 256 and a bias of sum(W) / 256 keep the
  float function exactly (the padding of channel 1 is the code of a zero
  sample, -1, for the same reason).
- ``paper``: channel 1 Gaussian with the mean and variance of W, no bias.
Measured on the demo (150 QAT steps): ``preserve`` 14.43 dB SI-SNR,
``paper`` -9.11 dB (its full-scale noise on the low byte swamps the signal
and QAT does not recover in that time), so ``preserve`` is the default.
Two forms of the grown encoder (``split_encoder``):
- ``one_conv`` (the paper's): one Conv1d with two input channels. int8
  weights are per *output* channel, so both input channels share one step;
  W / 256 is below half of it (at most 127/256 of a code), so with the
  ``preserve`` init channel 1 quantizes to 0 and the model in effect sees
  the high byte alone (a fixed 1/128 grid).
- ``two_convs`` (default): one Conv1d per byte, summed. Each has its own
  per-channel weight scales, so the low byte's W / 256 keeps all 8 bits and
  the int8 graph sees the 16-bit input. The MACs are the same as
  ``one_conv``'s; the int8 graph has one more conv output and an add.

RQB (eq. 4) on the decoder D: ``Y~_i = Q(E~ Q(Y_o))``, ``U = Q(Y_i - Y~_i)``,
``eps = Q(D~ U)``; D~ starts as ``gain * D`` so that eps estimates ``gain``
times the output's quantization residual. E~ starts as
- ``pinv``: half the pseudo-inverse of D's frame basis, a right inverse of D
  under 50 % overlap-add (D E~ y = y except in the first and last hop), so
  eps starts as gain * (D Y_i - Q(Y_o)): the float function is kept and
  only the quantization residual remains;
- ``fit``: ``pinv`` plus, in D's null space, the least-squares prediction of
  Y_i from the output frame (``fit_rqb_encoder``, on calibration data): still
  a right inverse of D, but U = Y_i - E~ Y_o is smaller, so U's int8 grid is
  finer and eps more exact;
- ``paper``: the pre-trained encoder's weights.
All come from the pre-trained model's parameters, as the paper asks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from compressor.configs import JsonConfig
from compressor.errors import ConfigError
from compressor.fqse.io_codec import DEFAULT_GAIN, INPUT_BITS
from compressor.zoo.conv_tasnet import ConvTasNet

SPLITTER_INITS = ("preserve", "paper")
SPLIT_ENCODERS = ("two_convs", "one_conv")
RQB_INITS = ("pinv", "fit", "paper")
# Padding value of the low channel: the split of a zero sample is (0, -128) / 128.
_LOW_PAD = -1.0


@dataclass(frozen=True)
class FQSEModelConfig(JsonConfig):
    splitter: bool = True
    rqb: bool = True
    splitter_init: str = "preserve"
    split_encoder: str = "two_convs"
    rqb_init: str = "pinv"
    gain: float = DEFAULT_GAIN
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split_encoder not in SPLIT_ENCODERS:
            raise ConfigError(f"split_encoder must be one of {SPLIT_ENCODERS}, got {self.split_encoder!r}")
        if self.splitter_init not in SPLITTER_INITS:
            raise ConfigError(f"splitter_init must be one of {SPLITTER_INITS}, got {self.splitter_init!r}")
        if self.rqb_init not in RQB_INITS:
            raise ConfigError(f"rqb_init must be one of {RQB_INITS}, got {self.rqb_init!r}")
        if not self.gain > 0:
            raise ConfigError(f"the RQB gain must be positive, got {self.gain!r}")


class FQSEConvTasNet(nn.Module):
    """A pre-trained ConvTasNet with the splitter and/or RQB added (see the module docstring)."""

    def __init__(self, base: ConvTasNet, config: FQSEModelConfig | None = None) -> None:
        super().__init__()
        if not isinstance(base, ConvTasNet):
            raise ConfigError(f"FQSE's splitter and RQB are built for ConvTasNet, got {type(base).__name__}")
        self.config = config or FQSEModelConfig()
        self.base = base
        cfg = base.config
        self.hop = base.hop
        gen = torch.Generator().manual_seed(self.config.seed)
        if self.config.splitter:
            encoder = nn.Conv1d(2, cfg.N, cfg.L, stride=self.hop, bias=True)
            init_split_encoder(encoder, base.encoder.weight.detach(), self.config.splitter_init, gen)
            if self.config.split_encoder == "one_conv":
                self.split_encoder = encoder
            else:
                self.split_encoder_hi, self.split_encoder_lo = split_per_byte(encoder)
        if self.config.rqb:
            self.rqb_encoder = nn.Conv1d(1, cfg.N, cfg.L, stride=self.hop, bias=False)
            self.rqb_decoder = nn.ConvTranspose1d(cfg.N, 1, cfg.L, stride=self.hop, bias=False)
            init_rqb(self.rqb_encoder, self.rqb_decoder, base, self.config.rqb_init, self.config.gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        base, cfg = self.base, self.base.config
        batch, length = x.shape[0], x.shape[-1]
        # The zoo model's padding rule (see ConvTasNet.forward for why).
        padded = max(cfg.L + self.hop, self.hop * (length // self.hop + 1))
        if self.config.splitter:
            hi = F.pad(x[:, 0:1], (0, padded - length))
            lo = F.pad(x[:, 1:2], (0, padded - length), value=_LOW_PAD)
            if self.config.split_encoder == "one_conv":
                w = base.encoder_act(self.split_encoder(torch.cat([hi, lo], dim=1)))
            else:
                w = base.encoder_act(self.split_encoder_hi(hi) + self.split_encoder_lo(lo))
        else:
            w = base.encoder_act(base.encoder(F.pad(x, (0, padded - length)).unsqueeze(1)))

        # ConvTasNet's mask estimation, unchanged.
        y = base.bottleneck(base.in_norm(w))
        skip_sum: torch.Tensor | None = None
        for block in base.blocks:
            y, skip = block(y)
            skip_sum = skip if skip_sum is None else skip_sum + skip
        assert skip_sum is not None
        m = base.mask_conv(base.out_prelu(skip_sum))
        frames = m.shape[-1]
        m = base.mask_act(m.reshape(batch, cfg.num_sources, cfg.N, frames))
        y_i = (w.unsqueeze(1) * m).reshape(batch * cfg.num_sources, cfg.N, frames)

        y_o_full = base.decoder(y_i)  # (B*S, 1, padded): its quantizer is Q(Y_o)
        y_o = y_o_full[..., :length].reshape(batch, cfg.num_sources, length)
        if not self.config.rqb:
            return y_o
        u = y_i - self.rqb_encoder(y_o_full)  # eq. 4a, 4b
        eps = self.rqb_decoder(u)[..., :length]  # eq. 4c
        return y_o, eps.reshape(batch, cfg.num_sources, length)


@torch.no_grad()
def init_split_encoder(conv: nn.Conv1d, weight: torch.Tensor, how: str, gen: torch.Generator) -> None:
    """Channel 0: the original weights; channel 1 and the bias as ``how`` says."""
    conv.weight[:, 0:1].copy_(weight)
    if how == "preserve":
        low_weight = 2.0 ** -INPUT_BITS
        conv.weight[:, 1:2].copy_(weight * low_weight)
        conv.bias.copy_(weight.sum(dim=(1, 2)) * low_weight)
    elif how == "paper":
        noise = torch.randn(weight.shape, generator=gen, dtype=weight.dtype)
        conv.weight[:, 1:2].copy_(weight.mean() + weight.std() * noise)
        conv.bias.zero_()
    else:
        raise ConfigError(f"splitter_init must be one of {SPLITTER_INITS}, got {how!r}")


@torch.no_grad()
def split_per_byte(encoder: nn.Conv1d) -> tuple[nn.Conv1d, nn.Conv1d]:
    """A two-input-channel encoder as two one-channel convs (high byte with the bias, low byte without)."""
    hi = nn.Conv1d(1, encoder.out_channels, encoder.kernel_size[0], stride=encoder.stride[0], bias=True)
    lo = nn.Conv1d(1, encoder.out_channels, encoder.kernel_size[0], stride=encoder.stride[0], bias=False)
    hi.weight.copy_(encoder.weight[:, 0:1])
    hi.bias.copy_(encoder.bias)
    lo.weight.copy_(encoder.weight[:, 1:2])
    return hi, lo


@torch.no_grad()
def init_rqb(encoder: nn.Conv1d, decoder: nn.ConvTranspose1d, base: ConvTasNet, how: str, gain: float) -> None:
    decoder.weight.copy_(base.decoder.weight * gain)
    if how in ("pinv", "fit"):  # "fit" is refined on data by fit_rqb_encoder
        encoder.weight.copy_(decoder_right_inverse(base.decoder.weight.detach(), base.config.L // base.hop))
    elif how == "paper":
        encoder.weight.copy_(base.encoder.weight)
    else:
        raise ConfigError(f"rqb_init must be one of {RQB_INITS}, got {how!r}")


def decoder_right_inverse(weight: torch.Tensor, overlap: int) -> torch.Tensor:
    """Analysis filters A (N, 1, L) with D(A(y)) = y under ``overlap``-fold overlap-add.

    D's frame synthesis is W^T (L x N); each interior sample is the sum of
    ``overlap`` frames, so W^T A = I / overlap, i.e. A = pinv(W^T) / overlap.
    """
    w = weight[:, 0, :].double()  # (N, L)
    if w.shape[0] < w.shape[1]:
        raise ConfigError(f"the decoder has fewer filters ({w.shape[0]}) than taps ({w.shape[1]}): no right inverse")
    inverse = torch.linalg.pinv(w.T) / overlap  # (N, L)
    return inverse.to(weight.dtype).unsqueeze(1)


@torch.no_grad()
def fit_rqb_encoder(core: FQSEConvTasNet, inputs: Iterable[torch.Tensor], ridge: float = 1e-6) -> None:
    """E~ = pinv(W^T) / overlap + P_null B, B the least-squares map from output frames to Y_i.

    P_null projects onto the null space of W^T, so D E~ = I still holds (the
    float function is kept) while E~ Y_o follows Y_i as closely as a linear
    map of the output frame can: U = Y_i - E~ Y_o, and with it the step of
    U's int8 quantizer, shrinks.
    """
    base, cfg = core.base, core.base.config
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    handle = base.decoder.register_forward_hook(lambda m, i, o: captured.append((i[0], o)))
    try:
        c_yy = torch.zeros(cfg.L, cfg.L, dtype=torch.float64)
        c_fy = torch.zeros(cfg.N, cfg.L, dtype=torch.float64)
        for x in inputs:
            captured.clear()
            core(x)
            y_i, y_o = captured[0]
            feats = y_i.double().transpose(1, 2).reshape(-1, cfg.N)  # (B*S*K, N)
            frames = y_o.double()[:, 0].unfold(-1, cfg.L, core.hop).reshape(-1, cfg.L)  # (B*S*K, L)
            c_yy += frames.T @ frames
            c_fy += feats.T @ frames
    finally:
        handle.remove()
    w_t = base.decoder.weight.detach()[:, 0, :].double().T  # (L, N)
    pinv = torch.linalg.pinv(w_t)  # (N, L)
    p_null = torch.eye(cfg.N, dtype=torch.float64) - pinv @ w_t
    regression = c_fy @ torch.linalg.inv(c_yy + ridge * torch.trace(c_yy) / cfg.L * torch.eye(cfg.L, dtype=torch.float64))
    weight = pinv / (cfg.L // core.hop) + p_null @ regression
    core.rqb_encoder.weight.copy_(weight.to(core.rqb_encoder.weight.dtype).unsqueeze(1))


__all__ = ["FQSEConvTasNet", "FQSEModelConfig", "RQB_INITS", "SPLITTER_INITS", "SPLIT_ENCODERS", "decoder_right_inverse",
           "fit_rqb_encoder"]
