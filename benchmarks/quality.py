"""Quality against the clean references: SI-SNR(i), SDR, STOI, PESQ-WB, DNSMOS, by input-SNR bucket.

SI-SNR, SI-SNRi, SDR and STOI are ``compressor.metrics.evaluate_pair``
(the numbers ``compress eval`` reports); PESQ is ITU-T P.862.2 wide-band
(``pesq``, 16 kHz); DNSMOS is the P.835 ONNX model shipped in the
``speechmos`` wheel (SIG, BAK, OVRL; no reference needed, it rates the
estimate alone). The JSON keeps the issue's shape (``si_snr`` by bucket,
the other metrics overall) and adds every metric by bucket under
``by_bucket``.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from compressor.metrics import BUCKETS, evaluate_pair, snr_bucket

log = logging.getLogger(__name__)

METRICS = ("si_snr", "si_snri", "sdr", "stoi", "pesq", "dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")
GROUPS = ("all", *BUCKETS)


def pesq_wb(estimate: np.ndarray, reference: np.ndarray, sample_rate: int) -> float | None:
    """PESQ-WB (MOS-LQO); None where PESQ finds no speech or the rate is not 16 kHz."""
    from pesq import PesqError, pesq

    if sample_rate != 16000:
        return None
    try:
        return float(pesq(sample_rate, reference.astype(np.float64), estimate.astype(np.float64), "wb"))
    except PesqError as exc:  # e.g. no utterance detected in a near-silent clip
        log.warning("PESQ skipped a clip: %s", exc)
        return None


class Dnsmos:
    """DNSMOS P.835 from speechmos; ``available`` is False (and scores None) without speechmos/librosa."""

    def __init__(self, enabled: bool = True) -> None:
        self.available = False
        self._run: Callable | None = None
        if not enabled:
            return
        try:
            from speechmos import dnsmos

            self._run = dnsmos.run
            self.available = True
        except ImportError as exc:
            log.warning("DNSMOS left out (speechmos/librosa not importable: %s)", exc)

    def __call__(self, estimate: np.ndarray, sample_rate: int) -> dict[str, float | None]:
        if not self.available or sample_rate != 16000:
            return {"dnsmos_sig": None, "dnsmos_bak": None, "dnsmos_ovrl": None}
        # DNSMOS refuses samples outside [-1, 1]; a clipped estimate is what a 16-bit output would hold
        scores = self._run(np.clip(estimate, -1.0, 1.0).astype(np.float32), sample_rate)
        return {"dnsmos_sig": float(scores["sig_mos"]), "dnsmos_bak": float(scores["bak_mos"]),
                "dnsmos_ovrl": float(scores["ovrl_mos"])}


def clip_rows(process: Callable[[np.ndarray], np.ndarray], dataset: Any, *, pesq: bool = True,
              dnsmos: Dnsmos | None = None, max_items: int | None = None, desc: str = "quality",
              progress: bool = True) -> list[dict[str, Any]]:
    """One row per clip: every metric, the clip's id and input SNR.

    ``process``: mono float audio (T,) -> the estimate, (T,) or (sources, T).
    """
    sample_rate = int(getattr(dataset, "sample_rate", 16000))
    count = len(dataset) if max_items is None else min(len(dataset), max_items)
    rows = []
    for index in tqdm(range(count), desc=desc, disable=not progress, leave=False):
        item = dataset[index]
        mixture = item["mixture"].numpy().astype(np.float32)
        reference = item["sources"].numpy()
        estimate = np.asarray(process(mixture), np.float32).reshape(reference.shape)
        row: dict[str, Any] = evaluate_pair(estimate, reference, mixture, sample_rate)
        first_est, first_ref = estimate.reshape(-1, estimate.shape[-1])[0], reference.reshape(-1, reference.shape[-1])[0]
        row["pesq"] = pesq_wb(first_est, first_ref, sample_rate) if pesq else None
        row.update((dnsmos or Dnsmos(False))(first_est, sample_rate))
        snr = float(item["snr_db"])
        row.update(id=item["id"], snr_db=snr if math.isfinite(snr) else 0.0)
        rows.append(row)
    return rows


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 4) if kept else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``quality`` object: si_snr by bucket, the other metrics overall, all of them ``by_bucket``."""
    groups = {"all": rows, **{b: [r for r in rows if snr_bucket(r["snr_db"]) == b] for b in BUCKETS}}
    by_bucket = {g: {m: _mean([r[m] for r in rs]) for m in METRICS} for g, rs in groups.items()}
    out: dict[str, Any] = {"si_snr": {g: by_bucket[g]["si_snr"] for g in GROUPS}}
    out.update({m: by_bucket["all"][m] for m in METRICS if m != "si_snr"})
    out["by_bucket"] = by_bucket
    out["count"] = {g: len(rs) for g, rs in groups.items()}
    return out


def _diff(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {k: _diff(v, b.get(k) if isinstance(b, dict) else None) for k, v in a.items()}
    return None if a is None or b is None else round(float(a) - float(b), 4)


def delta(quality: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """``quality - reference`` key by key (same shape; None where either is None; counts kept)."""
    out = _diff({k: v for k, v in quality.items() if k != "count"}, reference)
    out["count"] = dict(quality["count"])
    return out
