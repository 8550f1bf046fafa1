"""Quantization core: quantizers, graph quantization, calibration."""
from compressor.quant.calibration import calibrate
from compressor.quant.config import QuantConfig
from compressor.quant.model import QuantizedModel, quantize

__all__ = ["QuantConfig", "QuantizedModel", "calibrate", "quantize"]
