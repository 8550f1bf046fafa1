"""Deployed files against the simulated model on the demo test split.

    python -m benchmarks.export_parity [CHECKPOINT ...] [--chunk-seconds 2] [--threads 2]

For each quantized checkpoint (default: the demo's vanilla QAT model in
demo_out/), exports it to int8 TFLite and QDQ-ONNX (verification on), runs
every test clip through the PyTorch simulation, LiteRT (XNNPACK) and
onnxruntime with the same chunking, and reports the largest output
difference in LSBs and the SI-SNR/SDR/STOI of each runtime beside the
simulation's. Goal: every deployed file within 0.01 dB SI-SNR of the
simulation. Writes benchmarks/results/export_parity.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import runtimes
from compressor.checkpoint import load_model
from compressor.data import open_dataset
from compressor.evaluation import evaluate
from exporters import ExportConfig, export
from exporters.metadata import io_processing

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CHECKPOINTS = [Path("demo_out/vanilla.pt"), Path("demo_out/fqse.pt")]


class RuntimeAsModule(torch.nn.Module):
    """Lets compressor.evaluation run a Runtime like a model: (1, T) -> (1, S, T)."""

    def __init__(self, runtime: runtimes.Runtime) -> None:
        super().__init__()
        self.runtime = runtime

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        out = self.runtime.process(mixture[0].numpy())
        return torch.from_numpy(np.atleast_2d(out)).unsqueeze(0)


def max_lsb(a: runtimes.Runtime, b: runtimes.Runtime, clips: list[np.ndarray]) -> int:
    scale = b.metadata.outputs[0].scale
    worst = 0.0
    for clip in clips:
        worst = max(worst, float(np.max(np.abs(a.process(clip) - b.process(clip)))) / scale)
    return int(round(worst))


def run(checkpoint: Path, chunk_seconds: float, threads: int, folder: Path, tolerance: float) -> dict:
    loaded = load_model(checkpoint)
    if not loaded.quantized:
        raise SystemExit(f"{checkpoint} is not a quantized checkpoint")
    test = open_dataset("demo:test")
    clips = [test[i]["mixture"].numpy() for i in range(len(test))]
    calibration = open_dataset("demo:valid")
    calib = [calibration[i]["mixture"].numpy() for i in range(4)]
    sim = runtimes.load(checkpoint, chunk_seconds=chunk_seconds, threads=threads)
    row: dict = {"checkpoint": str(checkpoint), "recipe": (loaded.recipe or {}).get("name")}
    row["simulation"] = _quality(evaluate(RuntimeAsModule(sim), test, progress=False))
    for target in ("tflite", "onnx"):
        path = folder / f"{checkpoint.stem}.{target}"
        start = time.perf_counter()
        splitter, combiner = io_processing(loaded.recipe)
        result = export(loaded.model, target, path, calibration=calib,
                        model_info={"splitter": splitter, "combiner": combiner},
                        config=ExportConfig(target=target, chunk_seconds=chunk_seconds, threads=threads,
                                            tolerance_lsb=tolerance))
        seconds = time.perf_counter() - start
        deployed = runtimes.load(path, threads=threads)
        quality = _quality(evaluate(RuntimeAsModule(deployed), test, progress=False))
        row[target] = {
            "bytes": path.stat().st_size, "export_s": round(seconds, 1), "runtime": deployed.name,
            "verification": {k: v for k, v in result.verification.to_dict().items() if k != "drift"},
            "float_ops": result.ops["float_op_count"],
            "test_max_lsb_vs_simulation": max_lsb(deployed, sim, clips),
            "quality": quality,
            "delta_si_snr_vs_simulation": round(quality["si_snr"] - row["simulation"]["si_snr"], 4),
        }
        print(f"{checkpoint.name} {target}: {row[target]}")
    return row


def _quality(summary: dict) -> dict:
    return {"si_snr": round(summary["si_snr"]["all"], 4), "si_snr_low": round(summary["si_snr"]["low"], 4),
            "si_snr_mid": round(summary["si_snr"]["mid"], 4), "si_snr_high": round(summary["si_snr"]["high"], 4),
            "sdr": round(summary["sdr"], 4), "stoi": round(summary["stoi"], 4)}


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        "# Deployed files vs the simulated model (demo test split, 40 clips)", "",
        f"{meta['cpu']}, {meta['threads']} threads, torch {meta['torch']}; chunks of {meta['chunk_seconds']} s "
        "with 25% cross-faded overlap, the same for every runtime.", "",
        "| model | runtime | size KiB | export s | float ops | op max LSB (own inputs) | export SNR dB | max LSB (test) "
        "| SI-SNR | ΔSI-SNR vs sim | low | mid | high | SDR | STOI |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["simulation"]
        lines.append(f"| {Path(r['checkpoint']).stem} | simulation | | | | | | | {s['si_snr']:.3f} | | {s['si_snr_low']:.2f} | "
                     f"{s['si_snr_mid']:.2f} | {s['si_snr_high']:.2f} | {s['sdr']:.2f} | {s['stoi']:.3f} |")
        for target in ("tflite", "onnx"):
            t = r[target]
            q = t["quality"]
            lines.append(
                f"| {Path(r['checkpoint']).stem} | {t['runtime']} ({target}) | {t['bytes'] / 1024:.0f} | {t['export_s']} | "
                f"{t['float_ops']} | {t['verification']['op_max_lsb']} | {t['verification']['snr_db']:.1f} | "
                f"{t['test_max_lsb_vs_simulation']} | {q['si_snr']:.3f} | "
                f"{t['delta_si_snr_vs_simulation']:+.4f} | {q['si_snr_low']:.2f} | {q['si_snr_mid']:.2f} | "
                f"{q['si_snr_high']:.2f} | {q['sdr']:.2f} | {q['stoi']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="*", type=Path, default=DEFAULT_CHECKPOINTS)
    parser.add_argument("--chunk-seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--tolerance-lsb", type=float, default=1.0, help="export verification tolerance")
    args = parser.parse_args()
    from benchmarks.qat_step_time import cpu_name

    with tempfile.TemporaryDirectory() as tmp:
        rows = [run(c, args.chunk_seconds, args.threads, Path(tmp), args.tolerance_lsb) for c in args.checkpoints]
    meta = {"cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
            "python": platform.python_version(), "chunk_seconds": args.chunk_seconds}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export_parity.json").write_text(json.dumps({"machine": meta, "rows": rows}, indent=2) + "\n")
    (RESULTS / "export_parity.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
