"""The level stage around a torch model, for training, calibration and evaluation.

The deployed file runs ``y = f(g x) / g`` per chunk (compressor/stages/level.py);
QAT and calibration must see the model the same way, so the quantizer ranges
are fitted to audio at the calibration level, whatever level the data has.
The gain carries no gradient (it is a measurement of the input, not a weight).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch
from torch import nn

from compressor.stages.level import LevelStage, run_with_gain


class LevelGainModel(nn.Module):
    """``inner`` with the level stage around it: mixture (B, T) in, (B, [S,] T) out at the input's level."""

    def __init__(self, inner: nn.Module, stage: LevelStage) -> None:
        super().__init__()
        self.inner = inner
        self.stage = stage

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        return run_with_gain(self.stage, self.inner, mixture)  # the gain is measured on a detached input

    # QuantizedModel's API, for code that treats any quantized model alike (as FQSEPipeline does).
    def set_mode(self, mode: str) -> None:
        self.inner.set_mode(mode)  # type: ignore[operator]

    @property
    def config(self) -> Any:
        return self.inner.config


def target_peak_of(batches: Iterable[torch.Tensor], quantile: float = 0.5) -> float:
    """The calibration level: a quantile (default the median) of the per-item peaks of ``batches``."""
    peaks = torch.cat([b.detach().reshape(b.shape[0], -1).abs().amax(dim=-1) for b in batches])
    peaks = peaks[peaks > 0]
    if peaks.numel() == 0:
        raise ValueError("the calibration audio is silent: no level to calibrate the level stage to")
    return float(torch.quantile(peaks.double(), quantile).clamp(max=1.0))


def at_level(batches: Iterable[torch.Tensor], stage: LevelStage) -> Iterator[torch.Tensor]:
    """Calibration batches as the model behind the stage sees them."""
    for batch in batches:
        yield batch * stage.gain(batch)


__all__ = ["LevelGainModel", "at_level", "target_peak_of"]
