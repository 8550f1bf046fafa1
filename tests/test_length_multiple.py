"""A model whose code turns its input length into a Python int runs at the multiples strict tracing finds, and
at every other length through zero-padding, in the simulation, a checkpoint and an export."""
from __future__ import annotations

import pytest
import torch

from compressor.errors import ConfigError
from compressor.quant import QuantConfig, calibrate, quantize
from compressor.quant.model import quantize_program
from exporters import ExportConfig, export
from tests.test_norm_idioms import SpecializingPad


class PadAndCrop(torch.nn.Module):
    """asteroid SuDORMRF's shape: pad to a multiple of 8 in Python, a strided encoder and decoder, crop back."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = torch.nn.Conv1d(1, 8, 16, stride=8, padding=4)
        self.decoder = torch.nn.ConvTranspose1d(8, 1, 16, stride=8, padding=4)

    def forward(self, wav):
        length = wav.shape[-1]
        x = wav.unsqueeze(1)
        values_to_pad = int(x.shape[-1]) % 8
        if values_to_pad:
            x = torch.cat([x, x.new_zeros(x.shape[0], 1, 8 - values_to_pad)], dim=-1)
        return self.decoder(torch.relu(self.encoder(x)))[:, 0, :length]


@pytest.fixture(scope="module")
def padded_model():
    model = PadAndCrop().eval()
    # 7-bit weights: onnxruntime's int8 convolutions saturate with 8-bit ones on x86 without VNNI
    qmodel = quantize(model, torch.randn(2, 256) * 0.1, QuantConfig(weight_bits=7))
    calibrate(qmodel, [torch.randn(2, 256) * 0.1 for _ in range(3)])
    return model, qmodel


def test_the_multiple_is_found_and_other_lengths_run_as_the_model_runs_them(padded_model):
    model, qmodel = padded_model
    assert qmodel.length_multiple == 8
    x = torch.randn(1, 301) * 0.1
    with torch.no_grad():
        out = qmodel(x)
        assert out.shape == model(x).shape == (1, 301)
        # the zero-padded sample run gives the same samples, cropped
        assert torch.equal(out, qmodel(torch.nn.functional.pad(x, (0, 3)))[..., :301])
        quantized_error = (out - model(x)).norm() / model(x).norm()
    assert quantized_error < 0.2  # the int8 simulation of the same function, not another one


def test_a_model_without_cropping_keeps_its_frame_count():
    model = SpecializingPad().eval()
    qmodel = quantize(model, torch.randn(2, 64))
    assert qmodel.length_multiple == 8
    x = torch.randn(1, 45)
    with torch.no_grad():
        assert qmodel(x).shape == model(x).shape == (1, 4, 6)


def test_the_multiple_travels_with_the_traced_program(padded_model):
    _, qmodel = padded_model
    rebuilt = quantize_program(qmodel.traced_program, qmodel.example_shapes, qmodel.config)
    assert rebuilt.length_multiple == 8


def test_an_export_chunk_that_is_not_a_multiple_is_refused_before_any_work(padded_model, tmp_path):
    _, qmodel = padded_model
    with pytest.raises(ConfigError, match=r"multiples of 8 samples.*--chunk-seconds 0\.0625"):
        export(qmodel, "onnx", tmp_path / "q.onnx", config=ExportConfig(target="onnx", chunk_seconds=1003 / 16000))
    assert not (tmp_path / "q.onnx").exists()


def test_an_export_at_a_multiple_verifies(padded_model, tmp_path):
    _, qmodel = padded_model
    result = export(qmodel, "onnx", tmp_path / "q.onnx", config=ExportConfig(target="onnx", chunk_seconds=0.016),
                    calibration=[torch.randn(256).numpy() * 0.1])
    assert result.verification.op_max_lsb <= 1
