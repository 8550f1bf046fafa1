"""Rescaling the noise of a mixture to a chosen SNR (FQSE eq. 2), and datasets built on it.

``y = x + alpha n`` with ``n = mixture - x`` the item's own noise and
``alpha = sqrt(10^(-beta/10) |x|^2 / |n|^2)``, so the new mixture's SNR is
exactly beta dB. Used two ways:
- ``SNRAugmented``: training, a fresh beta per item per epoch, uniform over
  a range (FQSE's refined QAT strategy);
- ``NoiseRescaled``: evaluation, every item of a test set at one beta (the
  sweep of FQSE's figures 1a and 3).
If the rescaled mixture would clip (peak above ``MAX_PEAK``, e.g. at -6 dB),
speech and noise are scaled down together: the SNR stays beta, SI-SNR is
scale-invariant, and a 16-bit input stays representable.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from compressor.data.mixing import MAX_PEAK
from compressor.data.wrapped import WrappedDataset
from compressor.errors import DataError


def rescale_noise(mixture: np.ndarray, clean: np.ndarray, snr_db: float,
                  max_peak: float = MAX_PEAK) -> tuple[np.ndarray, float]:
    """(new mixture at ``snr_db``, gain): the clean target becomes ``gain * clean``.

    ``gain`` < 1 only where the rescaled mixture would clip. An item without
    speech or without noise (SNR undefined) comes back unchanged.
    """
    x = np.asarray(clean, dtype=np.float64)
    n = np.asarray(mixture, dtype=np.float64) - x
    ps, pn = float(np.sum(x * x)), float(np.sum(n * n))
    if ps == 0.0 or pn == 0.0:
        return np.asarray(mixture, dtype=np.float32), 1.0
    alpha = math.sqrt(10.0 ** (-snr_db / 10.0) * ps / pn)
    y = x + alpha * n
    peak = float(np.max(np.abs(y)))
    gain = max_peak / peak if peak > max_peak else 1.0
    return (y * gain).astype(np.float32), gain


class _Rescaled(WrappedDataset):
    """Wraps a dataset of ``{"mixture", "sources", "snr_db", ...}`` items."""

    def _snr(self, index: int) -> float:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        sources = item["sources"].numpy()
        target = sources.sum(axis=0)
        snr = self._snr(index)
        mixture, gain = rescale_noise(item["mixture"].numpy(), target, snr)
        item["mixture"] = torch.from_numpy(mixture)
        item["sources"] = torch.from_numpy((sources * gain).astype(np.float32))
        item["snr_db"] = float(snr)
        return item


class SNRAugmented(_Rescaled):
    """Each item's noise rescaled to an SNR drawn uniformly from ``snr_range_db``.

    The draw comes from ``default_rng([seed, epoch, index])`` (a stream apart
    from the base dataset's), so training stays resumable bit for bit.
    """

    def __init__(self, base: Dataset, snr_range_db: tuple[float, float] = (-6.0, 18.0), seed: int = 0) -> None:
        super().__init__(base)
        lo, hi = (float(v) for v in snr_range_db)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise DataError(f"SNR augmentation range must be (low, high) with low <= high, got {snr_range_db}")
        self.snr_range_db = (lo, hi)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        super().set_epoch(epoch)

    def _snr(self, index: int) -> float:
        # 0x5e5: a constant that keeps this stream apart from the base dataset's.
        rng = np.random.default_rng([self.seed, self.epoch, int(index), 0x5E5])
        return float(rng.uniform(*self.snr_range_db))


class NoiseRescaled(_Rescaled):
    """Every item of ``base`` with its noise rescaled to ``snr_db``."""

    def __init__(self, base: Dataset, snr_db: float) -> None:
        super().__init__(base)
        self.snr_db = float(snr_db)

    def _snr(self, index: int) -> float:
        return self.snr_db


__all__ = ["NoiseRescaled", "SNRAugmented", "rescale_noise"]
