"""The numpy arithmetic around an exported file: audio -> input codes, output codes -> audio.

Driven by the file's own metadata: quantize with the input's qparams (after
the FQSE splitter when the model has one); dequantize every output and add
the RQB's residual back (FQSE combiner). Runtimes, the export verifier and
the pipeline ONNX check all use these two functions, so there is one
definition of what a deployed file's boundary means.
"""
from __future__ import annotations

import numpy as np

from compressor.errors import DataError
from exporters.metadata import DeployMetadata


def encode(meta: DeployMetadata, audio: np.ndarray) -> np.ndarray:
    """Exactly ``chunk_samples`` float samples (a spectral file: the stage's features of them) -> input codes."""
    spec = meta.inputs[0]
    if meta.splitter:
        from compressor.fqse.io_codec import split

        model_input = split(np.asarray(audio, np.float32).reshape(1, -1), np, axis=-2).astype(np.float32)
    elif spec.layout == "batch,time" or meta.spectral_stage() is not None:
        model_input = audio  # a spectral file's input: the STFT features the stage computed
    else:
        raise DataError(
            f"this model's input is {spec.shape} ({spec.layout}), not mono audio (batch, time): process() "
            "cannot feed it; use run_codes() with inputs of that shape")
    return spec.quantize(np.asarray(model_input).reshape(spec.shape))


def decode(meta: DeployMetadata, outputs: list[np.ndarray]) -> np.ndarray:
    """The file's output codes -> (sources, time) float audio."""
    values = [spec.dequantize(o) for spec, o in zip(meta.outputs, outputs)]
    if meta.combiner:
        from compressor.fqse.io_codec import combine

        out = combine(values[0], values[1], meta.combiner["gain"])
    else:
        out = values[0]
    if meta.spectral_stage() is not None:
        return np.asarray(out)  # a mask or spectrum: the stage turns it into audio
    return np.asarray(out).reshape(meta.num_sources, -1)


__all__ = ["decode", "encode"]
