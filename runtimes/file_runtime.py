"""Exported files (.onnx in onnxruntime, .tflite in LiteRT) behind the Runtime interface."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from exporters.pipeline_onnx import PCM_SCALE, to_pcm16
from exporters.sessions import open_session
from runtimes.base import Runtime


class FileRuntime(Runtime):
    """Options: ``integer_kernels`` (.onnx: ORT's int8 fusion, default on);
    ``xnnpack`` (.tflite: the XNNPACK delegate, default on).

    A pipeline ONNX (``compress export --pipeline``) takes and returns int16
    PCM itself; ``run_codes`` then means int16 samples in and out.
    """

    def __init__(self, path: str | Path, threads: int | None = None, **options: object) -> None:
        self.session = open_session(path, threads, **options)
        self.metadata = self.session.metadata
        self.name = self.session.name
        self.path = Path(path)
        self.pipeline = bool(self.metadata.model.get("pipeline"))

    def run_codes(self, codes: np.ndarray) -> list[np.ndarray]:
        return self.session.run_codes(codes)

    def run_chunk(self, audio: np.ndarray) -> np.ndarray:
        if not self.pipeline:
            return super().run_chunk(audio)
        pcm = self.run_codes(to_pcm16(audio).reshape(1, -1))[0]
        return (pcm.astype(np.float32) / np.float32(PCM_SCALE))[:, : audio.shape[-1]]
