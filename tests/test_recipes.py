import pytest
import torch

from compressor.data import open_dataset
from compressor.errors import RecipeError
from compressor.quant.quantizers import FixedQParamsQuantizer
from compressor.recipes import RecipeContext, get_recipe
from compressor.recipes.vanilla import QATConfig, prepare_qat_model, run_qat


@pytest.fixture(scope="module")
def demo_sets():
    train = open_dataset("demo:train", segment_seconds=0.25, seed=0)
    return train, None


def _ctx(model, demo_sets, tmp_path):
    train, valid = demo_sets
    return RecipeContext(model, train, valid, tmp_path / "run", progress=False)


def _qat(steps, lr, quantizer_lr, leaky_grid=True):
    return QATConfig(steps=steps, batch_size=2, lr=lr, quantizer_lr=quantizer_lr, zero_point_lr=quantizer_lr * 10,
                     calib_batches=2, checkpoint_every=steps, validate_every=steps, leaky_grid=leaky_grid)


def test_unknown_recipe_and_option():
    with pytest.raises(RecipeError, match="unknown recipe 'fancy'.*ptq, vanilla"):
        get_recipe("fancy")
    with pytest.raises(RecipeError, match="does not take option.*calibration"):
        get_recipe("vanilla").from_options({"calibration": "mse"})


def test_qat_with_zero_learning_rate_changes_nothing(tiny_tasnet, demo_sets, tmp_path):
    ctx = _ctx(tiny_tasnet, demo_sets, tmp_path)
    config = _qat(3, 0.0, 0.0, leaky_grid=False)  # the training alone; the grid step after it moves scales
    qmodel = prepare_qat_model(ctx, config)
    x = torch.randn(1, 2000) * 0.1
    with torch.no_grad():
        before = qmodel(x).clone()
    state = {k: v.clone() for k, v in qmodel.state_dict().items()}
    run_qat(qmodel, ctx, config)
    with torch.no_grad():
        assert torch.equal(qmodel(x), before)
    for k, v in qmodel.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_qat_trains_and_respects_the_int8_scheme(tiny_tasnet, demo_sets, tmp_path):
    ctx = _ctx(tiny_tasnet, demo_sets, tmp_path)
    config = _qat(4, 1e-3, 1e-2)
    qmodel = prepare_qat_model(ctx, config)
    scales = {k: q.scale.detach().clone() for k, q in qmodel.activation_quantizers().items()
              if not isinstance(q, FixedQParamsQuantizer)}
    run_qat(qmodel, ctx, config)
    # LSQ step sizes moved ...
    moved = [k for k, q in qmodel.activation_quantizers().items()
             if k in scales and not torch.equal(q.scale.detach(), scales[k])]
    assert moved
    # ... but the fixed qparams of the sigmoid mask did not
    fixed = [q for q in qmodel.quantizers().values() if isinstance(q, FixedQParamsQuantizer)]
    assert fixed and all(q.qparams() == (1 / 256, -128) for q in fixed)
    # every zero-point is an integer the runtimes can store
    for q in qmodel.activation_quantizers().values():
        scale, zp = q.qparams()
        assert -128 <= zp <= 127 and scale > 0
    # each weight channel holds at most 2^8 distinct values
    for name, w in qmodel.quantized_weights().items():
        for channel in w.reshape(w.shape[0], -1):
            assert channel.unique().numel() <= 256, name


def test_ptq_recipe(tiny_tasnet, demo_sets, tmp_path):
    recipe = get_recipe("ptq").from_options({"calib_batches": 2, "batch_size": 2, "calibration": "mse"})
    qmodel = recipe.run(_ctx(tiny_tasnet, demo_sets, tmp_path))
    x = torch.randn(1, 3000) * 0.1
    with torch.no_grad():
        sim = qmodel(x)
        qmodel.set_mode("float")
        assert torch.allclose(qmodel(x), tiny_tasnet(x), atol=1e-6)  # quantizers off = the float model
    assert not torch.equal(sim, tiny_tasnet(x))
    assert recipe.describe()["name"] == "ptq"
