"""The float model as ONNX and as TFLite: the float baselines of the runtimes."""
from __future__ import annotations

from pathlib import Path

import torch

from compressor.errors import ExportError
from compressor.fileio import atomic_path

ONNX_OPSET = 17


def float_onnx(model: torch.nn.Module, chunk_samples: int, path: Path, example: torch.Tensor | None = None) -> Path:
    """``torch.onnx.export`` at a fixed input length (the same chunk the int8 files take; ``example``: another
    input, e.g. a spectral model's STFT features of one chunk)."""
    model.eval()
    example = torch.zeros(1, chunk_samples) if example is None else example
    with atomic_path(path) as tmp:
        try:
            # the TorchScript exporter: the dynamo one adds nothing for a fixed-shape conv net
            torch.onnx.export(model, (example,), str(tmp), opset_version=ONNX_OPSET, input_names=["audio"],
                              output_names=["sources"], dynamo=False)
        except Exception as exc:
            raise ExportError(f"{path}: torch.onnx.export of the float model failed: {exc}") from exc
    return path


def float_tflite(model: torch.nn.Module, chunk_samples: int, path: Path, example: torch.Tensor | None = None) -> Path:
    """``litert_torch.convert`` of the float model (runs with XNNPACK in LiteRT)."""
    import litert_torch

    model.eval()
    example = torch.zeros(1, chunk_samples) if example is None else example
    try:
        edge = litert_torch.convert(model, (example,))
    except Exception as exc:
        raise ExportError(f"{path}: litert_torch.convert of the float model failed: {exc}") from exc
    with atomic_path(path) as tmp:
        edge.export(str(tmp))
    return path
