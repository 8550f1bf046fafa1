"""Figures: SI-SNR against input SNR (one line per model), latency bars, size bars."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from compressor.fileio import atomic_path

SNR_BINS = 5  # equal-count bins of the clips' input SNR


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def si_snr_vs_input(entries: list[dict], path: Path) -> Path | None:
    """Mean SI-SNR per input-SNR bin (equal-count bins, x at the bin's mean input SNR)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_rows = [e for e in entries if e.get("rows")]
    if not with_rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.get_cmap("tab20").colors
    for k, e in enumerate(with_rows):
        snr = np.array([r["snr_db"] for r in e["rows"]])
        value = np.array([r["si_snr"] for r in e["rows"]])
        order = np.argsort(snr, kind="stable")
        bins = np.array_split(order, min(SNR_BINS, len(order)))
        ax.plot([snr[b].mean() for b in bins], [value[b].mean() for b in bins], marker="o", label=e["name"],
                color=colors[k % len(colors)], linestyle=_style(e["name"]))
    ax.set_xlabel("input SNR (dB)")
    ax.set_ylabel("SI-SNR of the estimate (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _style(name: str) -> str:
    """Float baselines dotted, our models solid, everything else (the peers) dashed."""
    lowered = name.lower()
    return ":" if lowered.startswith("float") else "-" if lowered.startswith("ours") else "--"


def _bars(labels: list[str], values: list[float], ylabel: str, path: Path, errors: list[float] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(labels)), 4))
    ax.bar(range(len(labels)), values, yerr=errors, capsize=3)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def latency_bars(entries: list[dict], path: Path) -> Path | None:
    """Median chunk latency at all threads, p90 as the error bar's top."""
    timed = [e for e in entries if e.get("latency_ms")]
    if not timed:
        return None
    medians = [e["latency_ms"]["median"] for e in timed]
    errors = np.array([[0.0] * len(timed), [e["latency_ms"]["p90"] - e["latency_ms"]["median"] for e in timed]])
    threads = timed[0]["latency_ms"]["threads"]
    seconds = timed[0]["latency_ms"]["input_seconds"]
    return _bars([e["name"] for e in timed], medians, f"ms per {seconds:g} s chunk, {threads} threads", path,
                 errors.tolist())


def size_bars(entries: list[dict], path: Path) -> Path | None:
    if not entries:
        return None
    return _bars([e["name"] for e in entries], [e["size_bytes"] / 1024 for e in entries], "file size (KiB)", path)


def write_plots(entries: list[dict], folder: Path) -> list[Path]:
    folder = Path(folder)
    made = [si_snr_vs_input(entries, folder / "si_snr_vs_input_snr.png"),
            latency_bars(entries, folder / "latency.png"), size_bars(entries, folder / "size.png")]
    return [p for p in made if p is not None]
