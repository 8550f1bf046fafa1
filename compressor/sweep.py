"""SI-SNR against input SNR: the whole test set with its noise rescaled to each SNR (FQSE eq. 2).

The paper's figures 1a and 3: for each beta in -6..18 dB (1 dB steps) every
test item's own noise is rescaled so that its SNR is beta, and the mean
SI-SNR of the model's output is recorded. Only SI-SNR is computed (SDR and
STOI at 25 SNRs would cost minutes per model on a CPU).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from compressor.data.snr_rescale import NoiseRescaled
from compressor.errors import ConfigError
from compressor.losses import neg_si_snr_loss
from compressor.module_mode import set_training


def sweep_points(low: float = -6.0, high: float = 18.0, step: float = 1.0) -> list[float]:
    if step <= 0 or low > high:
        raise ConfigError(f"SNR sweep needs low <= high and step > 0, got {low}, {high}, {step}")
    count = int(round((high - low) / step)) + 1
    return [round(low + i * step, 6) for i in range(count)]


@torch.no_grad()
def snr_sweep(model: nn.Module, dataset: Dataset, snrs: Sequence[float], *, max_items: int | None = None,
              progress: bool = True, desc: str = "sweep") -> list[float]:
    """Mean SI-SNR (dB, PIT over sources) of ``model`` on ``dataset`` rescaled to each SNR in ``snrs``."""
    set_training(model, False)
    count = len(dataset) if max_items is None else min(len(dataset), max_items)
    means = []
    for snr in tqdm(snrs, desc=desc, disable=not progress, leave=False):
        rescaled = NoiseRescaled(dataset, snr)
        values = []
        for index in range(count):
            item = rescaled[index]
            estimate = model(item["mixture"].float().unsqueeze(0)).double()
            values.append(-float(neg_si_snr_loss(estimate, item["sources"].double().unsqueeze(0))))
        means.append(float(np.mean(values)))
    return means


@torch.no_grad()
def sweep_against_reference(models: dict[str, nn.Module], reference: str, dataset: Dataset, snrs: Sequence[float],
                            *, max_items: int | None = None, progress: bool = True) -> dict[str, dict[str, list[float]]]:
    """Per model and SNR: mean SI-SNR, and the SQNR of its output against the ``reference`` model's.

    SQNR = 10 log10(|s|^2 / |y_model - y_reference|^2), the quantization noise
    of Theorem III.1 in ../shared/seeds/003_*: a quantized model can stay
    within 0.1 dB of float only where SQNR exceeds the float SDR by ~16 dB.
    """
    for m in models.values():
        set_training(m, False)
    count = len(dataset) if max_items is None else min(len(dataset), max_items)
    out = {name: {"si_snr": [], "sqnr": []} for name in models}
    for snr in tqdm(snrs, desc="sweep", disable=not progress, leave=False):
        rescaled = NoiseRescaled(dataset, snr)
        acc = {name: {"si_snr": [], "sqnr": []} for name in models}
        for index in range(count):
            item = rescaled[index]
            mixture, sources = item["mixture"].float().unsqueeze(0), item["sources"].double().unsqueeze(0)
            estimates = {name: m(mixture).double() for name, m in models.items()}
            energy = float((sources ** 2).sum())
            for name, est in estimates.items():
                acc[name]["si_snr"].append(-float(neg_si_snr_loss(est, sources)))
                noise = float(((est - estimates[reference]) ** 2).sum())
                acc[name]["sqnr"].append(10 * np.log10(energy / noise) if noise > 0 else float("inf"))
        for name in models:
            out[name]["si_snr"].append(float(np.mean(acc[name]["si_snr"])))
            finite = [v for v in acc[name]["sqnr"] if np.isfinite(v)]
            out[name]["sqnr"].append(float(np.mean(finite)) if finite else float("inf"))
    return out


def sweep_table(snrs: Sequence[float], curves: dict[str, Sequence[float]], reference: str | None = None) -> str:
    """Markdown: one row per SNR, one column per model (and each model's gap to ``reference``)."""
    names = list(curves)
    header = "| input SNR (dB) | " + " | ".join(names)
    others = [n for n in names if reference is not None and n != reference]
    header += "".join(f" | {n} − {reference}" for n in others) + " |"
    lines = [header, "|" + "---|" * (1 + len(names) + len(others))]
    for i, snr in enumerate(snrs):
        cells = [f"{curves[n][i]:.2f}" for n in names]
        cells += [f"{curves[n][i] - curves[reference][i]:+.2f}" for n in others]  # type: ignore[index]
        lines.append(f"| {snr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(snrs: Sequence[float], curves: dict[str, Sequence[float]], path: Path,
               title: str = "SI-SNR vs input SNR") -> Path:
    """One figure, one line per model (like the paper's figures 1a and 3); PNG/PDF/SVG by extension."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, values in curves.items():
        ax.plot(list(snrs), list(values), marker=".", label=name)
    ax.set_xlabel("input SNR (dB)")
    ax.set_ylabel("SI-SNR (dB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def sweep_report(snrs: Sequence[float], curves: dict[str, Sequence[float]]) -> dict[str, Any]:
    return {"snr_db": list(snrs), "si_snr": {k: list(v) for k, v in curves.items()}}


__all__ = ["plot_sweep", "snr_sweep", "sweep_against_reference", "sweep_points", "sweep_report", "sweep_table"]
