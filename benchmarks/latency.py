"""Latency and peak memory of a model, each model in its own child process (``latency_worker``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from compressor.errors import CompressorError


class BenchmarkError(CompressorError):
    """A benchmark step failed (names the model and the step)."""


def all_threads() -> int:
    """Cores this process may run on (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def thread_counts(threads: int | None) -> list[int]:
    """1 thread and all threads (``threads`` where given), without repeats."""
    return sorted({1, threads or all_threads()})


def measure_latency(path: str | Path, threads: int | None = None, runs: int = 20, warmup: int = 5,
                    chunk_seconds: float = 2.0, timeout_s: float = 900.0) -> dict:
    """{runtime, by_threads: [{threads, 1s: {median, p90, rtf...}, chunk: {...}}], peak_rss_mb}."""
    if runs < 1 or warmup < 0:
        raise BenchmarkError(f"latency needs runs >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "benchmarks.latency_worker", str(Path(path).resolve()),
               "--threads", ",".join(map(str, thread_counts(threads))), "--runs", str(runs),
               "--warmup", str(warmup), "--chunk-seconds", str(chunk_seconds)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env, cwd=root)
    except subprocess.TimeoutExpired as exc:
        raise BenchmarkError(f"{path}: latency measurement took over {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise BenchmarkError(f"{path}: latency measurement failed (exit {done.returncode}):\n{tail}")
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError) as exc:
        raise BenchmarkError(f"{path}: the latency worker printed no JSON: {done.stdout[-300:]!r}") from exc
