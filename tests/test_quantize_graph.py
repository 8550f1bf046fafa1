import pytest
import torch

from compressor.errors import UnsupportedOpError
from compressor.quant import QuantConfig, calibrate, quantize
from compressor.quant.graph import averaged_square
from compressor.quant.quantizers import ActivationQuantizer, FixedQParamsQuantizer, WeightQuantizer
from tests.foreign_models import TinyAttention, TinyCNN2d, TinyGRU, TinyMLP

FOREIGN = [
    (TinyMLP, lambda: torch.randn(2, 64)),
    (TinyCNN2d, lambda: torch.randn(2, 1, 8, 12)),
    (TinyAttention, lambda: torch.randn(2, 5, 8)),
]


def _quantize_calibrated(model, make_input, **cfg):
    torch.manual_seed(0)
    example = make_input()
    qm = quantize(model, example, QuantConfig(**cfg))
    calibrate(qm, [example] + [make_input() for _ in range(31)])
    return qm


def _call_targets(qm):
    return [n for n in qm.graph_module.graph.nodes if n.op == "call_function"]


def _is_quantizer_call(node):
    return node.op == "call_module" and str(node.target).startswith("quantizers.")


@pytest.mark.parametrize("cls,make_input", FOREIGN, ids=[c.__name__ for c, _ in FOREIGN])
def test_foreign_models_fully_quantized(cls, make_input):
    torch.manual_seed(0)
    model = cls()
    qm = _quantize_calibrated(model, make_input)
    graph = qm.graph_module.graph
    # every input passes through a quantizer first
    for ph in (n for n in graph.nodes if n.op == "placeholder"):
        assert any(_is_quantizer_call(u) for u in ph.users), f"input {ph.name} is not quantized"
    # every weight of a linear op is quantized, and the output is quantized
    for p in (n for n in graph.nodes if n.op == "get_attr"):
        assert not any(u.op == "call_function" for u in p.users), f"{p.target} reaches an op unquantized"
    out = next(n for n in graph.nodes if n.op == "output")
    for arg in out.args[0] if isinstance(out.args[0], (tuple, list)) else [out.args[0]]:
        src = arg
        while src.op == "call_function" and src.target in (torch.ops.aten.reshape.default, torch.ops.aten.view.default):
            src = src.args[0]
        assert _is_quantizer_call(src), "model output is not quantized"
    # every compute op's float inputs come from quantizers or data-movement ops of quantized values
    torch.manual_seed(0)
    x = make_input()  # the first calibration batch: no value lies outside the calibrated ranges
    with torch.no_grad():
        ref, sim = model(x), qm(x)
    assert sim.shape == ref.shape
    rel = (sim - ref).norm() / ref.norm()
    # EMA min/max calibration clips the tails of these Gaussian inputs, which
    # dominates the error; a wrong scale or a missed quantizer gives ~100%.
    assert rel < 0.15, f"8-bit simulation too far from float: {rel:.3f}"
    # varying batch and length keeps working
    bigger = make_input()
    bigger = torch.cat([bigger, bigger], dim=0)
    assert qm(bigger).shape[0] == bigger.shape[0]


def test_outputs_on_int8_grid():
    model = TinyAttention()
    qm = _quantize_calibrated(model, lambda: torch.randn(2, 5, 8))
    # the last quantizer in graph order is the output's
    last = [n for n in qm.graph_module.graph.nodes if _is_quantizer_call(n)][-1]
    q = qm.graph_module.get_submodule(last.target)
    scale, zp = q.qparams()
    with torch.no_grad():
        y = qm(torch.randn(3, 5, 8))
    codes = y / scale + zp
    assert torch.allclose(codes, codes.round(), atol=1e-3)
    assert codes.round().min() >= -128 and codes.round().max() <= 127


def test_concat_inputs_share_one_quantizer():
    qm = _quantize_calibrated(TinyCNN2d(), lambda: torch.randn(2, 1, 8, 12))
    cat = next(n for n in _call_targets(qm) if n.target == torch.ops.aten.cat.default)
    targets = {a.target for a in cat.args[0]}
    assert len(targets) == 1, f"concat inputs use different quantizers: {targets}"


def test_relu_fused_into_producer():
    qm = _quantize_calibrated(TinyCNN2d(), lambda: torch.randn(2, 1, 8, 12))
    conv = next(n for n in _call_targets(qm) if n.target == torch.ops.aten.conv2d.default)
    (user,) = conv.users
    assert user.target == torch.ops.aten.relu.default, "conv output was quantized before the ReLU"


def test_relu_after_a_reshape_is_rounded_once_after_its_producer():
    # asteroid DPTNet's mask: relu(reshape(tanh * sigmoid)); TFLite's converter fuses the ReLU into the MUL
    from compressor.ops.fixtures import GatedMaskReLU

    make = lambda: torch.randn(2, 8, 16)  # noqa: E731
    qm = _quantize_calibrated(GatedMaskReLU(), make)
    mul = next(n for n in _call_targets(qm) if n.target == torch.ops.aten.mul.Tensor)
    (user,) = mul.users
    assert user.target == torch.ops.aten.relu.default, "the product was quantized before the ReLU"
    x = make()
    with torch.no_grad():
        assert qm(x).shape == (2, 2, 4, 16)
    # a checkpoint saved before keeps its quantizers where they were planned (one after the product, one after ReLU)
    legacy = QuantConfig.from_dict({k: v for k, v in QuantConfig().to_dict().items() if k != "relu_before_moves"})
    old = quantize(GatedMaskReLU(), make(), legacy)
    mul = next(n for n in _call_targets(old) if n.target == torch.ops.aten.mul.Tensor)
    assert [_is_quantizer_call(u) for u in mul.users] == [True]


def test_fixed_qparams_in_graph():
    qm = _quantize_calibrated(TinyAttention(), lambda: torch.randn(2, 5, 8))
    fixed = [q for q in qm.quantizers().values() if isinstance(q, FixedQParamsQuantizer)]
    assert [q.op for q in fixed] == ["softmax"]
    assert fixed[0].qparams() == (1 / 256, -128)


@pytest.mark.parametrize("bits", [4, 8])
def test_weight_channels_hold_at_most_2b_values(bits):
    qm = _quantize_calibrated(TinyMLP(), lambda: torch.randn(2, 64), weight_bits=bits)
    weights = qm.quantized_weights()
    assert weights
    for name, w in weights.items():
        for channel in w.reshape(w.shape[0], -1):
            assert channel.unique().numel() <= 2**bits, name


def test_gru_is_refused_with_op_and_source_line_when_its_substitution_is_off():
    quantize(TinyGRU(), torch.randn(2, 7, 4))  # substituted by default
    with pytest.raises(UnsupportedOpError) as err:
        quantize(TinyGRU(), torch.randn(2, 7, 4), QuantConfig(substitutions=("norm", "batchnorm", "attention")))
    msg = str(err.value)
    assert "aten.gru" in msg
    assert "foreign_models.py" in msg and "self.gru(x)" in msg


def test_quantizer_inventory_counts():
    qm = _quantize_calibrated(TinyAttention(), lambda: torch.randn(2, 5, 8))
    kinds = [type(q) for q in qm.quantizers().values()]
    assert kinds.count(WeightQuantizer) == 4  # q, k, v, out
    assert kinds.count(ActivationQuantizer) >= 8


def test_silent_input_keeps_norms_finite(tiny_tasnet):
    """gLN's variance of a silent input rounds to 0; rsqrt's input is floored at one LSB."""
    x = torch.randn(2, 800) * 0.1
    qm = quantize(tiny_tasnet, x)
    calibrate(qm, [x])
    floored = [q for q in qm.activation_quantizers().values() if getattr(q, "positive", False)]
    assert len(floored) == 1 + 2 * 2  # one per gLN: the input norm, and two in each of the X*R = 2 blocks
    silent = torch.zeros(2, 800, requires_grad=True)
    y = qm(silent)
    assert torch.isfinite(y).all()
    y.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in qm.parameters() if p.grad is not None)


def test_conv_tasnet_every_tensor_quantized(tiny_tasnet):
    """Every conv/deconv weight, every op output, the input and the output of the zoo model."""
    x = torch.randn(2, 800) * 0.1
    qm = quantize(tiny_tasnet, x)
    calibrate(qm, [x])
    graph = qm.graph_module.graph
    computes = [n for n in graph.nodes if n.op == "call_function" and n.target in (
        torch.ops.aten.conv1d.default, torch.ops.aten.conv_transpose1d.default, torch.ops.aten.prelu.default,
        torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor, torch.ops.aten.sub.Tensor, torch.ops.aten.mean.dim,
        torch.ops.aten.rsqrt.default, torch.ops.aten.sigmoid.default)]
    assert len(computes) > 30
    for node in computes:
        users = list(node.users)
        fused = len(users) == 1 and users[0].target == torch.ops.aten.relu.default
        if averaged_square(node):  # summed in its mean's int32 accumulator (precision.DEFAULT_RULES)
            assert not any(_is_quantizer_call(u) for u in users), f"{node.name}: an averaged square is quantized"
            continue
        assert fused or all(_is_quantizer_call(u) for u in users), f"{node.name} output is not quantized"
        for arg in node.args:
            if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
                raise AssertionError(f"{node.name} reads the float parameter {arg.target}")
    weighted = [n for n in computes if n.target in (torch.ops.aten.conv1d.default,
                                                   torch.ops.aten.conv_transpose1d.default)]
    for node in weighted:
        assert _is_quantizer_call(node.args[1]), f"{node.name} weight is not quantized"
    # the sigmoid mask has the runtimes' fixed output qparams
    fixed = [q for q in qm.quantizers().values() if isinstance(q, FixedQParamsQuantizer)]
    assert [q.op for q in fixed] == ["sigmoid"]
    # the output is on the int8 grid of the decoder's quantizer
    out_node = next(n for n in graph.nodes if n.op == "output")
    src = out_node.args[0][0] if isinstance(out_node.args[0], (tuple, list)) else out_node.args[0]
    while not _is_quantizer_call(src):
        src = src.args[0]
    scale, zp = qm.graph_module.get_submodule(src.target).qparams()
    with torch.no_grad():
        codes = qm(torch.randn(1, 1000) * 0.1) / scale + zp
    assert torch.allclose(codes, codes.round(), atol=1e-3)


def test_a_conv_weight_held_as_a_plain_tensor_attribute_is_quantized():
    """asteroid's filterbanks keep their filters as a tensor attribute, neither parameter nor buffer."""

    class FixedFilterbank(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._filters = torch.randn(8, 1, 16)

        def forward(self, x):
            return torch.nn.functional.conv1d(x.unsqueeze(1), self._filters, stride=8)

    model = FixedFilterbank()
    x = torch.randn(2, 800)
    qm = quantize(model, x)
    calibrate(qm, [x])
    assert any(isinstance(q, WeightQuantizer) for q in qm.quantizers().values())
    with torch.no_grad():
        assert torch.allclose(qm(x), model(x), atol=0.1 * float(model(x).abs().max()))


class _PReLUAfterReshape(torch.nn.Module):
    """asteroid DPTNet's first_out: a one-slope PReLU on a reshaped tensor."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(8, 8, 1)
        self.prelu = torch.nn.PReLU()
        self.out = torch.nn.Conv2d(2, 2, 1)

    def forward(self, x):
        y = self.conv(x).reshape(x.shape[0], 2, 4, -1)
        return self.out(self.prelu(y))


def test_a_prelu_after_a_reshape_gets_exact_leaky_relu_grids():
    from compressor.quant.leaky_grid import snap_leaky_relu_grids

    qm = _quantize_calibrated(_PReLUAfterReshape(), lambda: torch.randn(2, 8, 16))
    assert snap_leaky_relu_grids(qm) == 1  # its input's grid is found through the reshape
