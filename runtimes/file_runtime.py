"""Exported files (.onnx in onnxruntime, .tflite in LiteRT) behind the Runtime interface."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from exporters.sessions import open_session
from runtimes.base import Runtime


class FileRuntime(Runtime):
    """Options: ``integer_kernels`` (.onnx: ORT's int8 fusion, default on);
    ``xnnpack`` (.tflite: the XNNPACK delegate, default on)."""

    def __init__(self, path: str | Path, threads: int | None = None, **options: object) -> None:
        self.session = open_session(path, threads, **options)
        self.metadata = self.session.metadata
        self.name = self.session.name
        self.path = Path(path)

    def run_codes(self, codes: np.ndarray) -> list[np.ndarray]:
        return self.session.run_codes(codes)
