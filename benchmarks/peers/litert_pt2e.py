"""litert-torch's own int8 path: its PT2E quantizer with the standard static int8 config.

As litert-torch documents it: ``torch.export`` the float model, ``prepare_pt2e``
with ``PT2EQuantizer().set_global(get_symmetric_quantization_config(
is_per_channel=True))``, run the calibration audio through it (its own
observers: histogram for activations, min/max per channel for weights),
``convert_pt2e`` and ``litert_torch.convert`` with that quantizer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from compressor.errors import ExportError
from compressor.fileio import atomic_path


def litert_pt2e_int8(model: torch.nn.Module, chunks: Sequence[np.ndarray], path: Path) -> Path:
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e import quantize_pt2e

    model.eval()
    example = (torch.from_numpy(np.asarray(chunks[0], np.float32).reshape(1, -1)),)
    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    try:
        prepared = quantize_pt2e.prepare_pt2e(torch.export.export(model, example).module(), quantizer)
        with torch.no_grad():
            for chunk in chunks:
                prepared(torch.from_numpy(np.asarray(chunk, np.float32).reshape(1, -1)))
        converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
        edge = litert_torch.convert(converted, example, quant_config=QuantConfig(pt2e_quantizer=quantizer))
    except Exception as exc:  # torch.export / torchao / the converter raise assorted types
        raise ExportError(f"{path}: litert-torch PT2E int8 conversion failed: {exc}") from exc
    with atomic_path(path) as tmp:
        edge.export(str(tmp))
    return path
