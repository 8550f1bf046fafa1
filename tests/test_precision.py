"""Per-layer precision: rules, 16-bit tensors in the simulation, the checkpoint and an ONNX file; the sensitivity report."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from compressor.errors import ConfigError, ExportError
from compressor.quant import QuantConfig, calibrate, quantize
from compressor.quant.precision import PrecisionOverride, precision_overrides
from compressor.quant.sensitivity import sensitivity, widened
from exporters import ExportConfig, export


pytestmark = pytest.mark.usefixtures("eager_fake_quant")


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(8, 8, 3, padding=1)
        self.b = nn.Conv1d(8, 8, 1)
        self.c = nn.Conv1d(8, 8, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.c(torch.sigmoid(self.b(y)) * y)


def _quantized(*rules: str):
    torch.manual_seed(0)
    qmodel = quantize(Stack().eval(), torch.randn(2, 8, 64), QuantConfig(overrides=precision_overrides(rules)))
    calibrate(qmodel, [torch.randn(2, 8, 64) for _ in range(3)])
    return qmodel


def _bits(qmodel) -> dict[str, int]:
    return {name: q.bits for name, q in qmodel.activation_quantizers().items()}


def test_rules_parse_and_later_rules_win():
    rule = PrecisionOverride.parse("separator.blocks.*:mean=a16,w7,per-tensor")
    assert (rule.module, rule.op, rule.activation_bits, rule.weight_bits, rule.per_channel) == \
        ("separator.blocks.*", "mean", 16, 7, False)
    for bad in ("b", "b=a12", "b=x16", "b=w9"):
        with pytest.raises(ConfigError, match="precision|activation_bits|weight_bits"):
            PrecisionOverride.parse(bad)
    qmodel = _quantized("*=a16", "a=a8")  # everything 16 bits, then the first conv back to 8
    bits = _bits(qmodel)
    assert bits["act_conv1d"] == 8 and bits["act_conv1d_1"] == 16
    by_name = _bits(_quantized("#act_mul=a16"))  # one tensor, by the name the sensitivity report prints
    assert by_name["act_mul"] == 16 and sum(b == 16 for b in by_name.values()) == 1


class Normed(nn.Module):
    """A conv, a GroupNorm(1, C) (decomposed: its variance is a square averaged by a mean) and an RMS written out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.norm = nn.GroupNorm(1, 8)

    def forward(self, x):
        y = self.norm(self.conv(x))
        return y * y * torch.rsqrt((x * x).mean(dim=(1, 2), keepdim=True) + 1e-3)  # y * y is not averaged


def test_variance_rule_widens_only_the_averaged_squares():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 64)

    def wide(*rules):
        qmodel = quantize(Normed().eval(), x, QuantConfig(overrides=precision_overrides(rules)))
        return {name for name, bits in _bits(qmodel).items() if bits == 16}

    variance = wide("*:variance=a16")
    assert len(variance) == 2  # the norm's (x - m)^2 and the RMS's x * x; not y * y, not the normalising mul
    assert variance < wide("*:mul=a16")  # a rule on 'mul' still covers them
    assert wide("norm:variance=a16") < variance and len(wide("norm:variance=a16")) == 1
    assert not wide()


def test_a_16_bit_tensor_is_symmetric_and_finer_in_the_simulation():
    wide, plain = _quantized("b=a16"), _quantized()
    q16 = wide.activation_quantizers()["act_conv1d_1"]
    q8 = plain.activation_quantizers()["act_conv1d_1"]
    assert q16.bits == 16 and q16.qparams()[1] == 0 and q8.bits == 8
    assert q16.qparams()[0] < q8.qparams()[0] / 100  # ~256x finer steps over a similar range
    x = torch.randn(1, 8, 64)
    with torch.no_grad():
        torch.manual_seed(0)
        reference = Stack().eval()
        float_out = reference(x)
        err_wide = (wide(x) - float_out).pow(2).mean()
        err_plain = (plain(x) - float_out).pow(2).mean()
    assert err_wide < err_plain


def test_rules_survive_the_json_round_trip_checkpoints_and_file_metadata_use():
    config = QuantConfig(overrides=precision_overrides(["b=a16"]))
    restored = QuantConfig.from_dict(config.to_dict())
    assert restored == config and restored.overrides[-1].activation_bits == 16


def test_onnx_file_holds_int16_and_matches_the_simulation(tmp_path):
    qmodel = _quantized("b=a16")
    chunks = [np.random.default_rng(k).standard_normal((1, 8, 64)).astype(np.float32) for k in range(2)]
    result = export(qmodel, "onnx", tmp_path / "m.onnx", config=ExportConfig(target="onnx", verify_chunks=2),
                    calibration=chunks)
    assert result.ops["float_op_count"] == 0 and result.verification.passed
    model = onnx.load(str(tmp_path / "m.onnx"))
    zero_points = {i.name: i.data_type for i in model.graph.initializer}
    int16 = [n for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
             and zero_points.get(n.input[2]) == onnx.TensorProto.INT16]
    assert int16, "no int16 QuantizeLinear in the file"


def test_a_16_bit_model_input_is_refused_naming_it(tmp_path):
    """Files take 8-bit input (a 16-bit output is allowed: tests/test_wide_precision.py)."""
    qmodel = _quantized("#act_x=a16")
    with pytest.raises(ExportError, match="model input 'x' is quantized to 16 bits"):
        export(qmodel, "onnx", tmp_path / "m.onnx", config=ExportConfig(target="onnx", verify_chunks=1),
               calibration=[np.zeros((1, 8, 64), np.float32)])


class _Items:
    """Inputs with the float model's outputs as references: any quantization error lowers SI-SNR."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(3)
        torch.manual_seed(0)
        reference = Stack().eval()
        self.items = []
        for _ in range(2):
            x = torch.randn(8, 64, generator=gen)
            with torch.no_grad():
                self.items.append({"mixture": x, "sources": reference(x.unsqueeze(0))[0]})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def test_sensitivity_ranks_a_coarse_tensor_first_and_restores_every_quantizer():
    qmodel = _quantized()
    coarse = qmodel.activation_quantizers()["act_mul"]
    with torch.no_grad():
        coarse.scale.mul_(8)  # a tensor quantized far too coarsely: the report must find it
    x = torch.randn(1, 8, 64)
    before = qmodel(x)
    report = sensitivity(qmodel, qmodel, _Items(), max_items=2, progress=False)
    assert torch.equal(qmodel(x), before)  # nothing left widened or switched off
    assert len(report.rows) == len(qmodel.activation_quantizers())
    top = report.ranked(1)[0]
    assert top.quantizer == "act_mul" and top.gain_16bit_db > 1.0 and top.gain_float_db > 1.0
    assert "act_mul" in report.markdown(3) and "most sensitive: act_mul" in report.summary()
    with widened(coarse):
        assert coarse.bits == 16 and coarse.qparams()[1] == 0
    assert coarse.bits == 8


class _Squeezed(nn.Module):
    """A model whose output is a conv's, seen through a slice and a fused ReLU before it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(1, 8, 5, padding=2)
        self.b = nn.Conv1d(8, 1, 5, padding=2)

    def forward(self, x):
        return self.b(torch.relu(self.a(x[:, None])))[:, 0]


def test_op_output_names_the_model_output_through_data_movement_only():
    from compressor.fqse.io_config import io_quantizers

    qmodel = quantize(_Squeezed().eval(), torch.randn(2, 400), QuantConfig(overrides=precision_overrides(["*:output=a16"])))
    (inp,), (out,) = io_quantizers(qmodel)
    bits = _bits(qmodel)
    assert bits[out] == 16 and bits[inp] == 8
    assert [name for name, b in bits.items() if b == 16] == [out]  # the ReLU'd conv inside stays 8-bit


def test_recipes_give_an_audio_output_16_bits_behind_the_level_stage_only():
    from compressor.errors import RecipeError
    from compressor.recipes.fqse import FQSEConfig
    from compressor.recipes.ptq import PTQConfig
    from compressor.recipes.vanilla import QATConfig

    rule = PrecisionOverride(op="output", activation_bits=16)
    for config in (PTQConfig(), QATConfig()):
        assert rule in config.quant_config().overrides
        assert rule not in config.quant_config(audio_output=False).overrides  # a spectral core's mask
        assert rule not in type(config)(level_stage=False).quant_config().overrides
        assert rule not in type(config)(output_bits=8).quant_config().overrides
        rules = type(config)(precision=("#act_x=a8",)).quant_config().overrides
        assert rules.index(rule) < rules.index(PrecisionOverride(tensor="act_x", activation_bits=8))  # the user's win
    assert rule not in FQSEConfig().quant_config().overrides  # FQSE's output is --output-precision
    with pytest.raises(RecipeError, match="--output-precision"):
        FQSEConfig(output_bits=16)
    with pytest.raises(RecipeError, match="output_bits"):
        PTQConfig(output_bits=12)
