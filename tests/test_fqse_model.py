"""FQSE's model changes, its recipe switches (read off the quantized graph) and a tiny QAT run."""
import pytest
import torch

from compressor.checkpoint import load_model, save_quantized
from compressor.data import open_dataset, to_int16, from_int16
from compressor.fqse import FQSEConvTasNet, FQSEModelConfig, FQSEPipeline, IOConfig, io_quantizers
from compressor.fqse.io_codec import SPLIT_SCALE
from compressor.ops.macs import count_macs
from compressor.fqse.cost import gbops, quantized_size_mb
from compressor.recipes import RecipeContext, get_recipe, inference_model
from compressor.recipes.fqse import FQSEConfig


def _pcm(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.from_numpy(from_int16(to_int16((torch.randn(shape, generator=gen) * 0.2).clamp(-1, 0.99).numpy())))


@pytest.mark.parametrize("split_encoder", ["two_convs", "one_conv"])
def test_function_preserving_splitter_init_changes_no_output(tiny_tasnet, split_encoder):
    core = FQSEConvTasNet(tiny_tasnet, FQSEModelConfig(splitter=True, rqb=False, splitter_init="preserve",
                                                       split_encoder=split_encoder))
    pipeline = FQSEPipeline(core, IOConfig(input="split", output="8bit"))
    for length in (1000, 1003, 24):  # padded tails of every size
        x = _pcm((2, length), seed=length)
        with torch.no_grad():
            assert torch.allclose(pipeline(x), tiny_tasnet(x), atol=1e-6, rtol=1e-5)


def _low_byte_weight(core):
    if core.config.split_encoder == "one_conv":
        return core.split_encoder.weight.detach()[:, 1:2]
    return core.split_encoder_lo.weight.detach()


def test_paper_splitter_init_is_gaussian_and_changes_the_output(tiny_tasnet):
    core = FQSEConvTasNet(tiny_tasnet, FQSEModelConfig(splitter=True, rqb=False, splitter_init="paper"))
    assert torch.equal(core.split_encoder_hi.weight.detach(), tiny_tasnet.encoder.weight.detach())
    assert not torch.allclose(_low_byte_weight(core), tiny_tasnet.encoder.weight.detach() / 256)
    x = _pcm((1, 1000))
    with torch.no_grad():
        assert not torch.allclose(FQSEPipeline(core, IOConfig(output="8bit"))(x), tiny_tasnet(x), atol=1e-4)


def test_rqb_pinv_init_keeps_the_float_function_inside_the_signal(tiny_tasnet):
    core = FQSEConvTasNet(tiny_tasnet, FQSEModelConfig(splitter=False, rqb=True, rqb_init="pinv"))
    x = _pcm((2, 2000))
    hop = tiny_tasnet.hop
    with torch.no_grad():
        y_o, eps = core(x)
        assert torch.allclose(y_o, tiny_tasnet(x))
        # float: eps = gain * (D Y_i - D E~ D Y_i) = 0, except in the first hop (one frame covers it)
        assert eps[..., hop:].abs().max() < 1e-4 * core.config.gain * y_o.abs().max()


def _ctx(model, tmp_path):
    train = open_dataset("demo:train", segment_seconds=0.25, seed=0)
    return RecipeContext(model, train, None, tmp_path / "run", progress=False)


def _recipe(**options):
    return get_recipe("fqse").from_options({"steps": 2, "batch_size": 2, "calib_batches": 2,
                                            "checkpoint_every": 2, "validate_every": 2, **options})


def _graph_ops(qmodel):
    return [str(n.target) for n in qmodel.graph_module.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("options, splitter, rqb", [
    ({}, True, True),
    ({"input_precision": "8bit"}, False, True),
    ({"output_precision": "8bit"}, True, False),
    ({"input_precision": "8bit", "output_precision": "8bit"}, False, False),
])
def test_switches_remove_each_part_from_the_quantized_graph(tiny_tasnet, tmp_path, options, splitter, rqb):
    recipe = _recipe(**options)
    pipeline = recipe.prepare(_ctx(tiny_tasnet, tmp_path))
    qmodel = pipeline.core
    placeholder = next(n for n in qmodel.graph_module.graph.nodes if n.op == "placeholder")
    assert len(placeholder.meta["val"].shape) == (3 if splitter else 2)  # (B, 2, T) vs (B, T)
    inputs, outputs = io_quantizers(qmodel)
    assert len(inputs) == 1 and len(outputs) == (2 if rqb else 1)
    q_in = qmodel.quantizers()[inputs[0]]
    if splitter:  # pinned to the split grid and not learned
        assert q_in.qparams() == (SPLIT_SCALE, 0) and not q_in.scale.requires_grad
    else:
        assert q_in.scale.requires_grad
    weights = set(qmodel.weight_tensors())
    assert any("split_encoder" in w for w in weights) == splitter
    assert any("rqb_encoder" in w for w in weights) == rqb and any("rqb_decoder" in w for w in weights) == rqb
    convs = [t for t in _graph_ops(qmodel) if "conv" in t]
    base = [t for t in _graph_ops(_recipe(input_precision="8bit", output_precision="8bit")
                                 .prepare(_ctx(tiny_tasnet, tmp_path)).core) if "conv" in t]
    # the splitter's encoder is one conv per byte (two_convs) in place of the encoder; the RQB adds E~ and D~
    assert len(convs) == len(base) + (1 if splitter else 0) + (2 if rqb else 0)


@pytest.mark.parametrize("split_encoder, survives", [("two_convs", True), ("one_conv", False)])
def test_low_byte_weights_survive_int8_only_with_their_own_scales(tiny_tasnet, tmp_path, split_encoder, survives):
    """one_conv shares each output channel's step between the bytes, so W / 256 rounds to 0."""
    qmodel = _recipe(split_encoder=split_encoder, output_precision="8bit").prepare(_ctx(tiny_tasnet, tmp_path)).core
    name = "split_encoder_lo" if split_encoder == "two_convs" else "split_encoder"
    (quantizer, weight), = [v for k, v in qmodel.weight_tensors().items() if name in k]
    low = quantizer(weight.detach())
    low = low if split_encoder == "two_convs" else low[:, 1:2]
    assert bool((low != 0).any()) == survives
    if survives:  # 8 bits of the low byte's weights are kept: each within half its channel's step of W / 256
        expected = tiny_tasnet.encoder.weight.detach() / 256
        half_step = quantizer.qparams().reshape(-1, 1, 1) / 2
        assert bool(((low - expected).abs() <= half_step * (1 + 1e-5)).all())


def test_high_byte_range_stops_at_the_low_bytes_largest_output(tiny_tasnet, tmp_path):
    """Below -max(low byte) the encoder's ReLU outputs 0 anyway: the range ends there, its step shrinks,
    and the encoder output (after the ReLU) is closer to float."""
    from torch import fx

    from compressor.fqse.calibration import tighten_split_encoder_range

    ctx = _ctx(tiny_tasnet, tmp_path)
    loose_recipe = _recipe()
    loose = loose_recipe.prepare(ctx).core
    assert loose_recipe.split_range is None  # the default keeps the min/max range
    tight_recipe = _recipe(tight_split_range=True)
    tight = tight_recipe.prepare(ctx).core
    assert tight_recipe.split_range is not None
    relu = next(n for n in tight.graph_module.graph.nodes if n.op == "call_function"
                and n.target == torch.ops.aten.relu.default)

    def encoder_output(qmodel, x, mode):
        qmodel.set_mode(mode)
        seen = {}

        class Recorder(fx.Interpreter):
            def run_node(self, n):
                out = super().run_node(n)
                if n.name == relu.name:
                    seen["relu"] = out
                return out

        with torch.no_grad():
            Recorder(qmodel.graph_module).run(x)
        qmodel.set_mode("quantize")
        return seen["relu"]

    speech = torch.stack([ctx.train_set[i]["mixture"] for i in range(4)])  # what calibration saw
    x = FQSEPipeline(tight, IOConfig()).core_input(speech)
    reference = encoder_output(tight, x, "float")
    errors = {name: float((encoder_output(q, x, "quantize") - reference).pow(2).mean())
              for name, q in (("loose", loose), ("tight", tight))}
    assert errors["tight"] < errors["loose"], errors
    quantizers = tight.quantizers()
    (hi_name,) = [n.target for n in tight.graph_module.graph.nodes if n.op == "call_module"
                  and any(a.op == "call_function" and a.target == torch.ops.aten.conv1d.default
                          and "split_encoder_hi" in str(a.args[1].args[0].target) for a in n.args)]
    low_end, _ = tight_recipe.split_range
    lo_q = next(q for k, q in quantizers.items() if k != hi_name.split(".", 1)[1] and k.startswith("act_conv1d"))
    scale, zero = lo_q.qparams()
    assert low_end <= -scale * (lo_q.qmax - zero) < 0
    assert tighten_split_encoder_range(_recipe(input_precision="8bit").prepare(ctx).core) is None


def test_snr_augmentation_switch(tiny_tasnet, tmp_path):
    assert FQSEConfig().snr_aug and FQSEConfig().snr_low_db == -6.0 and FQSEConfig().snr_high_db == 18.0
    assert not _recipe(snr_aug=False).config.snr_aug


def test_tiny_fqse_qat_end_to_end(tiny_tasnet, tmp_path):
    recipe = _recipe()
    qmodel = recipe.run(_ctx(tiny_tasnet, tmp_path))
    model = FQSEPipeline(qmodel, recipe.config.io())
    x = _pcm((1, 1500))
    with torch.no_grad():
        y = model(x)
        y_o, eps = qmodel(model.core_input(x))
    assert y.shape == (1, 1, 1500) and torch.isfinite(y).all()
    # both outputs are on their int8 grids
    for name, out in zip(io_quantizers(qmodel)[1], (y_o, eps)):
        scale, zp = qmodel.quantizers()[name].qparams()
        codes = out / scale + zp
        assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() >= -128 and codes.max() <= 127
    # the checkpoint round-trips, and evaluation wraps it with splitter and combiner again, inside the
    # level stage the recipe fitted
    from compressor.recipes.level import recorded_stage
    from compressor.stages.level_model import LevelGainModel

    path = save_quantized(tmp_path / "f.pt", qmodel, recipe.saved_arch(None), recipe.describe())
    loaded = load_model(path)
    wrapped = inference_model(loaded)
    stage = recorded_stage(recipe.describe())
    assert isinstance(wrapped, LevelGainModel) and wrapped.stage == stage
    with torch.no_grad():
        assert torch.equal(wrapped(x), LevelGainModel(model, stage)(x))
    # cost: the splitter and RQB add MACs (encoder twice, E~ and D~ once each)
    x = torch.zeros(1, 16000)
    plain = count_macs(tiny_tasnet, x)
    fqse = count_macs(FQSEConvTasNet(tiny_tasnet, recipe.config.model_config()), model.core_input(x))
    frames, cfg = 16000 // tiny_tasnet.hop, tiny_tasnet.config  # padded to 16000 + hop: that many frames
    assert fqse - plain == 3 * frames * cfg.N * cfg.L
    assert gbops(plain, 8, 8) == plain * 64 / 1e9 and quantized_size_mb(qmodel) > 0


def test_fitted_rqb_encoder_is_still_a_right_inverse_and_shrinks_u(tiny_tasnet):
    from compressor.fqse.model import fit_rqb_encoder

    pinv = FQSEConvTasNet(tiny_tasnet, FQSEModelConfig(splitter=False, rqb=True, rqb_init="pinv"))
    fit = FQSEConvTasNet(tiny_tasnet, FQSEModelConfig(splitter=False, rqb=True, rqb_init="fit"))
    fit_rqb_encoder(fit, [_pcm((2, 2000), seed=s) for s in range(3)])
    x = _pcm((2, 2000), seed=7)
    hop = tiny_tasnet.hop
    captured = []
    with torch.no_grad():
        for core in (pinv, fit):
            handle = core.rqb_decoder.register_forward_hook(lambda m, i, o: captured.append(i[0]))
            y_o, eps = core(x)
            handle.remove()
            assert eps[..., hop:].abs().max() < 1e-4 * core.config.gain * y_o.abs().max()
    assert captured[1].pow(2).mean() < captured[0].pow(2).mean()  # U is smaller


def test_cli_switches_map_to_recipe_options():
    from compressor.cli.quantize_cmds import _fqse_options
    from compressor.errors import RecipeError

    opts = _fqse_options(True, None, True, True, None, None, None, None, None, None)
    assert opts["snr_aug"] is False and opts["input_precision"] == "8bit" and opts["output_precision"] == "8bit"
    assert get_recipe("fqse").from_options(_fqse_options(False, None, False, False, None, None, None, None, None,
                                                         True)).config.tight_split_range
    config = get_recipe("fqse").from_options(opts).config
    assert not config.io().splitter and not config.io().rqb
    assert all(v is None for v in _fqse_options(False, None, False, False, None, None, None, None, None, None).values())
    with pytest.raises(RecipeError, match="contradicts"):
        _fqse_options(False, None, True, False, "split", None, None, None, None, None)
    with pytest.raises(RecipeError, match="does not take"):
        get_recipe("vanilla").from_options({"snr_aug": False})
