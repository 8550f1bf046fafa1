"""LSTM cell state in 8 or 16 bits: what the wider cell buys, and whether both targets deploy it.

    python -m benchmarks.cell_precision --out benchmarks/results/recurrent [--models lstm_masker dual_path]
        [--qat-steps 300] [--chunk-seconds 0.5] [--threads 1] [--work DIR]

For each zoo model with LSTMs (float checkpoint ``examples/checkpoints/NAME_demo.pt``): ``compress ptq`` and
``compress qat --recipe vanilla`` with the defaults (every cell tensor int8) and with
``--precision '#rnn_*_cell=a16'`` (the cell state c of every LSTM at 16 bits, through the per-layer precision
rules; the other cell tensors stay int8); SI-SNR per input-SNR bucket on the demo test split, processed as
deployed (0.5 s chunks with cross-fades, ``runtimes.load``); then each 16-bit-cell QAT model exported to both
targets (``compress export``, verified) and its files' SI-SNR and time per chunk next to the int8 cell's.
The GRU has no cell state (its state is its output, which the next layer reads in int8), so crn_gru is not run.

Writes ``cell_precision.json`` and ``cell_precision.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.zoo_models import CHECKPOINTS, _cli, _quality, _time_per_chunk
from compressor.fileio import write_text_atomic
from compressor.metrics import BUCKETS

MODELS = ("lstm_masker", "dual_path")
CELL16 = "#rnn_*_cell=a16"


def run_model(name: str, work: Path, qat_steps: int, chunk_seconds: float, threads: int) -> dict[str, Any]:
    float_ckpt = CHECKPOINTS / f"{name}_demo.pt"
    row: dict[str, Any] = {"model": name, "qat_steps": qat_steps, "chunk_seconds": chunk_seconds, "quality": {},
                           "files": {}}
    row["quality"]["float"] = _quality(float_ckpt, chunk_seconds, threads)["si_snr"]
    for cell, extra in (("cell8", []), ("cell16", ["--precision", CELL16])):
        ptq, qat = work / f"{name}_ptq_{cell}.pt", work / f"{name}_qat_{cell}.pt"
        _cli("ptq", float_ckpt, "--data", "demo", "--threads", threads, "--out", ptq, *extra)
        _cli("qat", float_ckpt, "--recipe", "vanilla", "--steps", qat_steps, "--threads", threads, "--out", qat,
             *extra)
        row["quality"][f"ptq_{cell}"] = _quality(ptq, chunk_seconds, threads)["si_snr"]
        simulated = _quality(qat, chunk_seconds, threads)
        row["quality"][f"qat_{cell}"] = simulated["si_snr"]
        for target in ("tflite", "onnx"):
            path = work / f"{name}_qat_{cell}.{target}"
            report = work / f"{name}_{cell}_{target}_report.json"
            try:
                seconds = _cli("export", qat, "--target", target, "--chunk-seconds", chunk_seconds, "--threads",
                               threads, "--report", report, "--out", path)
            except RuntimeError as exc:  # a refusal is a result: say which op and why
                row["files"][f"{cell}_{target}"] = {"error": str(exc).splitlines()[-1][:400]}
                continue
            verification = json.loads(report.read_text()).get("verification") or {}
            row["files"][f"{cell}_{target}"] = {
                "export_seconds": round(seconds, 1), "kib": round(path.stat().st_size / 1024, 1),
                "op_max_lsb": verification.get("op_max_lsb"), "snr_db": verification.get("snr_db"),
                "si_snr": _quality(path, chunk_seconds, threads)["si_snr"],
                "ms_per_chunk": _time_per_chunk(path, threads)}
    return row


def _cells(si_snr: dict[str, Any]) -> str:
    return " / ".join(f"{si_snr[g]:.2f}" for g in ("all", *BUCKETS))


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["# LSTM cell state: 8 or 16 bits", "",
             "`python -m benchmarks.cell_precision` (see its docstring). SI-SNR in dB on the demo test split, "
             f"all / {' / '.join(BUCKETS)} input-SNR bucket, processed as deployed (chunks with cross-fades); "
             f"16-bit cell: `--precision '{CELL16}'`.", "",
             "| model | float | PTQ int8 cell | PTQ 16-bit cell | QAT int8 cell | QAT 16-bit cell |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        q = r["quality"]
        lines.append(f"| {r['model']} | " + " | ".join(_cells(q[k]) for k in
                                                      ("float", "ptq_cell8", "ptq_cell16", "qat_cell8", "qat_cell16"))
                     + " |")
    lines += ["", "Deployed QAT files (verification: worst op in LSB, end-to-end SNR against the simulation; time: "
              "median of 30 runs of one chunk, 1 thread; on an x86 CPU without VNNI onnxruntime runs these "
              "8-bit-weight files with its QDQ fusion off, exporters/sessions.py, so .onnx times there are not "
              "int8-kernel times):", "",
              "| model | file | cell | KiB | export s | ops max LSB | SNR vs simulation dB | SI-SNR all | ms per chunk |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for target in ("tflite", "onnx"):
            for cell in ("cell8", "cell16"):
                f = r["files"].get(f"{cell}_{target}", {})
                label = "int8" if cell == "cell8" else "16-bit"
                if "error" in f:
                    lines.append(f"| {r['model']} | .{target} | {label} | refused: {f['error']} | | | | | |")
                    continue
                lines.append(f"| {r['model']} | .{target} | {label} | {f['kib']} | {f['export_seconds']} | "
                             f"{f['op_max_lsb']} | {f['snr_db']:.1f} | {f['si_snr']['all']:.2f} | "
                             f"{f['ms_per_chunk']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/recurrent"))
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--qat-steps", type=int, default=300)
    ap.add_argument("--chunk-seconds", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("/tmp/cell_precision"))
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        print(f"== {name}", flush=True)
        rows.append(run_model(name, args.work, args.qat_steps, args.chunk_seconds, args.threads))
        write_text_atomic(args.out / "cell_precision.json", json.dumps(rows, indent=1) + "\n")
    write_text_atomic(args.out / "cell_precision.md", markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
