"""Fully Quantized Speech Enhancement (Cohen, Habi, Netzer 2023; ../shared/seeds/000_*).

- ``io_codec``: the input splitter and the RQB output combiner (numpy-only
  arithmetic, the runtimes' pre/post-processing);
- ``model``: Conv-TasNet with the splitter front-end and the Residual
  Quantization Block, plain PyTorch;
- ``io_config``: input/output precision, and pinning it on a quantized graph;
- ``pipeline``: split -> model -> combine, what training and evaluation call;
- ``cost``: MACs, GBOPs and model size for the tables.
SNR augmentation (eq. 2) is ``compressor.data.snr_rescale``; the recipe is
``compressor.recipes.fqse``.
"""
from compressor.fqse.io_config import IOConfig, apply_io, io_quantizers
from compressor.fqse.model import FQSEConvTasNet, FQSEModelConfig
from compressor.fqse.pipeline import FQSEPipeline

__all__ = ["FQSEConvTasNet", "FQSEModelConfig", "FQSEPipeline", "IOConfig", "apply_io", "io_quantizers"]
