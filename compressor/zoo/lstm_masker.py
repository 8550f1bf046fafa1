"""A two-stage LSTM mask estimator (DTLN class), written as people write it.

torch.stft -> log magnitude -> stage 1: an LSTM over frames and a sigmoid
mask m1 -> stage 2: the masked features through a 1x1 encoder, LayerNorm, a
second LSTM and a sigmoid mask m2 -> torch.istft of X * m1 * m2.

DTLN's second stage works on time-domain frames (an irfft inside the model);
here both stages work on the STFT, because the toolkit deploys one
STFT / iSTFT pair around an int8 network (compressor/stages/spectral_split.py).
Plain PyTorch: ``nn.LSTM``, ``nn.LayerNorm``, ``torch.stft`` as written.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compressor.configs import JsonConfig
from compressor.errors import ConfigError


@dataclass(frozen=True)
class LSTMMaskerConfig(JsonConfig):
    n_fft: int = 512  # 32 ms at 16 kHz, as DTLN
    hop: int = 256
    hidden: int = 64  # LSTM units per stage
    encoded: int = 64  # stage 2's 1x1 encoder width

    def __post_init__(self) -> None:
        if self.n_fft < 16 or not 0 < self.hop <= self.n_fft:
            raise ConfigError(f"LSTMMaskerConfig: need n_fft >= 16 and 0 < hop <= n_fft, got {self.n_fft} / {self.hop}")
        if self.hidden < 1 or self.encoded < 1:
            raise ConfigError(f"LSTMMaskerConfig: hidden and encoded must be positive, got {self.hidden} / {self.encoded}")


class LSTMMasker(nn.Module):
    """(batch, time) noisy waveform -> (batch, time) enhanced waveform."""

    def __init__(self, config: LSTMMaskerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or LSTMMaskerConfig()
        bins = cfg.n_fft // 2 + 1
        self.register_buffer("window", torch.hann_window(cfg.n_fft))
        self.lstm1 = nn.LSTM(bins, cfg.hidden, batch_first=True)
        self.mask1 = nn.Linear(cfg.hidden, bins)
        self.encoder = nn.Conv1d(bins, cfg.encoded, 1)
        self.norm = nn.LayerNorm(cfg.encoded)
        self.lstm2 = nn.LSTM(cfg.encoded, cfg.hidden, batch_first=True)
        self.mask2 = nn.Linear(cfg.hidden, cfg.encoded)
        self.decoder = nn.Conv1d(cfg.encoded, bins, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        spec = torch.stft(x, cfg.n_fft, cfg.hop, window=self.window, return_complex=True)  # (B, F, T)
        features = torch.log(spec.abs() + 1e-4)
        m1 = torch.sigmoid(self.mask1(self.lstm1(features.transpose(1, 2))[0])).transpose(1, 2)  # (B, F, T)
        encoded = self.encoder(features * m1)  # (B, E, T)
        h = self.norm(encoded.transpose(1, 2))
        m2 = torch.sigmoid(self.mask2(self.lstm2(h)[0])).transpose(1, 2)  # (B, E, T)
        m2 = torch.sigmoid(self.decoder(encoded * m2))  # back to bins
        return torch.istft(spec * (m1 * m2), cfg.n_fft, cfg.hop, window=self.window, length=x.shape[-1])
