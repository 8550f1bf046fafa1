"""Norms users write by hand (asteroid's gLN / cLN idioms), torch.var / torch.std, and a traced length that
torch.export fixed: swapped, decomposed, or refused in one line (compressor/quant/substitution.py
``substitute_norm_idioms``, compressor/ops/decompositions.py ``var``/``std``, compressor/quant/trace_errors.py
``check_dynamic_axes``). Tiny modules written here reproduce each idiom; no asteroid needed."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import UnsupportedOpError
from compressor.quant import QuantConfig, calibrate, quantize
from compressor.quant.config import SUBSTITUTIONS
from compressor.quant.substitution import ChannelNorm, substitute_norm_idioms

C = 8


class _Affine(nn.Module):
    """gamma/beta as asteroid's _LayerNorm holds them: [C], applied on the channels moved last."""

    def __init__(self, channels: int = C) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.rand(channels) + 0.5)
        self.beta = nn.Parameter(torch.randn(channels) * 0.3)

    def affine(self, normed: torch.Tensor) -> torch.Tensor:
        return (self.gamma * normed.transpose(1, -1) + self.beta).transpose(1, -1)


class GlobLN(_Affine):
    """asteroid's gLN: reduction dims read out of a tensor (data-dependent under torch.export), torch.var."""

    def forward(self, x, EPS: float = 1e-8):
        dims = torch.arange(1, len(x.shape)).tolist()
        mean = x.mean(dim=dims, keepdim=True)
        var = torch.var(x, dim=dims, keepdim=True, unbiased=False)
        return self.affine((x - mean) / torch.sqrt(var + EPS))


class ChanLN(nn.Module):
    """A channel-wise layer norm written by hand (cLN), parameters shaped [1, C, 1], eps 1e-5."""

    def __init__(self, channels: int = C) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.rand(1, channels, 1) + 0.5)
        self.b = nn.Parameter(torch.randn(1, channels, 1) * 0.3)

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = ((x - mean) ** 2).mean(1, keepdim=True)
        return self.g * (x - mean) / torch.sqrt(var + 1e-5) + self.b


class StdEpsNorm(_Affine):
    """Looks like gLN but adds eps to the standard deviation, not the variance: not GroupNorm, must stay."""

    def forward(self, x):
        mean = x.mean(dim=(1, 2), keepdim=True)
        std = torch.sqrt(((x - mean) ** 2).mean(dim=(1, 2), keepdim=True))
        return self.affine((x - mean) / (std + 1e-3))


class CumulativeNorm(_Affine):
    """asteroid's cumLN idea (statistics over the frames so far): per-channel affine, but no standard norm."""

    def forward(self, x):
        count = torch.arange(1, x.shape[-1] + 1, dtype=x.dtype) * x.shape[1]
        mean = torch.cumsum(x.sum(1, keepdim=True), -1) / count
        var = torch.cumsum((x * x).sum(1, keepdim=True), -1) / count - mean * mean
        return self.affine((x - mean) / torch.sqrt(var + 1e-8))


class Net(nn.Module):
    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.pre = nn.Conv1d(C, C, 3, padding=1)
        self.norm = norm
        self.post = nn.Conv1d(C, C, 1)

    def forward(self, x):
        return self.post(self.norm(self.pre(x)))


def _model(norm: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return Net(norm).eval()


def _float_matches(model: nn.Module, qmodel, lengths=(64, 37)) -> None:
    qmodel.set_mode("float")
    for length in lengths:
        x = torch.randn(2, C, length) * 2 + 1
        with torch.no_grad():
            ref, out = model(x), qmodel(x)
        assert (out - ref).abs().max() <= 1e-5 * ref.abs().max(), length


def test_gln_with_dims_from_a_tensor_becomes_group_norm_and_is_logged(caplog):
    torch.manual_seed(0)
    model = _model(GlobLN())
    with caplog.at_level(logging.INFO, logger="compressor.quant"):
        qmodel = quantize(model, torch.randn(2, C, 64))
    lines = [r.getMessage() for r in caplog.records if "norm_idiom" in r.getMessage()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("substituted 1 norm_idiom module(s)")
    assert f"{__name__}.GlobLN -> GroupNorm(1, C), eps=1e-08" in lines[0] and lines[0].endswith(" at norm")
    assert isinstance(model.norm, GlobLN)  # the user's model is left as it is
    targets = {str(n.target) for n in qmodel.graph_module.graph.nodes if n.op == "call_function"}
    assert not any("var" in t or "group_norm" in t for t in targets), targets
    _float_matches(model, qmodel)
    calibrate(qmodel, [torch.randn(2, C, 64) for _ in range(2)])
    qmodel.set_mode("quantize")
    x = torch.randn(2, C, 48)
    with torch.no_grad():
        ref = model(x)
        assert (qmodel(x) - ref).abs().max() < 0.1 * ref.abs().max()


def test_switching_norm_idiom_off_restores_the_trace_error():
    config = QuantConfig(substitutions=tuple(k for k in SUBSTITUTIONS if k != "norm_idiom"))
    with pytest.raises(UnsupportedOpError, match="data-dependent value") as err:
        quantize(_model(GlobLN()), torch.randn(2, C, 64), config)
    assert "\n" not in str(err.value)


def test_with_norm_off_a_gln_is_not_swapped_for_a_group_norm():
    config = QuantConfig(substitutions=tuple(k for k in SUBSTITUTIONS if k != "norm"))
    with pytest.raises(UnsupportedOpError, match="data-dependent value"):
        quantize(_model(GlobLN()), torch.randn(2, C, 64), config)


def test_a_channel_layer_norm_written_by_hand_becomes_channel_norm():
    model = _model(ChanLN())
    swapped = substitute_norm_idioms(model, [torch.randn(2, C, 64)])
    assert isinstance(swapped.norm, ChannelNorm) and swapped.norm.eps == 1e-5
    assert isinstance(model.norm, ChanLN)
    qmodel = quantize(model, torch.randn(2, C, 64))
    _float_matches(model, qmodel)
    # with "norm" off a ChannelNorm swap is still made: it is written with explicit ops
    config = QuantConfig(substitutions=tuple(k for k in SUBSTITUTIONS if k != "norm"))
    _float_matches(model, quantize(model, torch.randn(2, C, 64), config))


def test_a_4d_gln_is_swapped_when_it_matches_on_the_shapes_it_is_given():
    class Net4d(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = nn.Conv2d(C, C, 1)
            self.norm = GlobLN()

        def forward(self, x):
            return self.norm(self.pre(x))

    torch.manual_seed(0)
    model = Net4d().eval()
    swapped = substitute_norm_idioms(model, [torch.randn(2, C, 10, 12)])
    assert isinstance(swapped.norm, nn.GroupNorm) and swapped.norm.num_groups == 1
    x = torch.randn(2, C, 10, 7) + 3
    with torch.no_grad():
        assert (swapped(x) - model(x)).abs().max() <= 1e-5 * model(x).abs().max()


@pytest.mark.parametrize("norm", [StdEpsNorm, CumulativeNorm])
def test_a_module_that_differs_is_left_alone(norm, caplog):
    model = _model(norm())
    with caplog.at_level(logging.INFO, logger="compressor.quant"):
        assert substitute_norm_idioms(model, [torch.randn(2, C, 64)]) is model
    assert not [r for r in caplog.records if "norm_idiom" in r.getMessage()]


def test_z_norm_with_torch_var_and_std_is_decomposed():
    class ZNorm(nn.Module):  # no parameters: nothing to swap, the var/std decompositions do the work
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(C, C, 1)

        def forward(self, x):
            y = self.conv(x)
            dims = list(range(1, y.dim()))
            z = (y - y.mean(dim=dims, keepdim=True)) / torch.sqrt(torch.var(y, dims, keepdim=True, unbiased=False)
                                                                 + 1e-8)
            c = (y - y.mean(1, keepdim=True)) / (torch.std(y, 1, keepdim=True) + 1e-5)  # unbiased, over C: constant
            return z + c + torch.var(y, dim=(1,), keepdim=True, correction=0)

    torch.manual_seed(0)
    model = ZNorm().eval()
    qmodel = quantize(model, torch.randn(2, C, 64))
    targets = {str(n.target) for n in qmodel.graph_module.graph.nodes if n.op == "call_function"}
    assert not any(".var." in t or ".std." in t for t in targets), targets
    _float_matches(model, qmodel)


def test_an_unbiased_var_over_time_is_refused_with_what_to_do():
    class Unbiased(nn.Module):
        def forward(self, x):
            return x / torch.sqrt(torch.var(x, dim=2, keepdim=True) + 1e-5)

    with pytest.raises(UnsupportedOpError, match="unbiased=False"):
        quantize(Unbiased().eval(), torch.randn(2, C, 64))


class SpecializingPad(nn.Module):
    """asteroid SuDORMRF's pad: the length as a Python int and a Python `if` on it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 8, stride=8)

    def forward(self, wav):
        x = wav.unsqueeze(1)
        values_to_pad = int(x.shape[-1]) % 8
        if values_to_pad:
            x = F.pad(x, [0, 8 - values_to_pad])
        return self.conv(x)


class SpecializingReplicatePad(SpecializingPad):
    """The same, but padding by repeating the last sample: zeros appended by the toolkit would change the output."""

    def forward(self, wav):
        x = wav.unsqueeze(1)
        values_to_pad = int(x.shape[-1]) % 8
        if values_to_pad:
            x = F.pad(x, [0, 8 - values_to_pad], mode="replicate")
        return self.conv(x)


class BranchFreePad(SpecializingPad):
    def forward(self, wav):
        x = wav.unsqueeze(1)
        return self.conv(F.pad(x, [0, (-x.shape[-1]) % 8]))


class FixedFeatures(nn.Module):
    """The last axis is features a Linear takes: fixed by the model itself, not by tracing."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(12, 4)

    def forward(self, x):
        return self.linear(x)


def test_a_length_fixed_by_tracing_is_refused_in_one_line_at_the_users_line():
    """Strict tracing would keep it at multiples of 8, but zero-padding to them is not what the model does
    (a zero-padding twin is taken: tests/test_length_multiple.py)."""
    with pytest.raises(UnsupportedOpError) as err:
        quantize(SpecializingReplicatePad().eval(), torch.randn(2, 64))
    message = str(err.value)
    assert "\n" not in message
    assert "only accepts 64 samples" in message and "'wav'" in message
    assert "test_norm_idioms.py" in message and "int(x.shape[-1]) % 8" in message


def test_models_that_run_at_any_length_or_fix_their_features_still_quantize():
    qmodel = quantize(BranchFreePad().eval(), torch.randn(2, 64))
    with torch.no_grad():
        assert qmodel(torch.randn(1, 40)).shape == (1, 4, 5)
    quantize(FixedFeatures().eval(), torch.randn(2, 10, 12))


def test_norm_idiom_is_a_known_substitution_kind():
    assert "norm_idiom" in SUBSTITUTIONS and "norm_idiom" in QuantConfig().substitutions
