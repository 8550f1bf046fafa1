"""The FQSE model as the rest of the toolkit sees it: mixture in, enhanced signal out.

``FQSEPipeline`` wraps the core (float ``FQSEConvTasNet`` or its
``QuantizedModel``) with the splitter before it and the combiner after it,
the same io_codec arithmetic a runtime runs around the exported int8 model.
Training, evaluation and the demo call the pipeline; checkpoints hold the
core alone (its graph has the int8 input and outputs).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from compressor.fqse import io_codec
from compressor.fqse.io_config import IOConfig, apply_io

_PCM = 32768.0


class FQSEPipeline(nn.Module):
    def __init__(self, core: nn.Module, io: IOConfig) -> None:
        super().__init__()
        self.core = core
        self.io = io

    def core_input(self, mixture: torch.Tensor) -> torch.Tensor:
        """What the core takes for a mixture ``(B, T)``: ``(B, 2, T)`` with the splitter."""
        if self.io.splitter:
            return io_codec.split(mixture, torch, axis=-2)
        if self.io.input == "16bit":
            # The 16-bit setting means 16-bit PCM: put the float mixture on that grid.
            return torch.clamp(torch.round(mixture * _PCM), -_PCM, _PCM - 1) / _PCM
        return mixture

    def forward(self, mixture: torch.Tensor) -> torch.Tensor:
        out = self.core(self.core_input(mixture))
        if self.io.rqb:
            y_o, eps = out
            return io_codec.combine(y_o, eps, self.io.gain)
        return out

    # QuantizedModel's API, for code that treats any quantized model alike.
    def set_mode(self, mode: str) -> None:
        self.core.set_mode(mode)
        if mode == "quantize":
            apply_io(self.core, self.io)  # the 16-bit settings switch I/O quantizers off again

    @property
    def config(self) -> Any:
        return self.core.config


__all__ = ["FQSEPipeline"]
