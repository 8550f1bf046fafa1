"""A convolutional recurrent enhancer with a GRU bottleneck (GTCRN / CRUSE class), written as people write it.

torch.stft -> compressed magnitude |X|^0.3 -> a Conv2d encoder halving the
frequency axis at each level (BatchNorm, PReLU; causal in time: the kernel's
two frames are the current and the previous one) -> a GRU over frames on the
flattened bottleneck -> a mirrored ConvTranspose2d decoder with additive
skip connections -> a sigmoid magnitude mask -> torch.istft. Plain PyTorch:
``nn.GRU``, ``nn.BatchNorm2d``, ``torch.stft`` stay as written; the toolkit
swaps and splits them from outside (compressor/stages/spectral_split.py,
compressor/recurrent).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compressor.configs import JsonConfig
from compressor.errors import ConfigError


@dataclass(frozen=True)
class CRNConfig(JsonConfig):
    n_fft: int = 320  # 20 ms at 16 kHz
    hop: int = 160  # 10 ms
    channels: tuple[int, ...] = (16, 32, 32)
    hidden: int = 64  # GRU units
    compression: float = 0.3  # magnitude exponent of the features

    def __post_init__(self) -> None:
        if self.n_fft < 16 or not 0 < self.hop <= self.n_fft:
            raise ConfigError(f"CRNConfig: need n_fft >= 16 and 0 < hop <= n_fft, got {self.n_fft} / {self.hop}")
        if not self.channels or any(c < 1 for c in self.channels) or self.hidden < 1:
            raise ConfigError(f"CRNConfig: channels and hidden must be positive, got {self.channels} / {self.hidden}")
        if not 0 < self.compression <= 1:
            raise ConfigError(f"CRNConfig.compression must be in (0, 1], got {self.compression}")


def _halved(bins: int, levels: int) -> int:
    for _ in range(levels):
        bins = (bins + 1) // 2  # kernel 3, stride 2, padding 1
    return bins


class CRNGRU(nn.Module):
    """(batch, time) noisy waveform -> (batch, time) enhanced waveform."""

    def __init__(self, config: CRNConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or CRNConfig()
        self.register_buffer("window", torch.hann_window(cfg.n_fft))
        widths = (1, *cfg.channels)
        self.encoder = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], (3, 2), stride=(2, 1), padding=(1, 0)),
                          nn.BatchNorm2d(widths[i + 1]), nn.PReLU())
            for i in range(len(cfg.channels)))
        self.bottleneck_bins = _halved(cfg.n_fft // 2 + 1, len(cfg.channels))
        flat = cfg.channels[-1] * self.bottleneck_bins
        self.squeeze = nn.Linear(flat, cfg.hidden)
        self.gru = nn.GRU(cfg.hidden, cfg.hidden, batch_first=True)
        self.expand = nn.Linear(cfg.hidden, flat)
        decoder = []
        for i in reversed(range(len(cfg.channels))):
            last = i == 0
            decoder.append(nn.Sequential(
                nn.ConvTranspose2d(widths[i + 1], widths[i], (3, 1), stride=(2, 1), padding=(1, 0)),
                *(() if last else (nn.BatchNorm2d(widths[i]), nn.PReLU()))))
        self.decoder = nn.ModuleList(decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        spec = torch.stft(x, cfg.n_fft, cfg.hop, window=self.window, return_complex=True)  # (B, F, T)
        h = spec.abs().pow(cfg.compression).unsqueeze(1)  # (B, 1, F, T)
        skips = []
        for layer in self.encoder:
            h = layer(F.pad(h, (1, 0)))  # causal in time
            skips.append(h)
        b, c, f, t = h.shape
        z = h.reshape(b, c * f, t).transpose(1, 2)  # (B, T, C*F)
        z = self.expand(self.gru(self.squeeze(z))[0])
        h = z.transpose(1, 2).reshape(b, c, f, t)
        for layer, skip in zip(self.decoder, reversed(skips)):
            h = layer(h + skip)
        mask = torch.sigmoid(h.squeeze(1))
        return torch.istft(spec * mask, cfg.n_fft, cfg.hop, window=self.window, length=x.shape[-1])
