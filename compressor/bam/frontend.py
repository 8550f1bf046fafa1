"""Log-power mel spectrogram front-end of the quality predictor, in numpy.

It runs outside the model (training, the PyTorch simulation and every
runtime call the same function), so the int8 file holds no float STFT; its
parameters travel in the exported file's metadata (``model.frontend``).
The defaults are the BAM paper's: 16 kHz, 40 ms Hann window, 50% overlap,
120 Slaney mel bands (at 40 ms the 25 Hz bin spacing equals the mel spacing
below 1 kHz, so no band is empty), no centre padding (9 s -> 449 frames).
Power in dB relative to the clip's maximum, floored 80 dB below it, then
mapped to about [-1, 1] (as DNSMOS does), a range int8 holds well.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from compressor.configs import JsonConfig
from compressor.errors import ConfigError, DataError


@dataclass(frozen=True)
class MelConfig(JsonConfig):
    sample_rate: int = 16000
    window_ms: float = 40.0
    hop_ms: float = 20.0
    n_mels: int = 120
    top_db: float = 80.0
    clip_seconds: float = 9.0  # the model's input length

    def __post_init__(self) -> None:
        if self.hop_ms <= 0 or self.window_ms < self.hop_ms or self.n_mels < 1:
            raise ConfigError(f"MelConfig: need 0 < hop_ms <= window_ms and n_mels >= 1, got {self}")

    @property
    def win(self) -> int:
        return int(round(self.sample_rate * self.window_ms / 1000))

    @property
    def hop(self) -> int:
        return int(round(self.sample_rate * self.hop_ms / 1000))

    @property
    def clip_samples(self) -> int:
        return int(round(self.sample_rate * self.clip_seconds))

    def frames(self, samples: int | None = None) -> int:
        samples = self.clip_samples if samples is None else samples
        return 1 + (samples - self.win) // self.hop


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, np.float64)
    return np.where(m >= 15.0, 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0)), m * (200.0 / 3))


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters with Slaney area normalisation (librosa's default)."""
    fft_hz = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_mels + 2))
    lower = (fft_hz[None, :] - edges[:-2, None]) / np.diff(edges)[:-1, None]
    upper = (edges[2:, None] - fft_hz[None, :]) / np.diff(edges)[1:, None]
    bank = np.maximum(0.0, np.minimum(lower, upper))
    return bank * (2.0 / (edges[2:] - edges[:-2]))[:, None]


def log_mel(audio: np.ndarray, config: MelConfig = MelConfig()) -> np.ndarray:
    """Mono float audio (time,) -> (frames, n_mels) float32 features in about [-1, 1]."""
    x = np.asarray(audio, np.float64).reshape(-1)
    if x.size < config.win:
        raise DataError(f"audio of {x.size} samples is shorter than one {config.window_ms:g} ms window")
    frames = config.frames(x.size)
    idx = np.arange(config.win)[None, :] + config.hop * np.arange(frames)[:, None]
    window = np.hanning(config.win + 1)[:-1]  # periodic Hann, as torch/librosa
    power = np.abs(np.fft.rfft(x[idx] * window, axis=-1)) ** 2
    mel = power @ mel_filterbank(config.sample_rate, config.win, config.n_mels).T
    db = 10.0 * np.log10(np.maximum(mel, 1e-10))
    db = np.maximum(db - db.max(), -config.top_db)  # relative to the clip's maximum
    return ((db + config.top_db / 2) / (config.top_db / 2)).astype(np.float32)


def clip_segments(audio: np.ndarray, config: MelConfig = MelConfig(), hop_seconds: float | None = None) -> list[np.ndarray]:
    """Audio of any length -> model-length clips (the last one ends at the signal's end; short audio is zero-padded)."""
    n, length = audio.shape[-1], config.clip_samples
    if n <= length:
        return [np.pad(audio, (0, length - n))]
    hop = int(round((hop_seconds or config.clip_seconds) * config.sample_rate))
    starts = list(range(0, n - length + 1, hop))
    if starts[-1] + length < n:
        starts.append(n - length)
    return [audio[s:s + length] for s in starts]
