"""Reading and writing audio files.

Everything the toolkit reads goes through :func:`read_audio`, so that a bad
file fails in one place with a :class:`~compressor.errors.DataError` naming it,
and every file it writes goes through :func:`write_audio` (atomic, so an
interrupted run never leaves a half-written file behind).
"""

from __future__ import annotations

import logging
import math
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from compressor.errors import DataError
from compressor.fileio import atomic_path

log = logging.getLogger("compressor.data")

#: Extensions :func:`write_audio` knows, with the soundfile format and subtype.
_WRITE_FORMATS = {
    ".wav": ("WAV", "PCM_16"),
    ".flac": ("FLAC", "PCM_16"),
}


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling along the last axis (float32 out)."""
    if orig_sr == target_sr:
        return np.asarray(audio, dtype=np.float32)
    ratio = Fraction(int(target_sr), int(orig_sr))
    out = resample_poly(np.asarray(audio, dtype=np.float64), ratio.numerator, ratio.denominator, axis=-1)
    return out.astype(np.float32)


def read_audio(
    path: str | os.PathLike,
    sample_rate: int = 16000,
    *,
    resample: bool = True,  # noqa: A002 - public keyword
    mono: bool = True,
) -> np.ndarray:
    """Read an audio file as float32 in [-1, 1].

    Returns shape ``(T,)`` when ``mono`` (multi-channel files are down-mixed by
    averaging the channels, with a warning), else ``(C, T)``.  A file at a
    different rate is resampled to ``sample_rate`` with a warning, or refused
    when ``resample=False``.  Any problem raises :class:`DataError` naming the
    file.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"audio file not found: {path}")
    if not path.is_file():
        raise DataError(f"not a file: {path}")
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise DataError(f"cannot read audio file {path}: {exc}") from exc
    # data: (T, C)
    if data.shape[0] == 0:
        raise DataError(f"audio file {path} is empty (0 samples)")
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise DataError(f"audio file {path} holds {bad} NaN/Inf samples")
    channels = data.shape[1]
    if channels > 1:
        if mono:
            log.warning("%s has %d channels; down-mixing to mono (mean of channels)", path, channels)
            audio = data.mean(axis=1)
        else:
            raise DataError(f"audio file {path} has {channels} channels; a mono file is required")
    else:
        audio = data[:, 0]
    if sr != sample_rate:
        if not resample:
            raise DataError(f"audio file {path} has sample rate {sr} Hz, expected {sample_rate} Hz")
        log.warning("%s: resampling from %d Hz to %d Hz", path, sr, sample_rate)
        audio = _resample(audio, sr, sample_rate)
        # Resampling can overshoot slightly past full scale.
        audio = np.clip(audio, -1.0, 1.0)
    return np.ascontiguousarray(audio, dtype=np.float32)


_resample = resample


def write_audio(path: str | os.PathLike, audio, sample_rate: int) -> Path:
    """Write mono ``(T,)`` or multi-channel ``(C, T)`` audio atomically.

    The format follows the extension (.wav and .flac, both 16-bit PCM).  The
    data are written to a temporary file in the same folder, then moved in
    place with ``os.replace``; parent folders are created.  NaN/Inf is a
    :class:`DataError`; samples outside [-1, 1] are clipped with a warning.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _WRITE_FORMATS:
        raise DataError(f"cannot write {path}: unknown extension {ext!r} (use one of {sorted(_WRITE_FORMATS)})")
    if hasattr(audio, "detach"):  # torch tensor
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim == 2:
        audio = audio.T  # soundfile wants (T, C)
    elif audio.ndim != 1:
        raise DataError(f"cannot write {path}: audio must be (T,) or (C, T), got shape {audio.shape}")
    if audio.shape[0] == 0:
        raise DataError(f"cannot write {path}: audio is empty")
    if not np.all(np.isfinite(audio)):
        raise DataError(f"cannot write {path}: audio holds NaN/Inf samples")
    peak = float(np.max(np.abs(audio)))
    if peak > 1.0:
        log.warning("%s: peak %.3f is outside [-1, 1]; clipping", path, peak)
        audio = np.clip(audio, -1.0, 1.0)
    fmt, subtype = _WRITE_FORMATS[ext]
    try:
        with atomic_path(path) as tmp:
            # Quantise ourselves (round, saturate) so float -> int16 -> float is exact.
            kw = {"compression_level": 1.0} if fmt == "FLAC" else {}
            sf.write(tmp, to_int16(audio), int(sample_rate), format=fmt, subtype=subtype, **kw)
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise DataError(f"cannot write {path}: {exc}") from exc
    return path




def to_int16(x) -> np.ndarray:
    """Float in [-1, 1] to int16: scale by 32768, round to nearest, saturate."""
    x = np.asarray(x, dtype=np.float64)
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def from_int16(x) -> np.ndarray:
    """int16 to float32 in [-1, 1) (divide by 32768, soundfile's convention)."""
    return (np.asarray(x).astype(np.float32) / np.float32(32768.0)).astype(np.float32)


def rms(x) -> float:
    """Root mean square of an array (0.0 for silence)."""
    x = np.asarray(x, dtype=np.float64)
    return math.sqrt(float(np.mean(x * x))) if x.size else 0.0


def snr_db(clean, mixture) -> float:
    """10*log10(sum clean^2 / sum (mixture - clean)^2); NaN when undefined."""
    clean = np.asarray(clean, dtype=np.float64)
    noise = np.asarray(mixture, dtype=np.float64) - clean
    ps, pn = float(np.sum(clean * clean)), float(np.sum(noise * noise))
    if ps <= 0.0 or pn <= 0.0:
        return float("nan")
    return 10.0 * math.log10(ps / pn)
