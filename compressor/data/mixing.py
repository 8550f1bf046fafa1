"""Mixing speech and noise at a chosen SNR (shared by MixingDataset and the demo builder)."""

from __future__ import annotations

import math

import numpy as np

from compressor.data.audio import rms

#: Peak above which a mixture is scaled down (speech and noise together).
MAX_PEAK = 0.99


def loop_crop(x: np.ndarray, length: int, offset: int = 0) -> np.ndarray:
    """``length`` samples of ``x`` starting at ``offset``, looping ``x`` if it is too short."""
    n = len(x)
    if n == 0:
        raise ValueError("cannot loop an empty signal")
    idx = (offset + np.arange(length)) % n
    return x[idx]


def crop_or_pad(x: np.ndarray, length: int, offset: int = 0) -> np.ndarray:
    """``length`` samples from ``offset`` (last axis); zero-padded at the end if too short."""
    out = x[..., offset : offset + length]
    if out.shape[-1] < length:
        pad = [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])]
        out = np.pad(out, pad)
    return out


def mix_at_snr(speech: np.ndarray, noise: np.ndarray, snr_db: float, max_peak: float = MAX_PEAK):
    """Scale ``noise`` so that speech-to-noise ratio is ``snr_db`` and add it.

    scale = rms(speech) / rms(noise) / 10^(snr/20).  If the mixture's peak is
    above ``max_peak`` speech and noise are scaled down together (the SNR is
    unchanged).  Returns ``(mixture, speech, scaled_noise)`` as float32 arrays
    of the same length; the returned speech is the target to use.
    """
    speech = np.asarray(speech, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if speech.shape != noise.shape:
        raise ValueError(f"speech {speech.shape} and noise {noise.shape} differ in shape")
    rs, rn = rms(speech), rms(noise)
    if rn == 0.0:
        scaled = np.zeros_like(noise)
    elif rs == 0.0:
        # No speech to set the level from: put the noise at -30 dBFS.
        scaled = noise * (10 ** (-30 / 20) / rn)
    else:
        scaled = noise * (rs / rn / 10 ** (snr_db / 20.0))
    mixture = speech + scaled
    peak = float(np.max(np.abs(mixture))) if mixture.size else 0.0
    if peak > max_peak:
        g = max_peak / peak
        mixture, speech, scaled = mixture * g, speech * g, scaled * g
    return mixture.astype(np.float32), speech.astype(np.float32), scaled.astype(np.float32)


def colored_noise(kind: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink (1/f) or brown (1/f^2) noise with unit RMS, float32."""
    white = rng.standard_normal(length)
    if kind == "white":
        x = white
    elif kind in ("pink", "brown"):
        spec = np.fft.rfft(white)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec = spec / (np.sqrt(f) if kind == "pink" else f)
        spec[0] = 0.0
        x = np.fft.irfft(spec, n=length)
    else:
        raise ValueError(f"unknown noise colour {kind!r} (white, pink, brown)")
    x = x - x.mean()
    return (x / max(math.sqrt(float(np.mean(x * x))), 1e-12)).astype(np.float32)
