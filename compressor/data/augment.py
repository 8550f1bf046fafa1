"""Level and spectral-tilt augmentation: training and calibration audio that looks like a device's.

A device hears speech from -45 to -10 dBFS and noise from white to brown.
The demo data is quiet (clean speech near -33 dBFS) and its noises few, so
quantizer ranges fitted on it alone clip on louder audio and on low-frequency
noise. These wrappers draw per item, per epoch, from
``default_rng([seed, epoch, index, tag])``, so training stays resumable bit
for bit:

- ``LevelAugmented``: the whole item (mixture and sources) times a gain drawn
  uniformly in dB; the mixture's peak is held at ``MAX_PEAK`` (an ADC clips);
- ``TiltAugmented``: the item's noise (mixture minus the sources) through a
  first-order filter ``y[n] = x[n] + a y[n-1]`` with ``a`` drawn in
  ``tilt_range`` (a > 0 tilts it towards brown, a < 0 towards blue), rescaled
  to its old energy, so the SNR stays the item's;
- ``ClipAugmented``: a share of the items played louder than full scale and
  hard-clipped, as an ADC clips loud speech (the mixture only; the sources
  keep their shape, scaled by the same gain).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy.signal import lfilter
from torch.utils.data import Dataset

from compressor.data.mixing import MAX_PEAK
from compressor.data.wrapped import WrappedDataset
from compressor.errors import DataError


class _PerItemDraw(WrappedDataset):
    tag: int = 0

    def __init__(self, base: Dataset, seed: int) -> None:
        super().__init__(base)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        super().set_epoch(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index), self.tag])


def _check_range(name: str, bounds: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise DataError(f"{name} must be (low, high) with low <= high, got {bounds}")
    return lo, hi


class LevelAugmented(_PerItemDraw):
    """Each item scaled by a gain uniform in ``gain_range_db`` (mixture peak kept under full scale)."""

    tag = 0x1E7E1

    def __init__(self, base: Dataset, gain_range_db: tuple[float, float] = (-12.0, 24.0), seed: int = 0) -> None:
        super().__init__(base, seed)
        self.gain_range_db = _check_range("level augmentation range (dB)", gain_range_db)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        gain = 10.0 ** (self.rng(index).uniform(*self.gain_range_db) / 20.0)
        peak = float(item["mixture"].abs().max())
        if peak * gain > MAX_PEAK:
            gain = MAX_PEAK / peak
        item["mixture"] = item["mixture"] * gain
        item["sources"] = item["sources"] * gain
        return item


def tilt(noise: np.ndarray, coefficient: float) -> np.ndarray:
    """``noise`` through ``y[n] = x[n] + a y[n-1]``, rescaled to its own energy."""
    if coefficient == 0.0:
        return noise
    y = lfilter([1.0], [1.0, -coefficient], noise.astype(np.float64))
    energy, new = float(np.sum(noise.astype(np.float64) ** 2)), float(np.sum(y * y))
    return (y * math.sqrt(energy / new)).astype(np.float32) if new > 0 else noise


class TiltAugmented(_PerItemDraw):
    """Each item's noise given a random spectral tilt (same SNR); mixture peak kept under full scale."""

    tag = 0x717

    def __init__(self, base: Dataset, tilt_range: tuple[float, float] = (-0.7, 0.98), seed: int = 0) -> None:
        super().__init__(base, seed)
        lo, hi = _check_range("tilt augmentation range", tilt_range)
        if lo <= -1.0 or hi >= 1.0:
            raise DataError(f"tilt coefficients must lie in (-1, 1) for a stable filter, got {tilt_range}")
        self.tilt_range = (lo, hi)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        sources = item["sources"].numpy()
        target = sources.sum(axis=0)
        noise = item["mixture"].numpy() - target
        mixture = target + tilt(noise, float(self.rng(index).uniform(*self.tilt_range)))
        peak = float(np.max(np.abs(mixture)))
        gain = MAX_PEAK / peak if peak > MAX_PEAK else 1.0
        item["mixture"] = torch.from_numpy((mixture * gain).astype(np.float32))
        item["sources"] = torch.from_numpy((sources * gain).astype(np.float32))
        return item


class ClipAugmented(_PerItemDraw):
    """A share of the items driven ``depth_db`` (uniform) past full scale and hard-clipped at ``MAX_PEAK``."""

    tag = 0xC11F

    def __init__(self, base: Dataset, share: float, depth_db: tuple[float, float] = (0.0, 12.0), seed: int = 0) -> None:
        super().__init__(base, seed)
        if not 0.0 <= share <= 1.0:
            raise DataError(f"clip augmentation share must be in [0, 1], got {share}")
        self.share = float(share)
        self.depth_db = _check_range("clip augmentation depth (dB)", depth_db)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        rng = self.rng(index)
        if rng.uniform() < self.share:
            mixture = item["mixture"]
            peak = float(mixture.abs().max())
            if peak > 0:
                gain = MAX_PEAK * 10.0 ** (rng.uniform(*self.depth_db) / 20.0) / peak
                item["mixture"] = (mixture * gain).clamp(-MAX_PEAK, MAX_PEAK)
                item["sources"] = item["sources"] * gain
        return item


__all__ = ["ClipAugmented", "LevelAugmented", "TiltAugmented", "tilt"]
