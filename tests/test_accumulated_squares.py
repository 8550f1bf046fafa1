"""A norm's averaged squares summed in a matmul's int32 accumulator: the default rule, its simulation, its files."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compressor.errors import ConfigError, ExportError
from compressor.quant import QuantConfig, calibrate, quantize
from compressor.quant.precision import DEFAULT_RULES, PrecisionOverride, precision_overrides
from exporters import ExportConfig, export
from exporters.lowering import lower

pytestmark = pytest.mark.usefixtures("eager_fake_quant")


class Normed(nn.Module):
    """A conv, a global norm over (C, T) and a per-frame norm over C, written out as people do."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, 3, padding=1)
        self.out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        y = self.conv(x)
        d = y - y.mean(dim=(1, 2), keepdim=True)
        y = d * torch.rsqrt((d * d).mean(dim=(1, 2), keepdim=True) + 1e-5)
        e = y - y.mean(dim=1, keepdim=True)
        return self.out(e * torch.rsqrt((e * e).mean(dim=1, keepdim=True) + 1e-5))


def _skewed(shape, seed: int) -> torch.Tensor:
    """Long-tailed input: the bulk near zero, a few large values (an 8-bit grid of its squares loses the bulk)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) ** 3


def _quantized(*rules: str, shape=(1, 8, 64), defaults: bool = True):
    torch.manual_seed(0)
    qmodel = quantize(Normed(shape[1]).eval(), _skewed(shape, 0), QuantConfig(
        overrides=precision_overrides(rules, defaults=defaults)))
    calibrate(qmodel, [_skewed(shape, k) for k in range(1, 4)])
    return qmodel.eval()


def test_a32_is_the_default_and_only_for_averaged_squares():
    assert QuantConfig().overrides == DEFAULT_RULES
    assert PrecisionOverride.parse("*:variance=a32").activation_bits == 32
    for wrong in ("*=a32", "*:mul=a32", "#act_mul=a32"):
        with pytest.raises(ConfigError, match="a32"):
            PrecisionOverride.parse(wrong)


def test_a_config_saved_before_the_rules_existed_keeps_its_8_bit_squares():
    data = QuantConfig().to_dict()
    del data["overrides"]
    assert QuantConfig.from_dict(data).overrides == ()
    assert QuantConfig.from_dict(QuantConfig().to_dict()) == QuantConfig()


def test_the_squares_get_no_quantizer_and_the_simulation_averages_them_exactly():
    accumulated, eight_bit = _quantized(), _quantized(defaults=False)
    assert len(eight_bit.activation_quantizers()) - len(accumulated.activation_quantizers()) == 2
    # the simulation of the default model: the exact mean of the quantized differences' squares
    x = _skewed((1, 8, 64), 9)
    torch.manual_seed(0)
    float_model = Normed().eval()  # the weights _quantized started from
    with torch.no_grad():
        reference = float_model(x)
        err_acc = (accumulated(x) - reference).pow(2).mean()
        err_8 = (eight_bit(x) - reference).pow(2).mean()
    assert err_acc < err_8  # the 8-bit squares of a long-tailed signal lose the bulk


@pytest.mark.parametrize("target", ["tflite", "onnx"])
def test_the_files_sum_the_exact_squares_in_one_op_and_match_the_simulation(tmp_path, target):
    qmodel = _quantized()
    chunks = [_skewed((1, 8, 64), 20 + k).numpy() for k in range(2)]
    result = export(qmodel, target, tmp_path / f"m.{target}", config=ExportConfig(target=target, verify_chunks=2),
                    calibration=chunks)
    assert result.ops["float_op_count"] == 0 and result.verification.passed
    assert result.verification.op_max_lsb <= 1
    assert result.rewrites["mean(x * x) -> int8 matmul of x with itself (int32 sums)"] == 2
    # LiteRT: an int8 BATCH_MATMUL; ORT: ReduceSumSquare between DQ and Q (its QLinearMatMul is 7x slower here)
    op = "BATCH_MATMUL" if target == "tflite" else "ReduceSumSquare"
    long_means = 1 if target == "tflite" else 0  # the global mean over 8 x 64 values (lower_long_means)
    assert result.ops["count"].get(op) == 2 + long_means and "MatMul" not in result.ops["count"]


def test_a_sum_that_can_overflow_int32_within_the_grid_is_refused_naming_the_mean():
    # 64 x 2100 squares of codes up to 128 on a grid whose top is far beyond where their int32 sum wraps
    qmodel = _quantized("#act_sub=scale=0.01,zp=0", "#act_mean_1=scale=0.1,zp=-128", shape=(1, 64, 2100))
    with pytest.raises(ExportError, match=r"mean_1 at .*int32 sum of 134400 squares overflows.*variance=a16"):
        lower(qmodel, input_shape=[1, 64, 2100])


class GlobalMean(nn.Module):
    """gLN's statistics of a ReLU's output over (C, T): one long mean of one-signed codes."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.enc = nn.Conv1d(1, channels, 16, stride=8)
        self.out = nn.Conv1d(channels, 1, 1)

    def forward(self, x):
        y = torch.relu(self.enc(x.unsqueeze(1)))
        d = y - y.mean(dim=(1, 2), keepdim=True)
        e = d - d.mean(dim=1, keepdim=True)  # per frame over 64 channels: short, stays a MEAN
        return self.out(e).squeeze(1)


def test_a_long_mean_is_summed_in_a_matmul_in_tflite_files_and_xnnpack_gets_it_right(tmp_path):
    """XNNPACK's int8 MEAN saturated at 127 for a mean over 64 x 400 ReLU codes on AVX2 (exact: about 40); as
    an int8 BATCH_MATMUL with a broadcast column of ones the file matches the simulation on every x86 CPU."""
    torch.manual_seed(0)
    samples = 8 * 400 + 8
    qmodel = quantize(GlobalMean().eval(), torch.randn(1, samples) * 0.1)
    calibrate(qmodel, [torch.randn(1, samples) * 0.1 for _ in range(3)])
    chunks = [(torch.randn(1, samples) * 0.1).numpy() for _ in range(2)]
    cfg = ExportConfig(target="tflite", chunk_seconds=samples / 16000, verify_chunks=2)
    result = export(qmodel.eval(), "tflite", tmp_path / "m.tflite", config=cfg, calibration=chunks)
    assert result.rewrites.get("mean(x) over many values -> int8 matmul with ones (int32 sums)") == 1
    assert result.ops["count"].get("MEAN") == 1  # the per-frame mean
    assert result.verification.passed and result.verification.max_lsb <= 2, result.verification
    # ORT's ReduceMean is exact: the ONNX file keeps both means
    onnx_result = export(qmodel, "onnx", tmp_path / "m.onnx", config=ExportConfig(**{**cfg.to_dict(), "target": "onnx"}),
                         calibration=chunks)
    assert "mean(x) over many values -> int8 matmul with ones (int32 sums)" not in onnx_result.rewrites
    assert onnx_result.verification.passed


def test_fqse_keeps_8_bit_squares_unless_asked_and_a_users_rule_still_wins():
    from compressor.quant.precision import Precision, resolve
    from compressor.recipes.fqse import FQSEConfig

    def variance_bits(config):
        rules = config.quant_config().overrides
        return resolve(rules, "norm", "mul", Precision(8, 8, True), roles=("variance",)).activation_bits

    assert variance_bits(FQSEConfig()) == 8
    assert variance_bits(FQSEConfig(exact_variance=True)) == 32
    assert variance_bits(FQSEConfig(precision=("*:variance=a16",))) == 16
