"""A small dual-path enhancer with LSTM and transformer blocks (DPTNet class), written as people write it.

A Conv1d encoder (ReLU) -> LayerNorm -> frames cut into chunks of ``chunk``
-> per block: a bidirectional ``nn.LSTM`` inside each chunk, then a
transformer layer (``nn.MultiheadAttention``, ``nn.LayerNorm``, feed-forward)
across chunks -> a sigmoid mask on the encoder output -> a ConvTranspose1d
decoder. Plain PyTorch; the toolkit swaps the LSTM, attention and norms from
outside (compressor/quant/substitution.py, compressor/recurrent).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compressor.configs import JsonConfig
from compressor.errors import ConfigError


@dataclass(frozen=True)
class DualPathConfig(JsonConfig):
    filters: int = 64  # encoder channels
    kernel: int = 16  # encoder kernel (samples); stride kernel // 2
    chunk: int = 50  # frames per chunk
    hidden: int = 32  # LSTM units per direction
    heads: int = 4
    blocks: int = 1

    def __post_init__(self) -> None:
        if self.kernel < 2 or self.kernel % 2:
            raise ConfigError(f"DualPathConfig.kernel must be even and >= 2, got {self.kernel}")
        if min(self.filters, self.chunk, self.hidden, self.heads, self.blocks) < 1 or self.filters % self.heads:
            raise ConfigError("DualPathConfig: sizes must be positive and filters a multiple of heads")


class DualPathBlock(nn.Module):
    def __init__(self, cfg: DualPathConfig) -> None:
        super().__init__()
        n = cfg.filters
        self.intra = nn.LSTM(n, cfg.hidden, batch_first=True, bidirectional=True)
        self.intra_out = nn.Linear(2 * cfg.hidden, n)
        self.intra_norm = nn.LayerNorm(n)
        self.attention = nn.MultiheadAttention(n, cfg.heads, batch_first=True)
        self.attention_norm = nn.LayerNorm(n)
        self.feed_forward = nn.Sequential(nn.Linear(n, 2 * n), nn.ReLU(), nn.Linear(2 * n, n))
        self.feed_forward_norm = nn.LayerNorm(n)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, s, k, n = h.shape  # (batch, chunks, frames per chunk, features)
        z = h.reshape(b * s, k, n)
        z = self.intra_norm(z + self.intra_out(self.intra(z)[0]))
        z = z.reshape(b, s, k, n).transpose(1, 2).reshape(b * k, s, n)  # across chunks
        z = self.attention_norm(z + self.attention(z, z, z, need_weights=False)[0])
        z = self.feed_forward_norm(z + self.feed_forward(z))
        return z.reshape(b, k, s, n).transpose(1, 2)


class DualPathNet(nn.Module):
    """(batch, time) noisy waveform -> (batch, time) enhanced waveform."""

    def __init__(self, config: DualPathConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or DualPathConfig()
        self.encoder = nn.Conv1d(1, cfg.filters, cfg.kernel, stride=cfg.kernel // 2, bias=False)
        self.norm = nn.LayerNorm(cfg.filters)
        self.blocks = nn.ModuleList(DualPathBlock(cfg) for _ in range(cfg.blocks))
        self.mask = nn.Linear(cfg.filters, cfg.filters)
        self.decoder = nn.ConvTranspose1d(cfg.filters, 1, cfg.kernel, stride=cfg.kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        length = x.shape[-1]
        w = torch.relu(self.encoder(F.pad(x, (cfg.kernel, cfg.kernel)).unsqueeze(1)))  # (B, N, T')
        b, n, frames = w.shape
        chunks = (frames + cfg.chunk - 1) // cfg.chunk
        h = F.pad(self.norm(w.transpose(1, 2)), (0, 0, 0, chunks * cfg.chunk - frames))
        h = h.reshape(b, chunks, cfg.chunk, n)
        for block in self.blocks:
            h = block(h)
        mask = torch.sigmoid(self.mask(h.reshape(b, chunks * cfg.chunk, n)[:, :frames]))
        y = self.decoder(w * mask.transpose(1, 2)).squeeze(1)
        return y[:, cfg.kernel:cfg.kernel + length]
