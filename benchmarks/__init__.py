"""Benchmarks: size, BOPs, latency, memory and quality of deployed models, and the peer comparison.

    >>> from benchmarks import BenchConfig, bench
    >>> entries = bench(["fqse.tflite"], BenchConfig(reference="float.pt"))

Names load on first use: ``benchmarks.device_runner`` and the latency
worker import this package in processes that must not import torch.
"""
from __future__ import annotations

from typing import Any

_LAZY = {"BenchConfig": "benchmarks.bench", "bench": "benchmarks.bench", "pack": "benchmarks.pack",
         "write_reports": "benchmarks.report", "write_plots": "benchmarks.plots"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'benchmarks' has no attribute {name!r}")


__all__ = sorted(_LAZY)
