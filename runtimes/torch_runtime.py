"""Our checkpoints behind the Runtime interface: the PyTorch simulation (or the float model)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compressor.checkpoint import load_model
from compressor.module_mode import set_training
from exporters.api import ExportConfig, _input_shape, deploy_metadata
from exporters.lowering import lower
from exporters.metadata import DeployMetadata, TensorSpec, io_processing, stages_of
from runtimes.base import Runtime


class TorchRuntime(Runtime):
    """A quantized checkpoint runs as its simulation; a float one as the float model.

    Same chunking and the same boundary quantization as the exported files,
    so the three runtimes can be compared sample for sample.
    """

    name = "pytorch"

    def __init__(self, path: str | Path, threads: int | None = None, chunk_seconds: float = 2.0,
                 sample_rate: int = 16000, model_factory: str | None = None, trust_pickle: bool = False) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path)
        loaded = load_model(self.path, model_factory=model_factory, trust_pickle=trust_pickle)
        self.model = set_training(loaded.model, False)  # a float .pt2 program refuses .eval()
        self.quantized = loaded.quantized
        sample_rate = int(loaded.info.get("sample_rate", sample_rate))
        cfg = ExportConfig(target="onnx", uint8_activations=False, sample_rate=sample_rate, chunk_seconds=chunk_seconds)
        if self.quantized:
            splitter, combiner = io_processing(loaded.recipe)
            stages = stages_of(loaded.recipe)
            lowered = lower(self.model, int8_io=True, input_shape=_input_shape(self.model, cfg, stages))
            self.metadata = deploy_metadata(self.model, lowered, cfg,
                                            {"path": str(path), "splitter": splitter, "combiner": combiner,
                                             "stages": stages})
        else:
            chunk = cfg.chunk_samples
            with torch.no_grad():
                out = self.model(torch.zeros(1, chunk))
            float_spec = TensorSpec("audio", "int8", [1, chunk], 1.0, 0, "batch,time")
            self.metadata = DeployMetadata(target="pytorch-float", sample_rate=sample_rate, chunk_samples=chunk,
                                           num_sources=out.shape[1] if out.dim() == 3 else 1,
                                           inputs=[float_spec], outputs=[float_spec])
        self.name = "pytorch-sim" if self.quantized else "pytorch-float"

    def run_codes(self, codes: np.ndarray) -> list[np.ndarray]:
        if not self.quantized:
            raise TypeError("a float model has no int8 boundary; use run_chunk/process")
        spec_in = self.metadata.inputs[0]
        with torch.no_grad():
            y = self.model(torch.from_numpy(spec_in.dequantize(codes)))
        outputs = y if isinstance(y, (tuple, list)) else [y]
        return [spec.quantize(o.numpy()) for spec, o in zip(self.metadata.outputs, outputs)]

    def run_chunk(self, audio: np.ndarray) -> np.ndarray:
        if self.quantized:
            return super().run_chunk(audio)
        with torch.no_grad():
            y = self.model(torch.from_numpy(audio.reshape(1, -1).astype(np.float32)))
        return y.numpy().reshape(self.metadata.num_sources, -1)[:, : audio.shape[-1]]
