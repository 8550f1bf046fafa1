"""The calibration audio every peer quantizer gets: the chunks our PTQ recipe calibrates on."""
from __future__ import annotations

import numpy as np

from compressor.data import open_dataset
from compressor.recipes.base import calibration_batches
from compressor.recipes.ptq import PTQConfig


def calibration_chunks(chunk_seconds: float = 2.0, data: str = "demo:train", seed: int = 0) -> list[np.ndarray]:
    """PTQ's default draw (16 batches of 4 mixtures, seed 0) as (chunk,) float32 arrays."""
    cfg = PTQConfig(seed=seed)
    dataset = open_dataset(data, segment_seconds=chunk_seconds, seed=seed)
    return [item.numpy().astype(np.float32) for batch in calibration_batches(dataset, cfg.calib_batches,
                                                                          cfg.batch_size, cfg.seed)
            for item in batch]
