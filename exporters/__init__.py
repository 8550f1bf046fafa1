"""Exporters: a quantized model to integer-only QDQ-ONNX or int8 TFLite.

    >>> from exporters import export
    >>> result = export(qmodel, target="tflite", path="model.tflite")
    >>> result.verification.max_lsb        # difference to the simulation, output LSBs

The file is lowered (``exporters.lowering``), converted, checked to hold no
float compute op, run against the simulated model, and only then written.
"""
from exporters.api import ExportConfig, ExportResult, export
from exporters.lowering import LoweredModel, lower

__all__ = ["ExportConfig", "ExportResult", "LoweredModel", "export", "lower"]
