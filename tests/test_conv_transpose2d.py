"""nn.ConvTranspose2d in a decoder: quantized, exported integer-only to both targets (polyphase conv2d), counted."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from compressor.errors import ExportError
from compressor.ops.macs import count_macs
from compressor.quant import calibrate, quantize
from compressor.quant.quantizers import WeightQuantizer
from exporters import ExportConfig, export

CHUNK_SECONDS = 0.064  # 1024 samples: 32 frames x 32 bins


class CrnLike(nn.Module):
    """A CRN/GTCRN-shaped model on (batch, samples): Conv2d encoder with stride 2 along frequency, a depthwise
    dilated deconvolution (stride 1) in the middle, a grouped and a plain ConvTranspose2d decoder, skip adds.

    e1 feeds a pad and the skip add with a depth-to-space output: two channels-first consumers of an NHWC
    tensor, which litert-torch's layout pass converts only with exporters.tflite_export._layout_marks_kept."""

    BINS = 32

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(1, 8, (1, 3), stride=(1, 2), padding=(0, 1))  # 32 -> 16 bins
        self.enc2 = nn.Conv2d(8, 16, (2, 3), stride=(1, 2), padding=(0, 1))  # causal in time, 16 -> 8 bins
        self.mid = nn.ConvTranspose2d(16, 16, 3, padding=(2, 1), dilation=(2, 1), groups=16)
        self.dec2 = nn.ConvTranspose2d(16, 8, (2, 3), stride=(1, 2), padding=(0, 1), output_padding=(0, 1), groups=2)
        self.dec1 = nn.ConvTranspose2d(8, 1, (1, 4), stride=(1, 2), padding=(0, 1))  # 16 -> 32 bins

    def forward(self, x):
        batch = x.shape[0]
        spec = x.reshape(batch, 1, -1, self.BINS)
        e1 = torch.relu(self.enc1(spec))
        e2 = torch.relu(self.enc2(F.pad(e1, (0, 0, 1, 0))))
        m = torch.relu(self.mid(e2)) + e2
        d2 = self.dec2(m)[:, :, :-1]  # the kernel's second frame: T + 1 -> T frames
        d1 = self.dec1(torch.relu(d2 + e1))
        return torch.tanh(d1).reshape(batch, 1, -1)


def _audio(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(int(16000 * CHUNK_SECONDS)) * 0.3).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def crn_qmodel():
    torch.manual_seed(0)
    model = CrnLike().eval()
    qmodel = quantize(model, torch.randn(2, 1024) * 0.3)
    calibrate(qmodel, [torch.randn(2, 1024) * 0.3 for _ in range(4)])
    return qmodel


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_crn_decoder_exports_integer_only_and_matches_simulation(crn_qmodel, tmp_path, target):
    cfg = ExportConfig(target=target, chunk_seconds=CHUNK_SECONDS, tolerance_lsb=1)
    result = export(crn_qmodel, target, tmp_path / f"crn.{target}", config=cfg, calibration=_audio())
    assert result.ops["float_op_count"] == 0, result.ops
    assert "TRANSPOSE_CONV" not in result.ops["count"] and "ConvTranspose" not in result.ops["count"]
    assert result.rewrites.get("conv_transpose2d -> polyphase conv2d + reshape") == 3
    assert result.verification.op_max_lsb <= 1 and result.verification.max_lsb <= 1


def test_weight_scales_per_output_channel_where_an_axis_holds_them(crn_qmodel):
    """groups=1: axis 1 ([C_in, C_out, k...]); depthwise: axis 0 (output channel c is input channel c);
    other groups: no axis holds the output channels, one scale per tensor."""
    axes = {name: q.axis for name, q in crn_qmodel.graph_module.named_modules() if isinstance(q, WeightQuantizer)}
    by_layer = {layer: next(a for n, a in axes.items() if layer in n) for layer in ("mid", "dec2", "dec1")}
    assert by_layer == {"mid": 0, "dec2": None, "dec1": 1}


def test_macs_of_a_transposed_conv_count_each_input_element_against_its_kernel():
    layer = nn.ConvTranspose2d(8, 4, (2, 3), stride=(1, 2), groups=2)
    x = torch.randn(1, 8, 5, 16)
    assert count_macs(layer, x) == 8 * 5 * 16 * (4 // 2) * 2 * 3


class _ComputedWeight(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 1)
        self.weight = nn.Parameter(torch.randn(8, 4, 1, 4) * 0.1)

    def forward(self, x):
        return F.conv_transpose2d(self.conv(x), self.weight * 2, stride=(1, 2))


def test_a_transposed_conv_without_a_constant_weight_is_refused_naming_the_layer(tmp_path):
    torch.manual_seed(0)
    qmodel = quantize(_ComputedWeight().eval(), torch.randn(2, 8, 4, 16))
    calibrate(qmodel, [torch.randn(2, 8, 4, 16)])
    with pytest.raises(ExportError, match=r"ConvTranspose2d conv_transpose2d.* weight is not a quantized constant"):
        export(qmodel, "onnx", tmp_path / "x.onnx", verify=False)
