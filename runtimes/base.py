"""One interface over every way a model runs: ``Runtime.process(pcm)``.

A deployed file has a fixed input length (``chunk_samples``) and int8 (or
uint8) tensors at its boundary. ``process`` takes int16 or float PCM of any
length, cuts it into overlapping chunks, quantizes each with the file's
input qparams, runs it, dequantizes the outputs and overlap-adds them with
a linear cross-fade, so long audio has no seams at chunk edges.

When the file declares a level stage (compressor/stages/level.py), each
chunk is scaled to the calibration level before it is quantized and scaled
back after. Every run counts the boundary codes that sit at the int8 limits
(``clipping()``), so callers can warn when audio clips the model.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from compressor.errors import DataError
from compressor.stages.level import LevelStage, run_with_gain
from compressor.stages.spectral import SpectralStage
from exporters.io_processing import decode, encode
from exporters.metadata import DeployMetadata, TensorSpec
from runtimes.chunking import overlap_add

DEFAULT_OVERLAP = 0.25  # of a chunk


def to_float_pcm(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1); float PCM passes unchanged. Mono only."""
    pcm = np.asarray(pcm)
    if pcm.ndim != 1:
        raise DataError(f"expected mono audio of shape (time,), got shape {pcm.shape}; down-mix it first")
    if pcm.size == 0:
        raise DataError("the audio is empty (0 samples)")
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0
    if not np.issubdtype(pcm.dtype, np.floating):
        raise DataError(f"PCM must be int16 or float, got {pcm.dtype}")
    pcm = pcm.astype(np.float32)
    if not np.all(np.isfinite(pcm)):
        raise DataError("the audio holds NaN or infinite samples")
    return pcm


class Runtime(ABC):
    """A loaded model; subclasses implement ``run_codes`` for one chunk."""

    metadata: DeployMetadata
    name: str = "runtime"

    @abstractmethod
    def run_codes(self, codes: np.ndarray) -> list[np.ndarray]:
        """One chunk: input codes of the file's input shape -> output codes."""

    @property
    def sample_rate(self) -> int:
        return self.metadata.sample_rate

    @property
    def chunk_samples(self) -> int:
        return self.metadata.chunk_samples

    @property
    def level_stage(self) -> LevelStage | None:
        """The file's level stage (None: the file runs at its inputs' own level)."""
        if not hasattr(self, "_level_stage"):
            self._level_stage = self.metadata.level_stage()
        return self._level_stage

    def run_chunk(self, audio: np.ndarray) -> np.ndarray:
        """Exactly ``chunk_samples`` float samples -> (sources, chunk_samples) float.

        With FQSE metadata the splitter makes the two int8 input channels and
        the combiner adds the RQB's residual output back (compressor/fqse/io_codec.py).
        The level stage, when declared, goes around all of it.
        """
        return run_with_gain(self.level_stage, self._run_model, np.asarray(audio, np.float32))

    def _run_model(self, audio: np.ndarray) -> np.ndarray:
        """One chunk at the model's level: through the file, and the spectral stage around it if declared."""
        spectral = self.spectral_stage
        if spectral is None:
            return self._run_boundary(audio)
        return spectral.run(self._run_boundary, audio.reshape(1, -1)).reshape(1, -1)

    @property
    def spectral_stage(self) -> SpectralStage | None:
        """The file's STFT/mask/iSTFT stage (None: the file takes and returns audio)."""
        if not hasattr(self, "_spectral_stage"):
            self._spectral_stage = self.metadata.spectral_stage()
        return self._spectral_stage

    def _run_boundary(self, audio: np.ndarray) -> np.ndarray:
        codes = encode(self.metadata, audio)
        outputs = self.run_codes(codes)
        # a spectral file's features have a floor by construction (|X| >= 0, log(|X| + eps)), which calibration
        # puts at the grid's low end: only their top end clips
        self._count_clipping("input", self.metadata.inputs[0], codes, split=bool(self.metadata.splitter),
                             top_only=self.spectral_stage is not None)
        self._count_clipping("output", self.metadata.outputs[0], outputs[0])
        for spec, out in zip(self.metadata.outputs[1:], outputs[1:]):
            # FQSE's RQB residual: at its limits the refinement is partial (the error stays within the
            # coarse output's half step), not a clipped signal; counted apart
            self._count_clipping("residual", spec, out)
        decoded = decode(self.metadata, outputs)
        return decoded if self.spectral_stage is not None else decoded[:, : audio.shape[-1]]

    def _count_clipping(self, where: str, spec: TensorSpec, codes: np.ndarray, split: bool = False,
                        top_only: bool = False) -> None:
        codes = np.asarray(codes)
        if split:  # FQSE: the high byte at its limits is 16-bit full scale; the low byte never clips
            codes = codes.reshape(-1, 2, codes.shape[-1])[:, 0]
        # a grid that starts at 0 (zero-point at qmin: a magnitude, a ReLU or sigmoid output) holds no clipped
        # values at its low end, only zeros and values below half a step
        low = codes <= spec.qmin if spec.zero_point > spec.qmin and not top_only else np.zeros(codes.shape, bool)
        at_limit = int(np.count_nonzero(low | (codes >= spec.qmax)))
        stats = self.clip_counts()
        stats.setdefault(where, [0, 0])
        stats[where][0] += at_limit
        stats[where][1] += int(codes.size)

    def clip_counts(self) -> dict[str, list[int]]:
        """{"input"|"output"[|"residual"]: [codes at the int8 limits, codes seen]} since the last ``reset_clipping``."""
        if not hasattr(self, "_clip_counts"):
            self._clip_counts = {"input": [0, 0], "output": [0, 0]}
        return self._clip_counts

    def clipping(self) -> dict[str, float]:
        """Fraction of input and of output codes at the int8 limits since the last ``reset_clipping``."""
        return {k: (hit / seen if seen else 0.0) for k, (hit, seen) in self.clip_counts().items()}

    def reset_clipping(self) -> None:
        self._clip_counts = {"input": [0, 0], "output": [0, 0]}

    def process(self, pcm: np.ndarray, overlap: float = DEFAULT_OVERLAP) -> np.ndarray:
        """Audio of any length -> (sources, time) float32 (``(time,)`` for one source)."""
        x = to_float_pcm(pcm)
        out = overlap_add(self.run_chunk, x, self.chunk_samples, overlap, self.metadata.num_sources)
        return out[0] if self.metadata.num_sources == 1 else out
