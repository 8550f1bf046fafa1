"""Spectral stage: STFT in front of the int8 model, mask and iSTFT behind it (numpy or torch, no project imports).

A spectral model computes ``X = stft(x)``, features of X (its magnitude, or
its real and imaginary parts), a mask from them, and ``y = istft(X * mask)``.
Only the part between is integer arithmetic worth deploying as int8; the
transforms and the complex product with X stay in float where the audio is.
``quantize`` splits a user's model there (compressor/stages/spectral_split.py):
the int8 file holds the part between, and this stage, declared in the file's
metadata, runs around it in every runtime::

    X = stft(x)                       # torch.stft's conventions, the model's own window
    F = c(|X|) or  [Re X, Im X]       # features: "magnitude" (c: an optional compression, e.g. ^0.3
                                      # or log(. + eps), in float) or "complex" (last axis 2)
    M = file(F)
    Y = X * M   or  X * (M_re + i M_im)   or  M_re + i M_im   # mask: "real", "complex", "spectrum"
    y = istft(Y, length=len(x))

The numpy transforms here follow torch.stft / torch.istft (reflect padding by
n_fft/2 when ``center``, the window centred in n_fft, onesided, optional
1/sqrt(n_fft) normalisation, window-envelope division in the iSTFT) to float
rounding: tests/test_spectral_split.py compares them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import numpy as np

KIND = "stft_mask"
FEATURES = ("magnitude", "complex")
MASKS = ("real", "complex", "spectrum")


# each step for numpy or torch (``xp``); float32 stays float32 in both
_STEPS: dict[str, Callable[[Any, float, Any], Any]] = {
    "pow": lambda x, c, xp: x ** c, "add": lambda x, c, xp: x + c, "mul": lambda x, c, xp: x * c,
    "clamp_min": lambda x, c, xp: xp.clip(x, c, None), "log": lambda x, c, xp: xp.log(x),
    "log10": lambda x, c, xp: xp.log10(x), "log1p": lambda x, c, xp: xp.log1p(x),
}
COMPRESSIONS = tuple(_STEPS)


@dataclass(frozen=True)
class SpectralStage:
    """The transforms around a spectral model's int8 core; ``to_dict`` is its metadata record."""

    n_fft: int
    hop_length: int
    window: tuple[float, ...]  # n_fft values (a shorter window already centred and zero-padded, as torch does)
    center: bool = True
    normalized: bool = False
    features: str = "magnitude"
    mask: str = "real"
    # element-wise steps on the magnitude before the file, in order: ("pow", c), ("add", c), ("mul", c),
    # ("clamp_min", c), ("log", 0), ("log10", 0), ("log1p", 0): a compressed or log magnitude is computed
    # in float, where its small values still have resolution, and only then quantized
    compression: tuple[tuple[str, float], ...] = ()
    kind: str = KIND

    def __post_init__(self) -> None:
        if self.kind != KIND:
            raise ValueError(f"not a spectral stage: kind {self.kind!r}")
        if self.n_fft < 2 or not 0 < self.hop_length <= self.n_fft:
            raise ValueError(f"spectral stage: need n_fft >= 2 and 0 < hop_length <= n_fft, got "
                             f"{self.n_fft} / {self.hop_length}")
        if len(self.window) != self.n_fft or not all(math.isfinite(w) for w in self.window):
            raise ValueError(f"spectral stage: the window must hold n_fft = {self.n_fft} finite values, "
                             f"got {len(self.window)}")
        if self.features not in FEATURES:
            raise ValueError(f"spectral stage: features must be one of {FEATURES}, got {self.features!r}")
        if self.mask not in MASKS:
            raise ValueError(f"spectral stage: mask must be one of {MASKS}, got {self.mask!r}")
        for step in self.compression:
            if len(step) != 2 or step[0] not in COMPRESSIONS or not math.isfinite(step[1]):
                raise ValueError(f"spectral stage: unknown compression step {step!r} (known: {', '.join(COMPRESSIONS)})")
        if self.compression and self.features != "magnitude":
            raise ValueError("spectral stage: compression applies to magnitude features only")

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    def frames(self, samples: int) -> int:
        """STFT frames of ``samples`` samples (what the int8 file's frame axis holds for one chunk)."""
        padded = samples + (2 * (self.n_fft // 2) if self.center else 0)
        if padded < self.n_fft:
            raise ValueError(f"spectral stage: {samples} samples are shorter than one {self.n_fft}-point frame")
        return 1 + (padded - self.n_fft) // self.hop_length

    # --- numpy (the runtimes) ---------------------------------------------------------------------------

    def stft(self, x: np.ndarray) -> np.ndarray:
        """(..., T) float -> (..., bins, frames) complex64, as torch.stft(return_complex=True) computes it."""
        x = np.asarray(x, np.float32)
        if self.center:
            pad = self.n_fft // 2
            if x.shape[-1] <= pad:
                raise ValueError(f"spectral stage: reflect padding by {pad} needs more than {pad} samples, "
                                 f"got {x.shape[-1]}")
            x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
        if x.shape[-1] < self.n_fft:
            raise ValueError(f"spectral stage: {x.shape[-1]} samples are shorter than one {self.n_fft}-point frame")
        n = 1 + (x.shape[-1] - self.n_fft) // self.hop_length
        starts = np.arange(n) * self.hop_length
        frames = x[..., starts[:, None] + np.arange(self.n_fft)]  # (..., frames, n_fft)
        spectrum = np.fft.rfft(frames * np.asarray(self.window, np.float32), axis=-1)
        if self.normalized:
            spectrum = spectrum / np.sqrt(self.n_fft)
        return np.swapaxes(spectrum, -1, -2).astype(np.complex64)

    def istft(self, spectrum: np.ndarray, length: int) -> np.ndarray:
        """(..., bins, frames) complex -> (..., length) float32, as torch.istft(center, length) computes it."""
        spectrum = np.swapaxes(np.asarray(spectrum), -1, -2)  # (..., frames, bins)
        if self.normalized:
            spectrum = spectrum * np.sqrt(self.n_fft)
        window = np.asarray(self.window, np.float64)
        frames = np.fft.irfft(spectrum, n=self.n_fft, axis=-1) * window
        n = frames.shape[-2]
        total = self.n_fft + self.hop_length * (n - 1)
        out = np.zeros(frames.shape[:-2] + (total,), np.float64)
        envelope = np.zeros(total, np.float64)
        for k in range(n):
            at = k * self.hop_length
            out[..., at:at + self.n_fft] += frames[..., k, :]
            envelope[at:at + self.n_fft] += window * window
        start = self.n_fft // 2 if self.center else 0
        out, envelope = out[..., start:start + length], envelope[start:start + length]
        if out.shape[-1] < length:
            out = np.pad(out, [(0, 0)] * (out.ndim - 1) + [(0, length - out.shape[-1])])
            envelope = np.pad(envelope, (0, length - envelope.shape[-1]), constant_values=1.0)
        return (out / np.where(envelope > 1e-11, envelope, 1.0)).astype(np.float32)

    # --- both ----------------------------------------------------------------------------------------------

    def features_of(self, spectrum: Any) -> Any:
        """The core's input from X: |X| (..., bins, frames), compressed, or [Re, Im] (..., bins, frames, 2)."""
        if self.features == "magnitude":
            numpy = isinstance(spectrum, np.ndarray)
            magnitude = np.abs(spectrum).astype(np.float32) if numpy else spectrum.abs()
            for op, c in self.compression:
                magnitude = _STEPS[op](magnitude, np.float32(c) if numpy else c, np if numpy else _torch())
            return magnitude
        if isinstance(spectrum, np.ndarray):
            return np.stack([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)
        import torch

        return torch.view_as_real(spectrum)

    def apply(self, spectrum: Any, output: Any) -> Any:
        """The spectrum to invert from X and the core's output."""
        if self.mask == "real":
            return spectrum * output
        if isinstance(output, np.ndarray):
            complex_out = output[..., 0] + 1j * output[..., 1]
        else:
            import torch

            complex_out = torch.view_as_complex(output.contiguous())
        return spectrum * complex_out if self.mask == "complex" else complex_out

    def run(self, core: Callable[[np.ndarray], np.ndarray], block: np.ndarray) -> np.ndarray:
        """One block of audio (batch, T) through stft -> ``core`` -> mask -> istft, in numpy."""
        block = np.asarray(block, np.float32)
        spectrum = self.stft(block)
        out = np.asarray(core(self.features_of(spectrum)), np.float32).reshape(self.output_shape(spectrum.shape))
        return self.istft(self.apply(spectrum, out), block.shape[-1])

    def output_shape(self, spectrum_shape: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(spectrum_shape) + (() if self.mask == "real" else (2,))

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["window"] = [float(w) for w in self.window]
        record["compression"] = [[op, float(c)] for op, c in self.compression]
        return record

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SpectralStage":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"spectral stage: unknown field(s) {', '.join(unknown)}")
        try:
            values = dict(data)
            values["window"] = tuple(float(w) for w in values.get("window", ()))
            values["compression"] = tuple((str(op), float(c)) for op, c in values.get("compression", ()))
            for key in ("n_fft", "hop_length"):
                if key in values:
                    values[key] = int(values[key])
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"spectral stage: {exc}") from exc


def _torch() -> Any:
    import torch  # only the simulation passes torch tensors; the runtimes stay numpy-only

    return torch


def spectral_stage_of(records: list[dict[str, Any]] | None) -> SpectralStage | None:
    """The spectral stage among a file's or checkpoint's stage records, or None."""
    found = [SpectralStage.from_dict(r) for r in records or [] if isinstance(r, dict) and r.get("kind") == KIND]
    return found[0] if found else None


__all__ = ["FEATURES", "KIND", "MASKS", "SpectralStage", "spectral_stage_of"]
