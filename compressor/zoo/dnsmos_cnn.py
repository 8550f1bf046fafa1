"""DNSMOS-style CNN speech-quality predictor (Nilsson et al., BAM paper, Table 1).

Input: a log-power mel spectrogram, shape (batch, frames, mels); a 9 s clip
at 16 kHz with a 40 ms Hann window and 50% overlap gives 449 frames x 120
mels (the front-end is compressor/bam/frontend.py, numpy, outside the model
so an int8 file never holds a float STFT). Four 3x3 conv blocks (32, 32, 32,
64 channels, 'same' padding) with 2x2 max-pooling and dropout after the first
three, a global pool, and a 64-64-1 dense head. Output: one score per clip.

The conv activations are modules (``act1`` .. ``act4``) so a recipe can swap
them from outside (the bam recipe puts Heaviside with a surrogate gradient
there); the model itself holds no quantization code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from compressor.configs import JsonConfig
from compressor.errors import ConfigError

POOLS = ("max", "avg")


@dataclass(frozen=True)
class DnsmosConfig(JsonConfig):
    n_mels: int = 120
    channels: tuple[int, ...] = (32, 32, 32, 64)
    hidden: int = 64
    dropout: float = 0.3
    global_pool: str = "max"  # the paper: max for the float model, avg for binarized ones

    def __post_init__(self) -> None:
        if self.global_pool not in POOLS:
            raise ConfigError(f"DnsmosConfig.global_pool must be one of {POOLS}, got {self.global_pool!r}")
        if len(self.channels) != 4 or any(c < 1 for c in self.channels):
            raise ConfigError(f"DnsmosConfig.channels must be 4 positive widths, got {self.channels!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"DnsmosConfig.dropout must be in [0, 1), got {self.dropout!r}")
        object.__setattr__(self, "channels", tuple(self.channels))  # JSON gives a list


class DnsmosCNN(nn.Module):
    """(batch, frames, mels) log-mel -> (batch, 1) predicted quality."""

    def __init__(self, config: DnsmosConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DnsmosConfig()
        widths = (1, *config.channels)
        for k in range(4):
            setattr(self, f"conv{k + 1}", nn.Conv2d(widths[k], widths[k + 1], 3, padding=1))
            setattr(self, f"act{k + 1}", nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(config.dropout)
        self.fc1 = nn.Linear(config.channels[-1], config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.hidden)
        self.fc3 = nn.Linear(config.hidden, 1)
        self.head_act = nn.ReLU()

    def features(self, mel: torch.Tensor) -> list[torch.Tensor]:
        """The four conv blocks' activation maps (after the activation, before pooling)."""
        x = mel.unsqueeze(1)
        maps = []
        for k in range(1, 5):
            x = getattr(self, f"act{k}")(getattr(self, f"conv{k}")(x))
            maps.append(x)
            if k < 4:
                x = self.drop(self.pool(x))
        return maps

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.features(mel)[-1]
        if self.config.global_pool == "max":
            x = torch.amax(x, dim=(2, 3))
        else:
            x = torch.mean(x, dim=(2, 3))
        x = self.head_act(self.fc1(x))
        x = self.head_act(self.fc2(x))
        return self.fc3(x)


def layer_costs(config: DnsmosConfig, frames: int = 449) -> list[dict[str, int | str]]:
    """Per layer: parameters, multiply-adds and output activations, counted two ways.

    ``macs_torchinfo`` is what the paper's Table 1 reports (torchinfo counts a
    conv as parameters x output positions, so each bias counts as one MAC per
    position); ``macs`` counts only the weight multiplies (k*k*c_in per output).
    ``binary_input`` says whether the layer's input is a binary activation map
    in the binarized model (conv2..conv4 read Heaviside outputs; conv1 reads
    the mel spectrogram and the dense head reads averages).
    """
    rows: list[dict[str, int | str]] = []
    h, w = frames, config.n_mels
    widths = (1, *config.channels)
    for k in range(4):
        cin, cout = widths[k], widths[k + 1]
        params = cout * cin * 9 + cout
        positions = h * w
        rows.append({"layer": f"conv{k + 1}", "params": params, "macs_torchinfo": params * positions,
                     "macs": cout * cin * 9 * positions, "activations": cout * positions, "binary_input": k > 0,
                     "shape": f"{h}x{w}x{cout}"})
        if k < 3:
            h, w = h // 2, w // 2
    dims = (config.channels[-1], config.hidden, config.hidden, 1)
    for k in range(3):
        params = dims[k] * dims[k + 1] + dims[k + 1]
        rows.append({"layer": f"fc{k + 1}", "params": params, "macs_torchinfo": params, "macs": dims[k] * dims[k + 1],
                     "activations": dims[k + 1], "binary_input": False, "shape": f"1x{dims[k + 1]}"})
    return rows
