"""Precision rules with fixed qparams: parsing, validation, calibration and QAT leave them, checkpoints, recipes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compressor.checkpoint import ArchSpec, load_model, save_quantized
from compressor.errors import ConfigError
from compressor.quant import QuantConfig, calibrate, quantize
from compressor.quant.precision import DEFAULT_RULES, PrecisionOverride, precision_overrides

pytestmark = pytest.mark.usefixtures("eager_fake_quant")

f32 = lambda value: float(torch.tensor(value, dtype=torch.float32))  # noqa: E731  what a quantizer stores


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv1d(4, 4, 3, padding=1)
        self.b = nn.Conv1d(4, 4, 1)

    def forward(self, x):
        return self.b(torch.sigmoid(self.a(x)) * x)


def _batches(gain: float = 1.0, count: int = 3) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(2, 4, 32, generator=gen) * gain for _ in range(count)]


def _quantized(*rules: str):
    return quantize(_Net().eval(), _batches()[0], QuantConfig(overrides=precision_overrides(rules)))


def test_rules_parse_validate_and_round_trip_through_json():
    rule = PrecisionOverride.parse("#act_x=a8,scale=0.0009,zp=-3")
    assert (rule.tensor, rule.activation_bits, rule.scale, rule.zero_point, rule.learn_qparams) == \
        ("act_x", 8, 0.0009, -3, False)
    assert PrecisionOverride.parse("*:input=scale=0.5,zp=0,learn").learn_qparams
    for bad, message in [("#x=scale=0.1", "both scale and zero_point"), ("#x=zp=1", "both scale and zero_point"),
                         ("#x=scale=0,zp=0", "scale must be a finite number > 0"),
                         ("#x=scale=-1,zp=0", "scale must be"), ("#x=scale=inf,zp=0", "scale must be"),
                         ("#x=scale=1,zp=128", r"#x: zero_point must be an integer in \[-128, 127\]"),
                         ("#x=a16,scale=1,zp=1", r"\[0, 0\] for 16-bit"), ("#x=learn", "learn_qparams needs"),
                         ("#x=scale=a,zp=0", "needs a number"), ("#x=scale=1,zp=0.5", "needs an integer"),
                         ("#x=scales=1", "scale=S, zp=Z, learn")]:
        with pytest.raises(ConfigError, match=message):
            PrecisionOverride.parse(bad)
    with pytest.raises(ConfigError, match=r"#x: zero_point must be an integer in \[-8, 7\] for 4-bit"):
        QuantConfig(activation_bits=4, overrides=precision_overrides(["#x=scale=1,zp=-128"]))
    config = QuantConfig(overrides=precision_overrides(["b=a16", "#act_x=scale=0.25,zp=-128",
                                                       "*:input=scale=0.5,zp=0,learn"]))
    restored = QuantConfig.from_dict(config.to_dict())
    assert restored == config and restored.overrides[-2].zero_point == -128 and restored.overrides[-1].learn_qparams
    # a rule without fixed qparams is written as before, and configs from before the fields existed load
    old = {"module": "b", "op": "*", "tensor": "*", "activation_bits": 16, "weight_bits": None, "per_channel": None}
    assert config.overrides[-3].to_dict() == old
    assert PrecisionOverride.from_dict(old) == config.overrides[-3] and config.overrides[-3].scale is None


def test_fixed_qparams_survive_calibration_and_qat_steps():
    qmodel = _quantized("#act_conv1d=scale=0.01,zp=5", "*:input=scale=0.02,zp=-1,learn")
    fixed, learned = qmodel.quantizers()["act_conv1d"], qmodel.quantizers()["act_x"]
    assert fixed.pinned and learned.pinned
    calibrate(qmodel, _batches(gain=50.0), "mse")  # a range far wider than either grid
    assert fixed.qparams() == (f32(0.01), 5) and learned.qparams() == (f32(0.02), -1)
    free = qmodel.quantizers()["act_mul"]
    assert not free.pinned and free.qparams()[0] > 0.1  # the data did move the calibrated ones
    assert not fixed.scale.requires_grad and not fixed.zero_point.requires_grad
    assert learned.scale.requires_grad and learned.zero_point.requires_grad
    from compressor.recipes.vanilla import quantizer_param_groups

    before = {name: q.qparams() for name, q in qmodel.activation_quantizers().items()}
    optimizer = torch.optim.Adam([*quantizer_param_groups(qmodel, 5e-2, 0.5),
                                  {"params": list(qmodel.model_parameters()), "lr": 1e-2}])
    for x in _batches(count=2):
        optimizer.zero_grad()
        qmodel(x).pow(2).mean().backward()
        optimizer.step()
    assert fixed.qparams() == before["act_conv1d"] == (f32(0.01), 5)  # bit for bit
    assert learned.qparams()[0] != before["act_x"][0]  # learn: QAT starts from the rule's grid and moves it
    assert free.qparams()[0] != before["act_mul"][0]


def test_rules_that_cannot_hold_are_refused_naming_the_rule():
    with pytest.raises(ConfigError, match=r"\*:sigmoid.*the runtimes demand"):
        _quantized("*:sigmoid=scale=0.5,zp=0")  # sigmoid's output grid is the runtimes' (1/256, -128)
    _quantized("*:sigmoid=scale=0.00390625,zp=-128")  # the same grid: accepted
    with pytest.raises(ConfigError, match="#act_conv1d.*cannot hold"):
        _quantized("#act_conv1d=a16", "#act_conv1d=scale=0.1,zp=3")  # 16 bits: symmetric, zero-point 0 only
    qmodel = _quantized()
    with pytest.raises(ConfigError, match="only fixed qparams"):
        qmodel.add_overrides([PrecisionOverride(tensor="act_x", activation_bits=16)])
    rule = PrecisionOverride(tensor="act_x", scale=0.125, zero_point=0)
    assert qmodel.add_overrides([rule]) == ["act_x"] and qmodel.add_overrides([rule]) == []  # added once
    assert qmodel.config.overrides == DEFAULT_RULES + (rule,) and qmodel.quantizers()["act_x"].pinned


def test_checkpoints_keep_the_rule_and_old_ones_load_the_same(tmp_path):
    model = _Net().eval()
    example = _batches()[0]
    arch = ArchSpec.from_program(model, (example,))
    qmodel = quantize(arch.build(), example, QuantConfig(overrides=precision_overrides(["#act_conv1d=scale=0.01,zp=5"])))
    qmodel.add_overrides([PrecisionOverride(tensor="act_x", scale=0.03, zero_point=0)])  # as a recipe adds one
    calibrate(qmodel, _batches(gain=20.0))
    path = save_quantized(tmp_path / "q.pt", qmodel, arch, {"name": "ptq", "config": {}})
    loaded = load_model(path).model
    assert loaded.config == qmodel.config
    for name in ("act_conv1d", "act_x"):
        q = loaded.quantizers()[name]
        assert q.pinned and not q.scale.requires_grad and q.qparams() == qmodel.quantizers()[name].qparams()
    x = _batches(gain=3.0, count=1)[0]
    with torch.no_grad():
        reference = qmodel(x)
        assert torch.equal(loaded(x), reference)
    # a checkpoint written before fixed qparams existed: the values only in its state dict, no rule
    data = torch.load(path, weights_only=True)
    data["quant_config"]["overrides"] = []
    torch.save(data, tmp_path / "old.pt")
    old = load_model(tmp_path / "old.pt").model
    assert old.config.overrides == () and not old.quantizers()["act_x"].pinned
    with torch.no_grad():
        assert torch.equal(old(x), reference)


class _Equivariant(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv1d(1, 4, 9, padding=4, bias=False)
        self.back = nn.Conv1d(4, 1, 9, padding=4, bias=False)

    def forward(self, x):
        return self.back(torch.relu(self.conv(x.unsqueeze(1)))).squeeze(1)


class _Items(torch.utils.data.Dataset):
    sample_rate = 16000

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.items = [torch.from_numpy((np.sin(np.arange(1600) * 0.05 * (k + 1)) * 0.1
                                        + rng.standard_normal(1600) * 0.03).astype(np.float32)) for k in range(4)]

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return {"mixture": self.items[i], "sources": self.items[i][None], "snr_db": 0.0, "id": str(i)}


def test_ptq_level_stage_input_grid_is_the_rule_and_as_before(tmp_path):
    from compressor.fqse.io_config import io_quantizers
    from compressor.recipes import RecipeContext, get_recipe
    from compressor.recipes.base import calibration_batches, example_input
    from compressor.stages.level import level_stage_of
    from compressor.stages.level_model import at_level

    options = {"calib_batches": 2, "batch_size": 2, "tilt_aug": False, "leaky_grid": False, "clip_aug": 0.0}
    recipe = get_recipe("ptq").from_options(options)
    qmodel = recipe.run(RecipeContext(_Equivariant(), _Items(), None, tmp_path, progress=False))
    stage = level_stage_of(recipe.describe()["stages"])
    (name,), (output,) = io_quantizers(qmodel)
    # the output gets the input's span too, at 16 bits (recipes/level.py output_rules): the peak on code +-32766
    steps = {name: 126, output: 32766}
    assert [qmodel.quantizers()[n].bits for n in (name, output)] == [8, 16]
    for pinned in (name, output):
        q = qmodel.quantizers()[pinned]
        assert q.pinned and q.qparams() == (f32(stage.target_peak / steps[pinned]), 0)
    assert qmodel.config.overrides == DEFAULT_RULES + (PrecisionOverride(op="output", activation_bits=16),) + tuple(
        PrecisionOverride(tensor=t, scale=stage.target_peak / steps[t], zero_point=0) for t in (name, output))
    # what PTQ computed before the rules: calibrate through the stage, then write the I/O grids over the result
    reference = quantize(_Equivariant(), example_input(_Items()), recipe.config.quant_config())
    calibrate(reference, at_level(list(calibration_batches(_Items(), 2, 2, 0)), stage), "mse")
    with torch.no_grad():
        for pinned in (name, output):
            reference.quantizers()[pinned].scale.copy_(torch.tensor(stage.target_peak / steps[pinned]))
            reference.quantizers()[pinned].zero_point.zero_()
    state, expected = qmodel.state_dict(), reference.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)


def test_vanilla_qat_holds_the_level_grid_of_its_input_and_output(tmp_path):
    from compressor.fqse.io_config import io_quantizers
    from compressor.recipes import RecipeContext
    from compressor.recipes.vanilla import QATConfig, prepare_qat_model
    from compressor.stages.level import LevelStage

    stage = LevelStage(target_peak=0.2)
    config = QATConfig(calib_batches=2, batch_size=2)
    qmodel = prepare_qat_model(RecipeContext(_Equivariant(), _Items(), None, tmp_path, progress=False), config, stage)
    (name,), (output,) = io_quantizers(qmodel)
    for pinned, steps in ((name, 126), (output, 32766)):  # learned, the input grid narrowed and clipped (level.py)
        q = qmodel.quantizers()[pinned]
        assert q.qparams() == (f32(0.2 / steps), 0) and not q.scale.requires_grad


def test_fqse_split_input_is_a_rule_of_its_quant_config():
    from compressor.fqse.io_codec import SPLIT_SCALE
    from compressor.recipes.fqse import FQSEConfig

    *_, rule = FQSEConfig().quant_config().overrides  # the last: after the default and FQSE's variance rules
    assert (rule.op, rule.scale, rule.zero_point, rule.learn_qparams) == ("input", SPLIT_SCALE, 0, False)
    assert not any(r.fixes_qparams for r in FQSEConfig(input_precision="8bit").quant_config().overrides)
    assert FQSEConfig(input_precision="8bit").quant_config().overrides[:len(DEFAULT_RULES)] == DEFAULT_RULES
