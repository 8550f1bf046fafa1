"""Binary activation maps (bam recipe): surrogate gradient, model, front-end, simulation, packed runtime."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compressor.bam.binarization import bake_weights, binarize_activations, binarize_weights
from compressor.bam.frontend import MelConfig, clip_segments, log_mel, mel_filterbank
from compressor.bam.surrogate import Heaviside, SuperSpike, superspike_derivative
from compressor.bam.train import quality_metrics
from compressor.errors import ConfigError, RecipeError
from compressor.recipes import get_recipe
from compressor.recipes.bam import BAMConfig, binary_map_quantizers, build_bam_model
from compressor.recipes.base import RecipeContext
from compressor.zoo import build_model
from compressor.zoo.dnsmos_cnn import DnsmosCNN, DnsmosConfig, layer_costs
from runtimes.packed_binary import (
    COEF, PackedBinaryRuntime, from_quantized, pack_bits, requant_scale, requantize, unpack_bits, weight_planes,
)

SMALL = DnsmosConfig(n_mels=24, channels=(32, 32, 32, 40))  # 40: the packed runtime's two-word case
FRAMES = 37


class _Features(torch.utils.data.Dataset):
    def __init__(self, n: int = 8, frames: int = FRAMES, mels: int = 24) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, frames, mels, generator=gen) * 2 - 1
        self.y = torch.rand(n, generator=gen) * 3 + 1

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"mixture": self.x[i], "target": self.y[i].reshape(1)}


@pytest.mark.parametrize("beta", [5.0, 1.5, 20.0])
def test_surrogate_gradient_equals_superspike_formula(beta):
    x = torch.linspace(-3, 3, 601, dtype=torch.float64).requires_grad_()
    upstream = torch.randn(601, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (SuperSpike.apply(x, beta) * upstream).sum().backward()
    expected = upstream / (beta * x.detach().abs() + 1.0) ** 2
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-15)
    torch.testing.assert_close(superspike_derivative(x.detach(), beta), 1.0 / (beta * x.detach().abs() + 1) ** 2)


def test_heaviside_is_exactly_binary_in_train_and_eval():
    act = Heaviside(5.0)
    x = torch.tensor([-2.0, -1e-7, 0.0, 1e-7, 3.0], requires_grad=True)
    for mode in (True, False):
        act.train(mode)
        y = act(x)
        assert y.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    with pytest.raises(ConfigError):
        Heaviside(0.0)


def test_model_matches_paper_table1_counts():
    model = DnsmosCNN()
    rows = layer_costs(model.config, frames=449)
    assert sum(p.numel() for p in model.parameters()) == sum(r["params"] for r in rows) == 45_697
    assert sum(r["macs_torchinfo"] for r in rows) == 188_153_025
    assert [r["activations"] for r in rows][:4] == [1_724_160, 430_080, 107_520, 53_760]
    binary = sum(r["macs_torchinfo"] for r in rows if r["binary_input"])
    assert binary == 170_903_040  # the paper: 171 of 188 M multiply-adds have a binary operand
    assert model(torch.zeros(2, 449, 120)).shape == (2, 1)
    assert isinstance(build_model("dnsmos_cnn", {"global_pool": "avg"}), DnsmosCNN)
    with pytest.raises(ConfigError):
        DnsmosConfig(global_pool="median")


def test_frontend_shape_and_filterbank():
    mel = MelConfig()
    assert (mel.win, mel.hop, mel.frames()) == (640, 320, 449)
    audio = np.random.default_rng(0).standard_normal(mel.clip_samples).astype(np.float32) * 0.1
    feats = log_mel(audio, mel)
    assert feats.shape == (449, 120) and feats.dtype == np.float32
    assert feats.max() == pytest.approx(1.0) and feats.min() >= -1.0
    bank = mel_filterbank(16000, 640, 120)
    assert (bank.sum(axis=1) > 0).all(), "every mel band covers at least one FFT bin at 40 ms"
    clips = clip_segments(np.zeros(mel.clip_samples * 2 + 5, np.float32), mel)
    assert len(clips) == 3 and all(c.size == mel.clip_samples for c in clips)


def test_quality_metrics():
    m = quality_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert m["mse"] == pytest.approx(1 / 3) and 0.9 < m["pcc"] < 1.0


def test_binary_weights_are_sign_times_channel_scale():
    model = binarize_weights(build_bam_model(DnsmosCNN(SMALL), BAMConfig()))
    w = model.conv2.weight
    alpha = model.conv2.parametrizations.weight.original.abs().mean(dim=(1, 2, 3))
    torch.testing.assert_close(w.abs(), alpha.view(-1, 1, 1, 1).expand_as(w))
    (model(torch.rand(2, FRAMES, 24)).sum()).backward()
    assert model.conv2.parametrizations.weight.original.grad is not None  # straight-through
    baked = bake_weights(model)
    assert not hasattr(baked.conv2, "parametrizations")
    per_channel = baked.conv2.weight.detach().abs().reshape(32, -1)
    assert all(row.unique().numel() == 1 for row in per_channel), "one magnitude per output channel"


def test_post_training_binarization_replaces_only_conv_activations():
    model = DnsmosCNN(SMALL)
    binarized = binarize_activations(model)
    assert all(isinstance(getattr(binarized, f"act{k}"), Heaviside) for k in range(1, 5))
    assert isinstance(model.act1, torch.nn.ReLU), "the float model is left as it was"
    with pytest.raises(RecipeError):
        build_bam_model(torch.nn.Linear(2, 2), BAMConfig())


@pytest.fixture(scope="module")
def small_qmodel():
    torch.manual_seed(0)
    cfg = BAMConfig(epochs=1, batch_size=4, calib_batches=2)
    recipe = get_recipe("bam")(cfg)
    ctx = RecipeContext(DnsmosCNN(SMALL), _Features(), _Features(4), Path("."), progress=False)
    qmodel = recipe.run(ctx)
    return qmodel, recipe


def test_recipe_trains_and_simulated_maps_are_exactly_binary(small_qmodel):
    qmodel, recipe = small_qmodel
    assert len(recipe.history["history"]) == 1 and np.isfinite(recipe.history["best"])
    quantizers = binary_map_quantizers(qmodel)
    assert len(quantizers) == 4
    seen = []
    hooks = [q.register_forward_hook(lambda m, i, o: seen.append(o.detach())) for q in quantizers.values()]
    with torch.no_grad():
        qmodel(_Features().x[:3])
    for h in hooks:
        h.remove()
    assert len(seen) == 4
    for values in seen:
        assert set(values.unique().tolist()) <= {0.0, 1.0}
        assert values.float().mean() not in (0.0, 1.0), "a map that is all 0 or all 1 tests nothing"
    for q in quantizers.values():
        assert q.qparams() == (1.0, -128)


def test_packing_round_trip_and_popcount_dot_product():
    rng = np.random.default_rng(3)
    bits = (rng.random((40, 5, 7)) > 0.5).astype(np.uint8)
    packed = pack_bits(bits)
    assert packed.shape == (5, 7, 2) and packed.dtype == np.uint32
    np.testing.assert_array_equal(unpack_bits(packed, 40), bits)
    weight = rng.integers(-128, 128, (3, 40, 3, 3)).astype(np.int8)
    planes = weight_planes(weight)  # (out, 3, 3, words, 8)
    for o in range(3):
        for dy in range(3):
            for dx in range(3):
                counts = np.bitwise_count(packed[2, 3][:, None] & planes[o, dy, dx]).sum(axis=0)
                assert int(counts @ COEF) == int(weight[o, :, dy, dx].astype(np.int64) @ bits[:, 2, 3])


def test_requantize_rounds_half_to_even_in_float32():
    scale = requant_scale(0.5, np.array([1.0], np.float32), 1.0)
    np.testing.assert_array_equal(requantize(np.array([-3, -1, 1, 3, 5]), scale), [-2, 0, 0, 2, 2])
    acc = np.arange(-5000, 5000, 7, dtype=np.int64)
    got = requantize(acc, requant_scale(0.02, np.array([0.3]), 0.7))
    assert np.max(np.abs(got - acc * (0.02 * 0.3 / 0.7))) <= 0.5 + 1e-4


def test_packed_runtime_matches_simulation(small_qmodel):
    qmodel, _ = small_qmodel
    runtime = from_quantized(qmodel)
    assert isinstance(runtime, PackedBinaryRuntime)
    s_out, _ = runtime.program.dense[-1].out_qparams
    for x in _Features().x[:4]:
        with torch.no_grad():
            simulated = float(qmodel(x[None]))
        assert abs(runtime.predict(x.numpy()) - simulated) <= 1.0 * s_out + 1e-7
    mem = runtime.last_memory
    assert mem["conv1"] == FRAMES * 24 * 4  # 32 channels: one uint32 word per pixel
    assert mem["conv4"] == (FRAMES // 8) * 3 * 2 * 4  # 40 channels: two words
    assert 0 < mem["tracemalloc_peak_bytes"]
