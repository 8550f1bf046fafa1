"""Child process of ``compress bench``: time one model and report its peak memory as JSON.

    python -m benchmarks.latency_worker MODEL --threads 1,2 --runs 20 --warmup 5

A fresh process per model keeps one model's allocations out of another's
peak resident memory. Deployed files run through ``device_runner`` and
never import torch (which alone takes a few hundred MB); checkpoints run
through ``runtimes.load`` (PyTorch).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchmarks import device_runner

FILE_SUFFIXES = (".onnx", ".tflite")


def open_for_timing(path: Path, threads: int, chunk_seconds: float):
    """(model with .process/.run_chunk, sample rate, chunk samples, runtime name)."""
    if path.suffix.lower() in FILE_SUFFIXES:
        model = device_runner.FileModel(path, threads=threads)
        return model, model.sample_rate, model.chunk_samples, model.runtime
    import torch

    import runtimes

    model = runtimes.load(path, threads=threads, chunk_seconds=chunk_seconds)
    return model, model.sample_rate, model.chunk_samples, f"{model.name} (torch {torch.__version__})"


def measure(path: Path, threads: list[int], runs: int, warmup: int, chunk_seconds: float) -> dict:
    by_threads, runtime = [], None
    for n in threads:
        model, sample_rate, chunk, runtime = open_for_timing(path, n, chunk_seconds)
        by_threads.append({"threads": n, **device_runner.latency(model, sample_rate, chunk, runs, warmup)})
    return {"runtime": runtime, "by_threads": by_threads, "peak_rss_mb": device_runner.peak_rss_mb()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", required=True, help="comma-separated thread counts")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--chunk-seconds", type=float, default=2.0, help="checkpoints: the chunk to time")
    args = parser.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    print(json.dumps(measure(args.model, threads, args.runs, args.warmup, args.chunk_seconds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
