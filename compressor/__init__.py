"""audio-compress: quantization-aware training of audio models into fully 8-bit ones.

The entry points:

    compressor.quantize(model, example_input, QuantConfig())  # insert quantizers
    compressor.calibrate(qmodel, batches)                     # PTQ ranges / LSQ init
    compressor.load_model(path)                               # any accepted model file
"""
from compressor.checkpoint import load_model, save_float, save_quantized
from compressor.quant import QuantConfig, QuantizedModel, calibrate, quantize

__all__ = ["QuantConfig", "QuantizedModel", "calibrate", "load_model", "quantize", "save_float", "save_quantized"]
