"""One interface over every way a model runs: ``Runtime.process(pcm)``.

A deployed file has a fixed input length (``chunk_samples``) and int8 (or
uint8) tensors at its boundary. ``process`` takes int16 or float PCM of any
length, cuts it into overlapping chunks, quantizes each with the file's
input qparams, runs it, dequantizes the outputs and overlap-adds them with
a linear cross-fade, so long audio has no seams at chunk edges.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from compressor.errors import DataError
from exporters.io_processing import decode, encode
from runtimes.chunking import overlap_add
from exporters.metadata import DeployMetadata

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

    def run_chunk(self, audio: np.ndarray) -> np.ndarray:
        """Exactly ``chunk_samples`` float samples -> (sources, chunk_samples) float.

        With FQSE metadata the splitter makes the two int8 input channels and
        the combiner adds the RQB's residual output back (compressor/fqse/io_codec.py).
        """
        return decode(self.metadata, self.run_codes(encode(self.metadata, audio)))[:, : audio.shape[-1]]

    def process(self, pcm: np.ndarray, overlap: float = DEFAULT_OVERLAP) -> np.ndarray:
        """Audio of any length -> (sources, time) float32 (``(time,)`` for one source)."""
        x = to_float_pcm(pcm)
        out = overlap_add(self.run_chunk, x, self.chunk_samples, overlap, self.metadata.num_sources)
        return out[0] if self.metadata.num_sources == 1 else out
