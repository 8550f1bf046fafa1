"""16-bit activations (precision overrides) in exported files: TFLite 16x8 and ONNX int16 Q/DQ.

Small models with one or two middle tensors kept at 16 bits export to both
targets with verification on (every op within 1 LSB of the simulation, on
the file's own inputs); the TFLite files are integer-only and really hold
int16 tensors with int64 biases (exporters/tflite_wide.py). An op whose
int16 LiteRT kernel is missing or off the simulation is refused by name.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.errors import ExportError
from compressor.quant import QuantConfig, calibrate, quantize
from compressor.quant.precision import PrecisionOverride
from exporters import ExportConfig, export
from exporters.tflite_export import op_report

CHANNELS, FRAMES = 8, 64


class GatedConvs(nn.Module):
    """conv -> relu -> conv -> sigmoid(.) * x -> conv."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(CHANNELS, CHANNELS, 3, padding=1)
        self.b = nn.Conv1d(CHANNELS, CHANNELS, 1)
        self.c = nn.Conv1d(CHANNELS, CHANNELS, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.c(torch.sigmoid(self.b(y)) * y)


class Depthwise(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(CHANNELS, CHANNELS, 1)
        self.d = nn.Conv1d(CHANNELS, CHANNELS, 5, padding=2, groups=CHANNELS)
        self.c = nn.Conv1d(CHANNELS, CHANNELS, 1)

    def forward(self, x):
        h = self.a(x)
        return self.c(torch.relu(self.d(h)) + h)


class Dense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(CHANNELS, 16, 1)
        self.l = nn.Linear(16, 16)
        self.c = nn.Conv1d(16, CHANNELS, 1)

    def forward(self, x):
        h = self.l(self.a(x).transpose(1, 2))
        return self.c(nn.functional.leaky_relu(h, 0.1).transpose(1, 2))


class Centered(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(CHANNELS, CHANNELS, 1)
        self.c = nn.Conv1d(CHANNELS, CHANNELS, 1)

    def forward(self, x):
        h = self.a(x)
        return self.c(h - h.mean(dim=-1, keepdim=True))


class TanhGate(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(CHANNELS, CHANNELS, 1)
        self.act = nn.Tanh()
        self.c = nn.Conv1d(CHANNELS, CHANNELS, 1)

    def forward(self, x):
        return self.c(self.act(self.a(x)))


class RmsNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(CHANNELS, CHANNELS, 1)
        self.c = nn.Conv1d(CHANNELS, CHANNELS, 1)

    def forward(self, x):
        h = self.a(x)
        return self.c(h * torch.rsqrt((h * h).mean(dim=1, keepdim=True) + 1e-5))


def _quantized(model: nn.Module, *rules: str):
    torch.manual_seed(0)
    model = model.eval()
    qmodel = quantize(model, torch.randn(2, CHANNELS, FRAMES),
                      QuantConfig(overrides=[PrecisionOverride.parse(r) for r in rules]))
    calibrate(qmodel, [torch.randn(2, CHANNELS, FRAMES) for _ in range(3)])
    assert any(q.bits == 16 for q in qmodel.activation_quantizers().values()), rules
    return qmodel


def _export(qmodel, target, path):
    torch.manual_seed(1)
    calibration = [torch.randn(1, CHANNELS, FRAMES).numpy() for _ in range(2)]
    return export(qmodel, target, path, config=ExportConfig(target=target, verify_chunks=2), calibration=calibration)


CASES = {
    # a 16-bit conv output read by LOGISTIC (int16 in, int8 out) and an int8 conv input requantized up
    "conv_to_sigmoid": (GatedConvs, ("b=a16",), {"CONV_2D", "LOGISTIC"}),
    # 16-bit sigmoid (1/32768) and mul: MUL int16 with an int8 operand, the last conv int16 in, int8 out
    "sigmoid_mul": (GatedConvs, ("*:sigmoid=a16", "*:mul=a16"), {"LOGISTIC", "MUL", "CONV_2D"}),
    "depthwise": (Depthwise, ("a=a16",), {"DEPTHWISE_CONV_2D", "ADD"}),
    "linear": (Dense, ("l=a16",), {"FULLY_CONNECTED", "LEAKY_RELU"}),
    "mean": (Centered, ("*:mean=a16",), {"MEAN", "SUB"}),
}


@pytest.mark.parametrize("target", ["tflite", "onnx"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_wide_tensors_export_verified(tmp_path, case, target):
    model, rules, int16_ops = CASES[case]
    result = _export(_quantized(model(), *rules), target, tmp_path / f"{case}.{target}")
    assert result.ops["float_op_count"] == 0, result.ops
    assert result.verification is not None and result.verification.passed
    assert result.verification.op_max_lsb <= 1
    if target != "tflite":
        return
    report = op_report(result.path)
    wide = {r["op"] for r in report if "int16" in r["inputs"] + r["outputs"]}
    assert int16_ops <= wide, report
    for row in report:
        if row["op"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and row["inputs"][0] == "int16":
            assert row["inputs"][1:] == ["int8", "int64"], row  # 16x8: int8 weights, int64 bias
        elif row["op"] != "QUANTIZE":  # every other op runs with one activation width
            widths = {d for d in row["inputs"] + row["outputs"] if d in ("int8", "int16")}
            assert len(widths) <= 1, row
    # the graph's input and output stay int8
    assert report[0]["inputs"][0] == "int8" and report[-1]["outputs"][0] == "int8"


@pytest.mark.parametrize("model, rule, layer, op", [
    (TanhGate, "act=a16", "'act'", "TANH"),  # int16 TANH table: up to 3 LSB of 1/32768 off
    (RmsNorm, "*:rsqrt=a16", "rsqrt", "RSQRT"),  # int16 RSQRT: tens of LSB off for small inputs
])
def test_op_without_exact_int16_kernel_is_refused(tmp_path, model, rule, layer, op):
    path = tmp_path / "refused.tflite"
    with pytest.raises(ExportError, match="cannot run at 16 bits in LiteRT") as info:
        _export(_quantized(model(), rule), "tflite", path)
    assert layer in str(info.value) and op in str(info.value)
    assert not path.exists()


@pytest.mark.parametrize("target", ["tflite", "onnx"])
def test_a_16_bit_output_leaves_the_file_as_int16_and_runs_as_simulated(tmp_path, target):
    """A rule that widens the model's output (audio out at 16 bits, as a DAC takes it) gives a file whose output
    tensor is int16 on the simulation's 16-bit grid; runtimes read it through its metadata like an int8 one."""
    import numpy as np

    import runtimes
    from compressor.zoo import build_model
    from tests.conftest import TINY_TASNET

    torch.manual_seed(0)
    qmodel = quantize(build_model("conv_tasnet", TINY_TASNET).eval(), torch.randn(1, 1600) * 0.1,
                      QuantConfig(overrides=[PrecisionOverride.parse("decoder=a16")]))
    calibrate(qmodel, [torch.randn(1, 1600) * 0.1 for _ in range(3)])
    audio = [(np.random.default_rng(k).standard_normal(1600) * 0.1).astype(np.float32) for k in range(2)]
    result = export(qmodel.eval(), target, tmp_path / f"m.{target}",
                    config=ExportConfig(target=target, chunk_seconds=0.1, verify_chunks=2), calibration=audio)
    assert result.verification.passed and result.ops["float_op_count"] == 0
    spec = result.metadata.outputs[0]
    assert (spec.dtype, spec.qmin, spec.qmax) == ("int16", -32768, 32767)
    assert spec.scale < 1.01 * float(qmodel.quantizers()["act_conv_transpose1d"].qparams()[0])
    rt = runtimes.load(result.path, threads=1)
    codes = rt.metadata.inputs[0].quantize(audio[0].reshape(rt.metadata.inputs[0].shape))
    out = rt.run_codes(codes)[0]
    assert out.dtype == np.int16
    with torch.no_grad():
        want = qmodel(torch.from_numpy(rt.metadata.inputs[0].dequantize(codes))).numpy()
    got = spec.dequantize(out).reshape(want.shape)
    assert np.abs(got - want).max() <= 8 * spec.scale * 256  # within a few 8-bit steps: 1-LSB op differences
    assert np.abs(got - want).mean() < np.abs(want).mean() / 50
    assert np.isfinite(rt.process(audio[1])).all()
