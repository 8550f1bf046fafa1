"""Quality reports: one JSON object per model and a Markdown table."""
from __future__ import annotations

from typing import Any

from compressor.metrics import delta

QUALITY_KEYS = ("si_snr", "si_snri", "sdr", "stoi", "count")


def model_entry(name: str, summary: dict[str, Any], reference: dict[str, Any] | None,
                **extra: Any) -> dict[str, Any]:
    """{name, quality, delta_vs_float, ...extra}; quality without per-file rows."""
    quality = {k: summary[k] for k in QUALITY_KEYS}
    entry: dict[str, Any] = {"name": name, "quality": quality}
    entry["delta_vs_float"] = delta(quality, reference) if reference is not None else None
    entry.update(extra)
    return entry


def _fmt(value: float | None, digits: int = 2, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown_table(entries: list[dict[str, Any]]) -> str:
    """SI-SNR by input-SNR bucket, SI-SNRi, SDR, STOI and the gap to float."""
    counts = entries[0]["quality"]["count"] if entries else {}
    header = (
        "| model | SI-SNR all | low (<2 dB, n={low}) | mid (2-10, n={mid}) | high (>10, n={high}) "
        "| SI-SNRi | SDR | STOI | ΔSI-SNR vs float |".format(**{k: counts.get(k, 0) for k in ("low", "mid", "high")})
    )
    lines = [header, "|" + "---|" * 9]
    for e in entries:
        q, d = e["quality"], e.get("delta_vs_float")
        s = q["si_snr"]
        lines.append(
            f"| {e['name']} | {_fmt(s['all'])} | {_fmt(s['low'])} | {_fmt(s['mid'])} | {_fmt(s['high'])} "
            f"| {_fmt(q['si_snri']['all'])} | {_fmt(q['sdr'])} | {_fmt(q['stoi'], 3)} "
            f"| {_fmt(d['si_snr']['all'] if d else None, 2, signed=True)} |"
        )
    return "\n".join(lines) + "\n"
