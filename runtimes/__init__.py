"""Run exported models: ``runtimes.load(path)`` -> a Runtime with ``.process(pcm)``.

    >>> rt = runtimes.load("model.tflite", threads=2)
    >>> enhanced = rt.process(pcm_int16)      # any length, chunked with cross-fades

``.onnx`` opens in onnxruntime, ``.tflite`` in LiteRT (XNNPACK), and our
checkpoints (``.pt``) run as the PyTorch simulation of the int8 model.
"""
from __future__ import annotations

from pathlib import Path

from compressor.errors import RuntimeLoadError
from runtimes.base import Runtime, overlap_add, to_float_pcm


def load(path: str | Path, threads: int | None = None, **options: object) -> Runtime:
    """Open ``path`` with the runtime its format needs."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeLoadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".tflite"):
        from runtimes.file_runtime import FileRuntime

        return FileRuntime(path, threads=threads, **options)
    if suffix in (".pt", ".pth", ".pt2"):
        from runtimes.torch_runtime import TorchRuntime

        return TorchRuntime(path, threads=threads, **options)  # type: ignore[arg-type]
    raise RuntimeLoadError(f"{path}: unknown model format {suffix!r}; expected .onnx, .tflite or a checkpoint (.pt)")


__all__ = ["Runtime", "load", "overlap_add", "to_float_pcm"]
