"""FQSE pre- and post-processing: the input splitter and the RQB output combiner.

This module is the arithmetic the runtimes run around an exported int8 model,
so it imports no torch: every function takes an array namespace ``xp``
(numpy by default; the training wrapper passes ``torch``) and uses only
operators and ``floor``/``clip``/``stack``.

Input splitter (FQSE eq. 3, b_l = 8, t = 1, so the step is D = 1/128)
--------------------------------------------------------------------
A 16-bit PCM sample is x = k / 32768, k in [-32768, 32767]. The symmetric
floor quantizer Q_F(x) = D * clip(floor(x / D), -128, 127) gives the high byte::

    c_hi = floor(128 x) = floor(k / 256) = k >> 8            in [-128, 127]
    eps  = x - c_hi / 128 = (k & 255) / 32768                in [0, D)

and the second channel Q_F(2 t eps / D - t) = Q_F(256 eps - 1) is the low
byte, re-centred onto the signed range::

    c_lo = floor(128 (256 eps - 1)) = (k & 255) - 128        in [-128, 127]

Both channels are int8 codes on one grid (scale 1/128, zero-point 0), which
is what keeps the model's input per-tensor quantized. The split is lossless
for 16-bit PCM: ``k = 256 c_hi + c_lo + 128``, or as floats
``x = X_hi + (X_lo + 1) / 256`` with X = code / 128. Every step above is
exact in float32 (x * 128 and floor are exact, and eps has at most 8
significant bits), so ``split`` on floats and ``split_int16`` on integers
agree for every int16 value. A float that is not on the 16-bit grid is
floored onto it (an error below one 16-bit step).

Output combiner (FQSE eq. 4 and its post-processing)
----------------------------------------------------
The model returns Q(Y_o) (step s_o) and the RQB output eps, trained to be
``gain * (y - Q(Y_o))``. The combiner is ``y = Q(Y_o) + eps / gain``; with
int8 codes and their qparams::

    y = s_o (q_o - z_o) + s_e (q_e - z_e) / gain

Which gain is right: the residual of a round-to-nearest quantizer lies in
[-s_o/2, s_o/2]. The paper's gain 2^(b_l-1) = 128 maps it to
|eps| <= 64 s_o, the middle half of a grid as wide as Y_o's, which leaves
room for Y_o's zero-point offset (up to 64 codes) and for the RQB's own
error without clipping. eps has its own LSQ quantizer, so the gain only sets
the start: calibration then fits s_e to eps's range (about s_o / 2), and the
combined output's resolution is s_e / gain ~ s_o / 256, i.e. 16 bits from two
int8 tensors. A gain of 2^b_l = 256 would fill a grid exactly as wide as
Y_o's only when z_o = 0 and the RQB were exact, so it clips in practice.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

INPUT_BITS = 8
#: Step of both split channels: t / 2^(b_l - 1) with t = 1.
SPLIT_SCALE = 1.0 / 2 ** (INPUT_BITS - 1)
SPLIT_ZERO_POINT = 0
#: The paper's combiner gain 2^(b_l - 1) (see the module docstring).
DEFAULT_GAIN = float(2 ** (INPUT_BITS - 1))
_QMIN, _QMAX = -(2 ** (INPUT_BITS - 1)), 2 ** (INPUT_BITS - 1) - 1
# The low channel carries the residual times 256, shifted down by t = 1.
_LOW_WEIGHT = 1.0 / 2 ** INPUT_BITS


def _floor_quantize(x: Any, xp: ModuleType) -> Any:
    """Symmetric floor quantizer Q_F (eq. 3) with t = 1, as integer-valued codes."""
    return xp.clip(xp.floor(x * (1.0 / SPLIT_SCALE)), _QMIN, _QMAX)


def split_codes(x: Any, xp: ModuleType = np) -> tuple[Any, Any]:
    """Float samples in [-1, 1) -> (high, low) codes in [-128, 127] (same dtype as ``x``)."""
    hi = _floor_quantize(x, xp)
    eps = x - hi * SPLIT_SCALE
    lo = _floor_quantize(2.0 * eps / SPLIT_SCALE - 1.0, xp)
    return hi, lo


def split(x: Any, xp: ModuleType = np, axis: int = -2) -> Any:
    """Float samples ``(..., T)`` -> the model's input ``(..., 2, T)``: both codes times 1/128.

    The values are exactly on the int8 grid (scale 1/128, zero-point 0) the
    quantized model's input quantizer uses.
    """
    hi, lo = split_codes(x, xp)
    return xp.stack([hi * SPLIT_SCALE, lo * SPLIT_SCALE], axis)


def merge(split_x: Any, axis: int = -2) -> Any:
    """Inverse of ``split``: ``x = X_hi + (X_lo + 1) / 256`` (exact for 16-bit PCM)."""
    hi = _take(split_x, 0, axis)
    lo = _take(split_x, 1, axis)
    return hi + (lo + 1.0) * _LOW_WEIGHT


def _take(a: Any, index: int, axis: int) -> Any:
    slicer = [slice(None)] * a.ndim
    slicer[axis] = index
    return a[tuple(slicer)]


def split_int16(k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int16 PCM -> (high, low) int8 codes by bit arithmetic (the runtimes' form)."""
    k = np.asarray(k).astype(np.int32)
    return (k >> 8).astype(np.int8), ((k & 255) - 128).astype(np.int8)


def merge_int16(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """(high, low) int8 codes -> int16 PCM: ``256 hi + lo + 128``."""
    return (np.asarray(hi).astype(np.int32) * 256 + np.asarray(lo).astype(np.int32) + 128).astype(np.int16)


def combine(y_o: Any, eps: Any, gain: float = DEFAULT_GAIN) -> Any:
    """High-precision output from the dequantized outputs: ``Q(Y_o) + eps / gain``."""
    return y_o + eps * (1.0 / gain)


def dequantize(codes: Any, scale: float, zero_point: int) -> Any:
    return (codes - zero_point) * scale


def combine_codes(q_o: np.ndarray, qparams_o: tuple[float, int], q_e: np.ndarray,
                  qparams_e: tuple[float, int], gain: float = DEFAULT_GAIN) -> np.ndarray:
    """The combiner on the int8 outputs of a deployed model, each with its (scale, zero-point)."""
    y_o = dequantize(np.asarray(q_o, dtype=np.float64), *qparams_o)
    eps = dequantize(np.asarray(q_e, dtype=np.float64), *qparams_e)
    return combine(y_o, eps, gain)


__all__ = [
    "DEFAULT_GAIN", "SPLIT_SCALE", "SPLIT_ZERO_POINT", "combine", "combine_codes", "dequantize",
    "merge", "merge_int16", "split", "split_codes", "split_int16",
]
