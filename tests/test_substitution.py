"""Users' standard layers are swapped for exact int8-ready forms (QuantConfig.substitutions), each switchable.

Every substitute computes what the original computes (float, relative difference <= 1e-5 with the original's
own weights, on the traced shape and on another batch and length), every swap is logged, and a kind switched
off gives the refusal users got before substitutions existed.
"""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from compressor.errors import ConfigError, UnsupportedOpError
from compressor.quant import QuantConfig, calibrate, quantize
from compressor.quant.config import SUBSTITUTIONS
from compressor.quant.model import quantize_program

REL = 1e-5


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def _check_equivalent(model: nn.Module, *shapes: tuple[int, ...], config: QuantConfig | None = None):
    """quantize() the model on the first shape; the substitute (float mode) matches it on every shape."""
    torch.manual_seed(0)
    model = model.eval()
    qmodel = quantize(model, torch.randn(*shapes[0]), config)
    qmodel.set_mode("float")
    with torch.no_grad():
        for shape in shapes:
            x = torch.randn(*shape) * 3 + 0.5
            assert _rel(model(x), qmodel(x)) <= REL, shape
    return qmodel


def _targets(qmodel) -> set[str]:
    return {str(n.target) for n in qmodel.graph_module.graph.nodes if n.op == "call_function"}


class Wrap(nn.Module):
    """A 1x1 conv (a learned, signed input) then ``fn(self, y)``."""

    def __init__(self, fn, channels: int = 8, **modules: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.conv = nn.Conv1d(channels, channels, 1)
        for name, m in modules.items():
            setattr(self, name, m)

    def forward(self, x):
        return self.fn(self, self.conv(x))


def _randomize_affine(m: nn.Module) -> nn.Module:
    with torch.no_grad():
        for name, p in m.named_parameters():
            p.copy_(torch.rand_like(p) + 0.5 if name.endswith("weight") else torch.randn_like(p) * 0.3)
    return m


# -- norm ----------------------------------------------------------------------------------------------------------

NORMS = {
    "layer_norm_btc": lambda: Wrap(lambda s, y: s.ln(y.transpose(1, 2)), ln=_randomize_affine(nn.LayerNorm(8))),
    "layer_norm_no_affine": lambda: Wrap(lambda s, y: s.ln(y.transpose(1, 2)),
                                         ln=nn.LayerNorm(8, elementwise_affine=False)),
    "layer_norm_no_bias": lambda: Wrap(lambda s, y: s.ln(y.transpose(1, 2)),
                                       ln=_randomize_affine(nn.LayerNorm(8, bias=False))),
    "layer_norm_2d_shape": lambda: Wrap(lambda s, y: s.ln(y.reshape(y.shape[0], -1, 2, 4)),
                                        ln=_randomize_affine(nn.LayerNorm([2, 4]))),
    "f_layer_norm_time": lambda: Wrap(lambda s, y: F.layer_norm(y, y.shape[-1:])),
    "f_layer_norm_global": lambda: Wrap(lambda s, y: F.layer_norm(y, y.shape[1:])),
    "group_norm_1": lambda: Wrap(lambda s, y: s.gn(y), gn=_randomize_affine(nn.GroupNorm(1, 8))),
    "group_norm_2": lambda: Wrap(lambda s, y: s.gn(y), gn=_randomize_affine(nn.GroupNorm(2, 8))),
    "group_norm_channels": lambda: Wrap(lambda s, y: s.gn(y), gn=_randomize_affine(nn.GroupNorm(8, 8))),
    "group_norm_no_affine": lambda: Wrap(lambda s, y: s.gn(y), gn=nn.GroupNorm(4, 8, affine=False)),
    "group_norm_4d": lambda: Wrap(lambda s, y: s.gn(y.reshape(y.shape[0], 8, 4, -1)),
                                  gn=_randomize_affine(nn.GroupNorm(2, 8))),
    "group_norm_4d_channels": lambda: Wrap(lambda s, y: s.gn(y.reshape(y.shape[0], 8, 4, -1)),
                                           gn=_randomize_affine(nn.GroupNorm(8, 8))),
    "f_group_norm": lambda: Wrap(lambda s, y: F.group_norm(y, 2, s.w, s.b, eps=1e-3), w=nn.Parameter(torch.rand(8)),
                                 b=nn.Parameter(torch.randn(8))),
}


@pytest.mark.parametrize("name", sorted(NORMS))
def test_norms_become_mean_sub_mul_rsqrt_with_the_same_result(name):
    torch.manual_seed(1)
    qmodel = _check_equivalent(NORMS[name](), (2, 8, 64), (3, 8, 40))
    targets = _targets(qmodel)
    assert not {"aten.layer_norm.default", "aten.group_norm.default"} & targets
    assert {"aten.mean.dim", "aten.sub.Tensor", "aten.rsqrt.default"} <= targets


class FrameNorm(nn.Module):
    """cLN as users write it: nn.LayerNorm over the channels of each frame, straight on the input."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = _randomize_affine(nn.LayerNorm(8))

    def forward(self, x):
        return self.norm(x.transpose(1, 2))


def test_quiet_frames_stay_finite_and_come_out_under_normalized():
    """The trap of DESIGN.md: a quiet frame's variance rounds to 0 on its grid and rsqrt would overflow. rsqrt's
    input is floored at one LSB and its output saturates at its calibrated range, so a quiet frame stays finite
    and comes out smaller than float's unit-variance frame (toward the affine shift), never at inf."""
    torch.manual_seed(0)
    model = FrameNorm().eval()
    qmodel = quantize(model, torch.randn(2, 8, 64))
    calibrate(qmodel, [torch.randn(2, 8, 64) for _ in range(4)])
    x = torch.randn(1, 8, 64)
    x[..., 32:] *= 1e-2  # frames 32.. at -40 dB: a few LSBs of the input grid
    with torch.no_grad():
        sim, ref = qmodel(x), model(x)
    assert torch.isfinite(sim).all()
    loud, quiet = (sim[:, :32] - ref[:, :32]).norm() / ref[:, :32].norm(), sim[:, 32:] - model.norm.bias
    assert loud < 0.1
    assert quiet.abs().max() < ref[:, 32:].sub(model.norm.bias).abs().max() / 2  # under-normalized, bounded


# -- batchnorm -----------------------------------------------------------------------------------------------------


def _stats(bn: nn.Module, affine: bool = True) -> nn.Module:
    with torch.no_grad():
        bn.running_mean.normal_(std=0.5)
        bn.running_var.uniform_(0.1, 3.0)
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(std=0.3)
    return bn


class ConvBN(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "conv2d":
            self.conv, self.bn = nn.Conv2d(2, 6, 3, padding=1), _stats(nn.BatchNorm2d(6))
        elif kind == "linear":
            self.conv, self.bn = nn.Linear(8, 12), _stats(nn.BatchNorm1d(12))
        elif kind == "conv_transpose":
            self.conv, self.bn = nn.ConvTranspose1d(8, 4, 4, stride=2), _stats(nn.BatchNorm1d(4))
        elif kind == "no_bias_no_affine":
            self.conv, self.bn = nn.Conv1d(8, 8, 3, padding=1, bias=False), _stats(nn.BatchNorm1d(8, affine=False),
                                                                                  affine=False)
        else:
            self.conv, self.bn = nn.Conv1d(8, 8, 3, padding=1), _stats(nn.BatchNorm1d(8))

    def forward(self, x):
        if self.kind == "conv2d":
            return self.bn(self.conv(x.reshape(x.shape[0], 2, 4, -1)))
        if self.kind == "linear":
            return self.bn(self.conv(x.mean(dim=-1)))
        y = self.conv(x)
        if self.kind == "shared":  # the conv's output feeds something else too: per-channel mul + add
            return self.bn(y) + y
        if self.kind == "after_relu":
            return self.bn(torch.relu(y))
        return self.bn(y)


@pytest.mark.parametrize("kind,folded", [("conv1d", True), ("conv2d", True), ("linear", True),
                                         ("conv_transpose", True), ("no_bias_no_affine", True),
                                         ("shared", False), ("after_relu", False)])
def test_batchnorm_is_folded_or_becomes_a_channel_affine_with_the_same_result(kind, folded, caplog):
    torch.manual_seed(2)
    model = ConvBN(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="compressor.quant"):
        qmodel = _check_equivalent(model, (2, 8, 64), (3, 8, 40))
    targets = _targets(qmodel)
    assert not any("batch_norm" in t for t in targets)
    assert ("aten.mul.Tensor" not in targets) == folded
    lines = [r.getMessage() for r in caplog.records if "batchnorm" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("substituted 1 batchnorm") and lines[0].endswith(": bn")
    assert ("folded" in lines[0]) == folded
    # the BatchNorm's tensors are gone; the folded ones are trained parameters; the user's model is untouched
    state = qmodel.graph_module.state_dict()
    assert not any(k.startswith("bn.") and "folded" not in k for k in state), sorted(state)
    trained = {id(p) for p in qmodel.model_parameters()}
    folded_names = ["conv.weight", "conv.bias"] if folded else ["bn.folded_scale", "bn.folded_shift"]
    for name in folded_names:
        param = qmodel.graph_module.get_parameter(name)
        assert id(param) in trained and param.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_folded_weights_train_and_come_back_from_the_checkpoint_program():
    torch.manual_seed(3)
    model = ConvBN("conv1d").eval()
    qmodel = quantize(model, torch.randn(2, 8, 64))
    calibrate(qmodel, [torch.randn(2, 8, 64) for _ in range(3)])
    qmodel.train()
    qmodel(torch.randn(2, 8, 64)).square().mean().backward()
    assert qmodel.graph_module.get_parameter("conv.weight").grad is not None
    with torch.no_grad():
        qmodel.graph_module.get_parameter("conv.bias").add_(0.1)  # as a training step would
    qmodel.eval()
    # a checkpoint rebuilds from the stored program (unfolded weights) and loads the trained state
    rebuilt = quantize_program(qmodel.traced_program, qmodel.example_shapes, qmodel.config)
    assert rebuilt.state_dict().keys() == qmodel.state_dict().keys()
    rebuilt.load_state_dict(qmodel.state_dict())
    rebuilt.eval()
    x = torch.randn(1, 8, 64)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), qmodel(x))


def test_batchnorm_with_batch_statistics_is_refused():
    model = Wrap(lambda s, y: s.bn(y), bn=nn.BatchNorm1d(8, track_running_stats=False))
    with pytest.raises(UnsupportedOpError, match="batch"):
        quantize(model.eval(), torch.randn(2, 8, 64))


# -- attention -----------------------------------------------------------------------------------------------------


class MHA(nn.Module):
    def __init__(self, batch_first: bool, need_weights: bool, heads: int = 2, mask: str = "") -> None:
        super().__init__()
        self.batch_first, self.need_weights, self.mask = batch_first, need_weights, mask
        self.proj = nn.Linear(8, 8)
        self.mha = nn.MultiheadAttention(8, heads, batch_first=batch_first)

    def forward(self, x):  # x: (batch, time, 8)
        y = self.proj(x)
        if not self.batch_first:
            y = y.transpose(0, 1)
        out, weights = self.mha(y, y, y, need_weights=self.need_weights, key_padding_mask=None)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out if weights is None else out + weights.mean()


class SDPA(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.proj = nn.Linear(8, 24)
        steps = torch.arange(32.0)  # a relative-position-like additive bias, per head, up to 32 frames
        self.register_buffer("bias", -(steps[:, None] - steps[None, :]).abs() * 0.1 + torch.randn(2, 1, 1) * 0.5)

    def forward(self, x):  # x: (batch, time, 8) -> 2 heads of 4
        b, t, _ = x.shape
        q, k, v = self.proj(x).reshape(b, t, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
        if self.kind == "causal":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif self.kind == "float_mask":
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias[:, :t, :t])
        elif self.kind == "bool_mask":
            steps = torch.arange(t)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=(steps[:, None] - steps[None, :]).abs() < 5)
        elif self.kind == "scale":
            out = F.scaled_dot_product_attention(q, k, v, scale=0.3)
        elif self.kind == "gqa":
            out = F.scaled_dot_product_attention(q, k[:, :1], v[:, :1], enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(b, t, 8)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_becomes_matmul_softmax_matmul(batch_first, need_weights):
    torch.manual_seed(4)
    qmodel = _check_equivalent(MHA(batch_first, need_weights), (2, 16, 8), (3, 10, 8))
    targets = _targets(qmodel)
    assert "aten.scaled_dot_product_attention.default" not in targets
    assert "aten._softmax.default" in targets


@pytest.mark.parametrize("kind", ["plain", "causal", "float_mask", "bool_mask", "scale", "gqa"])
def test_scaled_dot_product_attention_becomes_matmul_softmax_matmul(kind):
    torch.manual_seed(5)
    qmodel = _check_equivalent(SDPA(kind), (2, 16, 8), (3, 10, 8))
    targets = _targets(qmodel)
    assert "aten.scaled_dot_product_attention.default" not in targets
    softmax = [n for n in qmodel.graph_module.graph.nodes if n.target == torch.ops.aten._softmax.default]
    assert softmax and all(n.args[1] == n.meta["val"].dim() - 1 for n in softmax)  # on the last axis


def test_causal_attention_quantizes_with_masked_weights_at_zero():
    torch.manual_seed(6)
    model = SDPA("causal").eval()
    qmodel = quantize(model, torch.randn(2, 16, 8))
    calibrate(qmodel, [torch.randn(2, 16, 8) for _ in range(4)])
    x = torch.randn(1, 16, 8)
    with torch.no_grad():
        ref, sim = model(x), qmodel(x)
    # the first output frame sees only the first value: masked scores add nothing on the 1/256 grid
    assert (sim - ref).norm() / ref.norm() < 0.1


def test_attention_dropout_is_refused_with_what_to_do():
    model = Wrap(lambda s, y: F.scaled_dot_product_attention(y[:, None], y[:, None], y[:, None], dropout_p=0.1))
    with pytest.raises(UnsupportedOpError, match="dropout_p=0.0"):
        quantize(model.eval(), torch.randn(2, 8, 16))


# -- logging and switches ------------------------------------------------------------------------------------------


class Everything(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(8, 8, 1)
        self.bn = _stats(nn.BatchNorm1d(8))
        self.ln = nn.LayerNorm(8)
        self.gn = nn.GroupNorm(1, 8)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        y = self.gn(self.bn(self.conv(x))).transpose(1, 2)
        y = self.ln(y)
        return self.mha(y, y, y, need_weights=False)[0]


def test_each_kind_of_swap_is_logged_once_with_count_and_module_paths(caplog):
    with caplog.at_level(logging.INFO, logger="compressor.quant"):
        quantize(Everything().eval(), torch.randn(2, 8, 32))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("substituted")]
    by_kind = {line.split()[2]: line for line in lines}
    assert len(lines) == 3 and set(by_kind) == {"norm", "batchnorm", "attention"}, lines
    assert by_kind["norm"].startswith("substituted 2 norm") and by_kind["norm"].endswith(": gn, ln")
    assert by_kind["batchnorm"].startswith("substituted 1 batchnorm") and by_kind["batchnorm"].endswith(": bn")
    assert by_kind["attention"].startswith("substituted 1 attention") and by_kind["attention"].endswith(": mha")


@pytest.mark.parametrize("off,op,hint", [
    ("norm", "layer_norm", "write the norm as explicit ops"),
    ("batchnorm", "batch_norm", "fold BatchNorm into the preceding conv"),
    ("attention", "scaled_dot_product_attention", "write attention out"),
])
def test_a_kind_switched_off_is_refused_as_before_with_its_hint(off, op, hint):
    config = QuantConfig(substitutions=tuple(k for k in SUBSTITUTIONS if k != off))
    with pytest.raises(UnsupportedOpError) as err:
        quantize(Everything().eval(), torch.randn(2, 8, 32), config)
    message = str(err.value)
    assert op in message and hint in message and f"the {off!r} substitution is off" in message
    assert "test_substitution.py" in message  # the user's source line
    others = [k for k in SUBSTITUTIONS if k != off]
    for kind, other_op in (("norm", "layer_norm"), ("batchnorm", "batch_norm"),
                           ("attention", "scaled_dot_product_attention")):
        if kind in others:
            assert other_op not in message


def test_substitutions_round_trip_in_the_config_and_old_checkpoints_load():
    config = QuantConfig(substitutions=("norm",))
    data = config.to_dict()
    assert data["substitutions"] == ["norm"]
    assert QuantConfig.from_dict(data) == config
    old = QuantConfig().to_dict()
    del old["substitutions"]  # a checkpoint written before the field existed
    assert QuantConfig.from_dict(old).substitutions == SUBSTITUTIONS
    with pytest.raises(ConfigError, match="unknown kind"):
        QuantConfig(substitutions=("norm", "layernorm"))
    with pytest.raises(ConfigError, match="list of names"):
        QuantConfig(substitutions="norm")


def test_an_additive_minus_inf_mask_is_named_at_calibration():
    class Masked(SDPA):
        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.proj(x).reshape(b, t, 3, 2, 4).permute(2, 0, 3, 1, 4).unbind(0)
            mask = self.causal[:t, :t]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, 8)

    model = Masked("plain").eval()
    model.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(16))  # -inf above the diagonal
    qmodel = quantize(model, torch.randn(2, 16, 8), dynamic_shapes=None)
    with pytest.raises(ConfigError, match="boolean"):
        calibrate(qmodel, [torch.randn(2, 16, 8)])
