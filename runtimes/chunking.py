"""Long audio in fixed-length chunks with linear cross-fades (numpy only).

Kept free of every project import: ``compress bench --pack`` copies this
file beside its device runner, which runs where only numpy and one
runtime are installed.
"""
from __future__ import annotations

import numpy as np


def overlap_add(run_chunk, x: np.ndarray, chunk: int, overlap: float, sources: int) -> np.ndarray:
    """Run ``run_chunk`` on overlapping chunks and cross-fade them back together.

    Weights are a trapezoid per chunk (linear ramps over the overlap), and
    the output is divided by their sum, so any two neighbouring chunks blend
    with weights summing to one and a signal the model passes through
    unchanged comes back unchanged.
    """
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    n = x.shape[-1]
    fade = int(round(chunk * overlap))
    hop = chunk - fade
    starts = list(range(0, max(n - fade, 1), hop)) if n > chunk else [0]
    if n > chunk and starts[-1] + chunk < n:
        starts.append(n - chunk)  # the last chunk ends at the signal's end (no padding mid-signal)
    out = np.zeros((sources, n), np.float32)
    weight = np.zeros(n, np.float32)
    ramp = (np.arange(1, fade + 1, dtype=np.float32) / (fade + 1)) if fade else np.zeros(0, np.float32)
    for k, start in enumerate(starts):
        piece = x[start:start + chunk]
        length = piece.shape[-1]
        if length < chunk:
            piece = np.pad(piece, (0, chunk - length))
        y = run_chunk(piece)[:, :length]
        w = np.ones(length, np.float32)
        if fade and k > 0:
            w[: min(fade, length)] = ramp[: min(fade, length)]
        if fade and k < len(starts) - 1:
            tail = min(fade, length)
            w[length - tail:] = np.minimum(w[length - tail:], ramp[::-1][fade - tail:])
        out[:, start:start + length] += y * w
        weight[start:start + length] += w
    return out / np.maximum(weight, 1e-12)


__all__ = ["overlap_add"]
