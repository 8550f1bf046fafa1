"""Model zoo: Conv-TasNet shapes, causality, configs, registry and torch.export."""

from __future__ import annotations

import json

import pytest
import torch

from compressor.errors import ConfigError
from compressor.zoo import (
    ConvTasNet,
    ConvTasNetConfig,
    build_model,
    count_parameters,
    list_models,
    model_config_class,
)

# Tiny configs keep the suite fast; the structure is the same as the default.
TINY = dict(N=16, L=8, B=8, H=16, P=3, X=3, R=2)


def tiny(**overrides):
    torch.manual_seed(0)
    return build_model("conv_tasnet", {**TINY, **overrides}).eval()


@pytest.mark.parametrize("length", [1, 7, 8, 9, 1001])
@pytest.mark.parametrize("sources", [1, 2])
@pytest.mark.parametrize("norm", ["gLN", "cLN"])
def test_output_shape_matches_input_length(length, sources, norm):
    mask = "softmax" if sources > 1 else "sigmoid"
    model = tiny(num_sources=sources, norm=norm, mask_nonlinear=mask)
    with torch.no_grad():
        y = model(torch.randn(3, length))
    assert y.shape == (3, sources, length)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("mask", ["sigmoid", "relu", "softmax"])
def test_mask_nonlinearities(mask):
    model = tiny(num_sources=2, mask_nonlinear=mask)
    with torch.no_grad():
        assert model(torch.randn(2, 200)).shape == (2, 2, 200)


def test_softmax_masks_sum_to_mixture_encoding():
    # Softmax over sources: the masked encodings sum to the encoder output,
    # so (the decoder being linear) the estimates sum to the decoded encoding.
    model = tiny(num_sources=3, mask_nonlinear="softmax")
    x = torch.randn(2, 400)
    with torch.no_grad():
        y = model(x).sum(dim=1)
        w = model.encoder_act(model.encoder(x.unsqueeze(1)))
        ref = model.decoder(w).squeeze(1)
    # Compare away from the end, where the model's own padding adds frames.
    keep = 400 - TINY["L"]
    torch.testing.assert_close(y[..., :keep], ref[..., :keep], atol=1e-5, rtol=1e-5)


def test_causal_model_ignores_the_future():
    cfg = dict(norm="cLN", causal=True)
    model = tiny(**cfg)
    L = TINY["L"]
    x = torch.randn(1, 1000)
    cut = 600
    x2 = x.clone()
    x2[:, cut:] = torch.randn(1, 1000 - cut) * 5
    with torch.no_grad():
        y1, y2 = model(x), model(x2)
    # Output sample t depends on encoder frames starting at or before t,
    # which see the input up to t + L - 1 (the frame's own lookahead).
    past = cut - L + 1
    torch.testing.assert_close(y1[..., :past], y2[..., :past], atol=1e-6, rtol=0)
    assert not torch.allclose(y1[..., cut:], y2[..., cut:])


def test_non_causal_model_sees_the_future():
    model = tiny()
    x = torch.randn(1, 1000)
    x2 = x.clone()
    x2[:, 600:] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model(x)[..., :500], model(x2)[..., :500])


def test_config_json_round_trip():
    cfg = ConvTasNetConfig(N=32, L=16, norm="cLN", causal=True, num_sources=2,
                           mask_nonlinear="relu")
    again = ConvTasNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert ConvTasNetConfig.from_dict({}) == ConvTasNetConfig()


@pytest.mark.parametrize(
    "bad, word",
    [
        ({"N": 0}, "N"),
        ({"H": -3}, "H"),
        ({"X": 1.5}, "X"),
        ({"R": True}, "R"),
        ({"L": 15}, "L"),
        ({"norm": "BN"}, "norm"),
        ({"causal": True}, "cLN"),  # causal with the default gLN
        ({"causal": "yes", "norm": "cLN"}, "causal"),
        ({"mask_nonlinear": "tanh"}, "mask_nonlinear"),
        ({"mask_nonlinear": "softmax"}, "num_sources"),
        ({"num_sources": 0}, "num_sources"),
        ({"hidden": 3}, "hidden"),  # unknown key
    ],
)
def test_bad_configs_raise_config_error(bad, word):
    with pytest.raises(ConfigError, match=word):
        build_model("conv_tasnet", bad)


def test_registry():
    assert "conv_tasnet" in list_models()
    assert model_config_class("conv_tasnet") is ConvTasNetConfig
    assert isinstance(build_model("conv_tasnet"), ConvTasNet)
    model = build_model("conv_tasnet", ConvTasNetConfig(**TINY))
    assert model.config == ConvTasNetConfig(**TINY)
    with pytest.raises(ConfigError, match="conv_tasnet"):
        build_model("dprnn")
    with pytest.raises(ConfigError, match="known"):
        model_config_class("nope")


def test_default_config_parameter_count():
    model = build_model("conv_tasnet")
    assert count_parameters(model) == 322_841


def test_norms_are_explicit_ops():
    model = tiny(norm="cLN")
    names = {type(m).__name__ for m in model.modules()}
    assert "ChannelwiseLayerNorm" in names
    assert not names & {"LayerNorm", "GroupNorm"}
    # cLN: each frame has zero mean and unit variance over channels before
    # the affine step.
    norm = model.blocks[0].norm1
    x = torch.randn(2, 16, 50) * 3 + 1
    y = norm(x)
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(2, 50), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var(dim=1, unbiased=False), torch.ones(2, 50),
                               atol=1e-4, rtol=0)


ALLOWED_OPS = {
    "aten.conv1d.default",
    "aten.conv_transpose1d.default",
    "aten.prelu.default",
    "aten.add.Tensor",
    "aten.sub.Tensor",
    "aten.mul.Tensor",
    "aten.mean.dim",
    "aten.rsqrt.default",
    "aten.sigmoid.default",
    "aten.relu.default",
    "aten.softmax.int",
    "aten.pad.default",
    "aten.unsqueeze.default",
    "aten.reshape.default",
    "aten.slice.Tensor",
    "aten.sym_size.int",
}


@pytest.mark.parametrize(
    "overrides, example_length",
    [
        ({}, 800),  # a multiple of the hop
        # shorter than one frame, several sources, causal
        ({"norm": "cLN", "causal": True, "num_sources": 2, "mask_nonlinear": "softmax"}, 5),
    ],
)
def test_torch_export_with_dynamic_length(overrides, example_length):
    model = tiny(**overrides)
    ep = torch.export.export(
        model,
        (torch.randn(1, example_length),),
        dynamic_shapes={"mixture": {1: torch.export.Dim.AUTO}},
    )
    tensor_ops = {
        str(n.target)
        for n in ep.graph.nodes
        if n.op == "call_function" and str(n.target).startswith("aten.")
    }
    assert tensor_ops <= ALLOWED_OPS, tensor_ops - ALLOWED_OPS
    exported = ep.module()
    for length in (2, 7, 8, 95, 800, 1237):
        x = torch.randn(1, length)
        with torch.no_grad():
            expected = model(x)
            got = exported(x)
        assert got.shape == expected.shape == (1, model.config.num_sources, length)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


USER_STYLE = {"crn_gru": {"channels": [4, 8], "hidden": 8}, "lstm_masker": {"hidden": 8, "encoded": 8},
              "dual_path": {"filters": 8, "hidden": 4, "heads": 2, "chunk": 10}}


@pytest.mark.parametrize("name", sorted(USER_STYLE))
def test_user_style_models_quantize_as_written_and_run_at_lengths_never_traced(name):
    """nn.GRU / nn.LSTM / nn.MultiheadAttention / LayerNorm / BatchNorm / torch.stft as written: quantize()
    (through the spectral split where the model has one) gives a graph that runs at other lengths."""
    from compressor.quant import calibrate, quantize
    from compressor.recipes.spectral import deployed, split_of, to_quantize

    torch.manual_seed(0)
    model = build_model(name, USER_STYLE[name]).eval()
    example = torch.randn(2, 4000) * 0.1
    split = split_of(model, example)
    assert (split is None) == (name == "dual_path")
    qmodel = quantize(*to_quantize(model, example, split), None)
    calibrate(qmodel, [to_quantize(model, torch.randn(2, 4000) * 0.1, split)[1] for _ in range(2)], progress=False)
    simulated = deployed(qmodel, split.stage if split else None, None)
    for length in (3001, 6007):
        x = torch.randn(1, length) * 0.1
        with torch.no_grad():
            want, got = model(x), simulated(x)
        assert got.shape == want.shape == (1, length)
        snr = 10 * torch.log10(want.pow(2).sum() / (got - want).pow(2).sum())
        assert snr > 10, (name, length, float(snr))
