"""Exported files (.onnx in onnxruntime, .tflite in LiteRT) behind the Runtime interface."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from compressor.stages.level import run_with_gain
from exporters.pipeline_onnx import PCM_SCALE, to_pcm16, wav_bytes
from exporters.sessions import open_session
from runtimes.base import Runtime


class FileRuntime(Runtime):
    """Options: ``integer_kernels`` (.onnx: ORT's int8 fusion, default on);
    ``xnnpack`` (.tflite: the XNNPACK delegate, default on).

    A pipeline ONNX (``compress export --pipeline``) takes and returns int16
    PCM itself; ``run_codes`` then means int16 samples in and out. The WAV
    variant (``--wav-pipeline``) is fed each chunk as the bytes of a WAV file.
    """

    def __init__(self, path: str | Path, threads: int | None = None, **options: object) -> None:
        self.session = open_session(path, threads, **options)
        self.metadata = self.session.metadata
        self.name = self.session.name
        self.path = Path(path)
        self.pipeline = bool(self.metadata.model.get("pipeline"))
        self.wav_in = self.pipeline and self.metadata.model["pipeline"]["input"]["dtype"] == "uint8"

    def run_codes(self, codes: np.ndarray) -> list[np.ndarray]:
        return self.session.run_codes(codes)

    def run_chunk(self, audio: np.ndarray) -> np.ndarray:
        if not self.pipeline:
            return super().run_chunk(audio)
        if self.metadata.model["pipeline"].get("stages_inside"):
            return self._run_pipeline(np.asarray(audio, np.float32))
        return run_with_gain(self.level_stage, self._run_pipeline, np.asarray(audio, np.float32))

    def _run_pipeline(self, audio: np.ndarray) -> np.ndarray:
        pcm16 = to_pcm16(audio).reshape(1, -1)
        pcm = self.run_codes(wav_bytes(pcm16, self.metadata.sample_rate) if self.wav_in else pcm16)[0]
        return (pcm.astype(np.float32) / np.float32(PCM_SCALE))[:, : audio.shape[-1]]
