"""Deployed models on audio they never saw: SI-SNR and clipping per input level and per condition.

    python -m benchmarks.robustness q.tflite q.onnx q.pt --reference FLOAT.pt --out DIR
        [--levels -45 -40 ...] [--conditions white pink ...] [--max-utterances N] [--threads 1]

Every model runs as deployed: ``runtimes.load(path).process(mixture)`` (fixed
chunks with cross-fades, the file's own level stage if it declares one), on
the robustness set (``compressor/data/robustness.py``: unseen voices and noise
kinds, clean speech from -45 to -10 dBFS). The float reference is processed
in the same chunks, so the differences are the quantization's alone. Writes
``robustness.json`` (every item of every model, and the summaries),
``robustness.md`` (tables: per level, per condition, clipping) and two plots:
SI-SNR against level, and its difference to float against level.

Clipping is counted at each file's int8 boundary (``Runtime.clip_counts``):
the fraction of input and of output codes at the int8 limits (an FQSE file's
RQB residual output apart: at its limits the refinement is partial, the
output does not clip).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from compressor.fileio import shown_path, write_text_atomic
from compressor.metrics import si_snr_np

BOUNDARY = ("input", "output", "residual")  # Runtime.clip_counts keys; residual: FQSE's RQB output


def run_model(path: str | Path, dataset: Any, threads: int | None, progress: bool = True) -> list[dict[str, Any]]:
    """One row per item: SI-SNR of the processed mixture against the clean target, and boundary clipping."""
    import runtimes

    runtime = runtimes.load(path, threads=threads)
    rows = []
    for index in tqdm(range(len(dataset)), desc=Path(path).name, disable=not progress, leave=False):
        item = dataset[index]
        clean = item["sources"].numpy().sum(axis=0)
        before = {k: list(runtime.clip_counts().get(k, [0, 0])) for k in BOUNDARY}
        estimate = runtime.process(item["mixture"].numpy())
        after = {k: runtime.clip_counts().get(k, [0, 0]) for k in BOUNDARY}
        rows.append({
            "id": item["id"], "level_dbfs": float(item["level_dbfs"]), "condition": item["condition"],
            "snr_db": float(item["snr_db"]), "si_snr": float(si_snr_np(estimate, clean)),
            **{f"{k}_clipped": after[k][0] - before[k][0] for k in BOUNDARY},
            **{f"{k}_codes": after[k][1] - before[k][1] for k in BOUNDARY},
        })
    return rows


def _fraction(rows: list[dict[str, Any]], boundary: str, empty: float | None) -> float | None:
    """Codes at the int8 limits over codes seen, at one boundary (``BOUNDARY``), over ``rows``."""
    codes = sum(r.get(f"{boundary}_codes", 0) for r in rows)
    return sum(r.get(f"{boundary}_clipped", 0) for r in rows) / codes if codes else empty


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def summarize(rows: list[dict[str, Any]], reference: list[dict[str, Any]] | None) -> dict[str, Any]:
    """Per level and per condition: mean SI-SNR, its difference to the reference, and clipping rates."""
    ref = {r["id"]: r["si_snr"] for r in reference or []}
    for r in rows:
        r["delta"] = r["si_snr"] - ref[r["id"]] if r["id"] in ref else math.nan

    def group(key: str) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for value in sorted({r[key] for r in rows}, key=lambda v: (isinstance(v, str), v)):
            chosen = [r for r in rows if r[key] == value]
            out[str(value)] = {
                "si_snr": _mean([r["si_snr"] for r in chosen]), "delta": _mean([r["delta"] for r in chosen]),
                # no codes: 0 for the boundary every file has, None for a residual output it lacks
                **{f"{k}_clipping": _fraction(chosen, k, None if k == "residual" else 0.0) for k in BOUNDARY},
                "items": len(chosen),
            }
        return out

    cells = {}
    for r in rows:
        cells.setdefault((r["level_dbfs"], r["condition"]), []).append(r["delta"])
    per_level, per_condition = group("level_dbfs"), group("condition")
    all_groups = list(per_level.values()) + list(per_condition.values())
    return {
        "si_snr": _mean([r["si_snr"] for r in rows]), "delta": _mean([r["delta"] for r in rows]),
        "per_level": per_level, "per_condition": per_condition,
        "worst_level_delta": min(v["delta"] for v in per_level.values()),
        "worst_condition_delta": min(v["delta"] for v in per_condition.values()),
        "worst_cell_delta": min(_mean(v) for v in cells.values()),
        "max_input_clipping": max(v["input_clipping"] for v in all_groups),
        "max_output_clipping": max(v["output_clipping"] for v in all_groups),
        "max_residual_clipping": max((v["residual_clipping"] for v in all_groups
                                      if v["residual_clipping"] is not None), default=None),
    }


def markdown(results: dict[str, Any]) -> str:
    models = results["models"]
    ref_name = results.get("reference")
    levels = list(next(iter(models.values()))["summary"]["per_level"])
    conditions = list(next(iter(models.values()))["summary"]["per_condition"])
    lines = [f"# Robustness: {results['items']} items ({len(levels)} levels x {len(conditions)} conditions), "
             f"reference {ref_name}", "",
             "SI-SNR (dB) difference to the float reference, processed as deployed (same chunks).", "",
             "## Per clean-speech level (dBFS)", "",
             "| model | all | " + " | ".join(levels) + " | worst level | worst cell |",
             "|---|---|" + "---|" * len(levels) + "---|---|"]
    for name, m in models.items():
        s = m["summary"]
        lines.append(f"| {name} | {s['delta']:+.2f} | " + " | ".join(f"{s['per_level'][k]['delta']:+.2f}" for k in levels)
                     + f" | {s['worst_level_delta']:+.2f} | {s['worst_cell_delta']:+.2f} |")
    lines += ["", "## Per condition", "", "| model | " + " | ".join(conditions) + " | worst |",
              "|---|" + "---|" * len(conditions) + "---|"]
    for name, m in models.items():
        s = m["summary"]
        lines.append(f"| {name} | " + " | ".join(f"{s['per_condition'][k]['delta']:+.2f}" for k in conditions)
                     + f" | {s['worst_condition_delta']:+.2f} |")
    summaries = {**({ref_name: results["reference_summary"]} if ref_name else {}),
                 **{name: m["summary"] for name, m in models.items()}}
    for title, key, columns in (("level", "per_level", levels), ("condition", "per_condition", conditions)):
        lines += ["", f"## Absolute SI-SNR per {title} (dB)", "", "| model | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for name, s in summaries.items():
            lines.append(f"| {name} | " + " | ".join(f"{s[key][k]['si_snr']:.2f}" for k in columns) + " |")
    lines += ["", "## Boundary clipping (% of int8 codes at the limits; worst level or condition)", "",
              "| model | input | output | input per level | output per level | RQB residual |", "|---|---|---|---|---|---|"]
    for name, m in models.items():
        s = m["summary"]
        per_in = " / ".join(f"{100 * s['per_level'][k]['input_clipping']:.3f}" for k in levels)
        per_out = " / ".join(f"{100 * s['per_level'][k]['output_clipping']:.3f}" for k in levels)
        residual = s.get("max_residual_clipping")
        lines.append(f"| {name} | {100 * s['max_input_clipping']:.3f} | {100 * s['max_output_clipping']:.3f} | "
                     f"{per_in} | {per_out} | {'–' if residual is None else f'{100 * residual:.3f}'} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmarks.plots import _save

    written = []
    for key, ylabel, name in (("si_snr", "SI-SNR (dB)", "robustness_level.png"),
                              ("delta", "SI-SNR difference to float (dB)", "robustness_delta.png")):
        fig, ax = plt.subplots(figsize=(8, 5))
        series = dict(results["models"])
        if key == "si_snr" and results.get("reference"):
            series = {results["reference"]: {"summary": results["reference_summary"]}, **series}
        for label, m in series.items():
            per_level = m["summary"]["per_level"]
            ax.plot([float(k) for k in per_level], [v[key] for v in per_level.values()], marker="o", label=label,
                    linestyle="--" if label.endswith(".onnx") else "-")
        if key == "delta":
            for bound in (-0.3, 0.3):
                ax.axhline(bound, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("clean speech level (dBFS, active RMS)")
        ax.set_ylabel(ylabel)
        ax.set_title("Robustness set, as deployed (2 s chunks)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out / name))
    return written


def _rounded(value: Any) -> Any:
    """Floats to 4 decimals (the JSON holds every item of every model; more digits are noise)."""
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help=".tflite, .onnx or our .pt checkpoints")
    parser.add_argument("--reference", help="float model (our .pt checkpoint), processed in the same chunks")
    parser.add_argument("--out", type=Path, required=True, help="folder for robustness.json/.md and the plots")
    parser.add_argument("--levels", type=float, nargs="+", help="clean-speech levels, dBFS (default: the set's)")
    parser.add_argument("--conditions", nargs="+", help="conditions (default: all of the set's)")
    parser.add_argument("--max-utterances", type=int, help="utterances per level and condition (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads (default 1)")
    parser.add_argument("--label", action="append", default=[], metavar="PATH=NAME",
                        help="name a model in the tables (default: its file name)")
    args = parser.parse_args(argv)
    from compressor.data.robustness import RobustnessSet

    options: dict[str, Any] = {}
    if args.levels:
        options["levels"] = tuple(args.levels)
    if args.conditions:
        options["conditions"] = tuple(args.conditions)
    if args.max_utterances:
        options["max_utterances"] = args.max_utterances
    dataset = RobustnessSet(**options)
    labels = dict(item.split("=", 1) for item in args.label)
    start = time.perf_counter()
    reference_rows = run_model(args.reference, dataset, args.threads) if args.reference else None
    results: dict[str, Any] = {"items": len(dataset), "reference": args.reference and Path(args.reference).name,
                               "models": {}}
    if reference_rows:
        results["reference_summary"] = summarize([dict(r) for r in reference_rows], None)
        results["reference_rows"] = reference_rows
    for path in args.models:
        rows = run_model(path, dataset, args.threads)
        results["models"][labels.get(path, Path(path).name)] = {"path": shown_path(path), "summary": summarize(rows, reference_rows),
                                                                "rows": rows}
    results["seconds"] = round(time.perf_counter() - start, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "robustness.json", json.dumps(_rounded(results), separators=(",", ":")) + "\n")
    text = markdown(results)
    write_text_atomic(args.out / "robustness.md", text)
    plot(results, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
