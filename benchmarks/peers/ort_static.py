"""onnxruntime's own static quantizer on the float ONNX: ``quantize_static``, QDQ, per-channel.

Run as its documentation describes: ``quant_pre_process`` (shape inference
and graph clean-up), then ``quantize_static`` with a calibration data reader
over the same calibration audio our PTQ sees, once per calibration method.
Everything else is left at ORT's defaults (uint8 activations, int8 weights).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from compressor.errors import ExportError
from compressor.fileio import atomic_path

CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over fixed-length chunks."""

    def __init__(self, input_name: str, chunks: Sequence[np.ndarray]) -> None:
        self._items = iter([{input_name: c.reshape(1, -1).astype(np.float32)} for c in chunks])

    def get_next(self) -> dict | None:
        return next(self._items, None)


def ort_quantize_static(float_onnx: Path, chunks: Sequence[np.ndarray], method: str, path: Path) -> Path:
    """The float ONNX quantized by ``quantize_static`` with calibration ``method`` (one of CALIBRATION_METHODS)."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ExportError(f"unknown onnxruntime calibration method {method!r}; expected one of {CALIBRATION_METHODS}")
    input_name = ort.InferenceSession(str(float_onnx), providers=["CPUExecutionProvider"]).get_inputs()[0].name
    with tempfile.TemporaryDirectory(prefix="ort-peer-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(float_onnx), str(prepared))
            with atomic_path(path) as out:
                quantize_static(str(prepared), str(out), _Reader(input_name, chunks),
                                quant_format=QuantFormat.QDQ, per_channel=True,
                                calibrate_method=getattr(CalibrationMethod, method))
        except ExportError:
            raise
        except Exception as exc:  # the quantizer raises assorted types; name the step and the file
            raise ExportError(f"{path}: onnxruntime quantize_static ({method}) failed: {exc}") from exc
    return path
