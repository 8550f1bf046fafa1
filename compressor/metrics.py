"""Signal-quality metrics for enhancement and separation, and their summaries.

- ``evaluate_pair``: SI-SNR, SI-SNR improvement, BSS-eval SDR and STOI of one
  estimate (one or several sources) against its reference.
- ``snr_bucket`` / ``summarize``: means over a test set, overall and per
  input-SNR bucket (low < 2 dB <= mid <= 10 dB < high).
- ``delta``: the difference of two summaries (e.g. int8 minus float).

SDR is BSS-eval's (bss_eval_sources, 512-tap distortion filter) computed with
``fast_bss_eval`` in float64; it equals torchmetrics'
``signal_distortion_ratio`` (which wraps the same algorithm) and a direct
least-squares projection (see tests). With one source there is no
interference term, so it is the plain BSS-eval SDR.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable

import fast_bss_eval
import numpy as np
import torch
from pystoi import stoi as _stoi

from compressor.errors import ConfigError
from compressor.losses import si_snr as _si_snr_torch

METRICS = ("si_snr", "si_snri", "sdr", "stoi")
BUCKETS = ("low", "mid", "high")
SDR_FILTER_LENGTH = 512


def si_snr_np(estimate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """SI-SNR in dB over the last axis, in float64 (same formula as training)."""
    e = torch.from_numpy(np.array(estimate, dtype=np.float64))
    r = torch.from_numpy(np.array(reference, dtype=np.float64))
    return _si_snr_torch(e, r).numpy()


def _as_sources(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2:
        raise ConfigError(
            f"evaluate_pair: {name} must have shape [T] or [S, T], got {a.shape}"
        )
    return a


def _best_permutation(est: np.ndarray, ref: np.ndarray) -> tuple[int, ...]:
    """perm such that est[perm[j]] is matched with ref[j], maximising mean SI-SNR."""
    num = est.shape[0]
    if num == 1:
        return (0,)
    pair = si_snr_np(est[:, None, :], ref[None, :, :])  # (S_est, S_ref)
    return max(
        itertools.permutations(range(num)),
        key=lambda p: sum(pair[p[j], j] for j in range(num)),
    )


def bss_sdr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """BSS-eval SDR (dB) of one estimate [T] against one reference [T]."""
    value = fast_bss_eval.sdr(
        np.asarray(reference, dtype=np.float64)[None],
        np.asarray(estimate, dtype=np.float64)[None],
        filter_length=SDR_FILTER_LENGTH,
    )
    return float(np.asarray(value).reshape(-1)[0])


def evaluate_pair(
    estimate: np.ndarray,
    reference: np.ndarray,
    mixture: np.ndarray,
    sample_rate: int,
) -> dict[str, float]:
    """Quality of ``estimate`` against ``reference``.

    estimate, reference: [T] or [S, T]; mixture: [T] (the model's input).
    Returns floats ``si_snr``, ``si_snri`` (SI-SNR of the estimate minus
    SI-SNR of the mixture, both against the same reference), ``sdr``
    (BSS-eval) and ``stoi`` (classic, not extended). With several sources the
    estimates are first aligned to the references by the permutation with
    the best mean SI-SNR, and each metric is averaged over sources.
    """
    est = _as_sources(estimate, "estimate")
    ref = _as_sources(reference, "reference")
    mix = np.asarray(mixture, dtype=np.float64)
    if mix.ndim != 1:
        raise ConfigError(f"evaluate_pair: mixture must have shape [T], got {mix.shape}")
    if est.shape != ref.shape or mix.shape[0] != ref.shape[1]:
        raise ConfigError(
            "evaluate_pair: shapes do not fit: estimate "
            f"{est.shape}, reference {ref.shape}, mixture {mix.shape}"
        )
    if not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ConfigError(f"evaluate_pair: sample_rate must be a positive int, got {sample_rate!r}")

    perm = _best_permutation(est, ref)
    est = est[list(perm)]
    s = si_snr_np(est, ref)  # (S,)
    s_mix = si_snr_np(np.broadcast_to(mix, ref.shape), ref)
    sdr = [bss_sdr(est[j], ref[j]) for j in range(ref.shape[0])]
    stoi = [float(_stoi(ref[j], est[j], sample_rate, extended=False)) for j in range(ref.shape[0])]
    return {
        "si_snr": float(np.mean(s)),
        "si_snri": float(np.mean(s - s_mix)),
        "sdr": float(np.mean(sdr)),
        "stoi": float(np.mean(stoi)),
    }


def snr_bucket(snr_db: float) -> str:
    """'low' below 2 dB, 'mid' from 2 to 10 dB inclusive, 'high' above 10 dB."""
    if snr_db is None or (isinstance(snr_db, float) and math.isnan(snr_db)):
        raise ConfigError(f"snr_bucket: snr_db must be a number, got {snr_db!r}")
    if snr_db < 2.0:
        return "low"
    if snr_db <= 10.0:
        return "mid"
    return "high"


def _mean(values: Iterable[float]) -> float | None:
    vals = [float(v) for v in values]
    return float(np.mean(vals)) if vals else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over ``rows`` (each: the metrics of ``evaluate_pair`` plus ``snr_db``).

    Returns ``{"si_snr": {"all", "low", "mid", "high"}, "si_snri": {...},
    "sdr": float, "stoi": float, "count": {"all", "low", "mid", "high"}}``;
    a mean over no rows is None.
    """
    for i, row in enumerate(rows):
        missing = [k for k in (*METRICS, "snr_db") if k not in row]
        if missing:
            raise ConfigError(f"summarize: row {i} lacks {missing}")
    by_bucket: dict[str, list[dict[str, Any]]] = {b: [] for b in BUCKETS}
    for row in rows:
        by_bucket[snr_bucket(row["snr_db"])].append(row)
    groups = {"all": rows, **by_bucket}
    out: dict[str, Any] = {}
    for metric in ("si_snr", "si_snri"):
        out[metric] = {g: _mean(r[metric] for r in rs) for g, rs in groups.items()}
    out["sdr"] = _mean(r["sdr"] for r in rows)
    out["stoi"] = _mean(r["stoi"] for r in rows)
    out["count"] = {g: len(rs) for g, rs in groups.items()}
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else float(a) - float(b)


def delta(quality: dict[str, Any], reference_quality: dict[str, Any]) -> dict[str, Any]:
    """``quality - reference_quality`` for two ``summarize`` results.

    Same shape as ``summarize``'s output; None where either side is None.
    ``count`` is not differenced: it is carried over from ``quality``.
    """
    out: dict[str, Any] = {}
    for metric in ("si_snr", "si_snri"):
        out[metric] = {
            g: _diff(quality[metric].get(g), reference_quality[metric].get(g))
            for g in ("all", *BUCKETS)
        }
    for metric in ("sdr", "stoi"):
        out[metric] = _diff(quality[metric], reference_quality[metric])
    out["count"] = dict(quality["count"])
    return out
