import math

import pytest
import torch

from compressor.quant.fake_quant import fake_quantize, quantize_to_int
from compressor.quant.quantizers import ActivationQuantizer, FixedQParamsQuantizer, WeightQuantizer


def test_fake_quantize_matches_torch_per_tensor():
    x = torch.randn(10000) * 3
    scale, zp = torch.tensor(0.0173), torch.tensor(-7.0)
    ours = fake_quantize(x, scale, zp, -128, 127)
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), -128, 127)
    assert torch.equal(ours, ref)


def test_fake_quantize_matches_torch_per_channel():
    w = torch.randn(6, 5, 3)
    q = WeightQuantizer(w, bits=8, axis=0)
    ours = q(w)
    ref = torch.fake_quantize_per_channel_affine(w, q.scale.detach(), torch.zeros(6, dtype=torch.int32), 0, -127, 127)
    assert torch.equal(ours, ref)


def test_round_trip_through_integer_codes():
    q = ActivationQuantizer(bits=8)
    q.set_range(-1.5, 3.0)
    x = torch.linspace(-2, 4, 1001)
    scale, zp = q.qparams()
    codes = quantize_to_int(x, torch.tensor(scale), torch.tensor(float(zp)), q.qmin, q.qmax)
    assert codes.min() >= -128 and codes.max() <= 127
    assert torch.allclose(q(x), (codes - zp) * scale)
    # a value on the grid survives quantization unchanged
    on_grid = (codes - zp) * scale
    assert torch.equal(q(on_grid), on_grid)
    # zero is exactly representable (zero padding must stay zero)
    assert q(torch.zeros(1)).item() == 0.0


@pytest.mark.parametrize("bits", [2, 4, 7, 8])
def test_weight_range_is_symmetric(bits):
    w = torch.randn(4, 100)
    q = WeightQuantizer(w, bits=bits, axis=0)
    codes = torch.round(q(w) / q.scale.detach().unsqueeze(1))
    qmax = 2 ** (bits - 1) - 1
    assert codes.min() >= -qmax and codes.max() <= qmax
    assert codes.abs().max() == qmax  # min/max init uses the full range


def test_lsq_gradient_matches_formula():
    """Esser et al. 2020, eq. 3 and the gradient scale 1/sqrt(N * Qp)."""
    q = ActivationQuantizer(bits=8, learn_zero_point=False)
    q.set_range(-1.0, 1.0)
    s = q.scale.detach().item()
    zp = q.zero_point.detach().item()
    x = torch.tensor([[0.3, -0.77, 0.01, 5.0, -5.0]], requires_grad=True)
    y = q(x)
    y.sum().backward()
    g = 1.0 / math.sqrt(x[0].numel() * q.qmax)
    v = x.detach() / s + zp
    inside = (torch.round(v) >= q.qmin) & (torch.round(v) <= q.qmax)
    expected_ds = torch.where(
        inside, torch.round(v) - v,
        torch.where(v > 0, torch.tensor(q.qmax - zp), torch.tensor(q.qmin - zp)),
    ).sum() * g
    assert q.scale.grad.item() == pytest.approx(expected_ds.item(), rel=1e-5)
    assert torch.equal(x.grad, inside.float())


def test_weight_lsq_gradient_scale_uses_channel_size():
    torch.manual_seed(0)
    w = torch.randn(3, 50)
    q = WeightQuantizer(w, bits=8, axis=0)
    with torch.no_grad():
        q.scale.mul_(0.9)  # some weights clipped, none exactly on the clipping edge
    w = w.clone().requires_grad_(True)
    q(w).sum().backward()
    s = q.scale.detach().unsqueeze(1)
    v = w.detach() * (1.0 / s)
    inside = torch.where(v > 127, 127.0, torch.where(v < -127, -127.0, torch.round(v) - v))
    expected = inside.sum(dim=1) / math.sqrt(50 * 127)
    assert torch.allclose(q.scale.grad, expected, rtol=1e-4, atol=1e-7)


def test_zero_point_is_integer_in_simulation():
    q = ActivationQuantizer(bits=8)
    q.set_range(-0.3, 2.0)
    with torch.no_grad():
        q.zero_point.add_(0.37)  # a learned, fractional offset
    x = torch.linspace(-0.3, 2.0, 500)
    scale, zp = q.qparams()
    assert float(zp).is_integer()
    assert torch.equal(q(x), torch.fake_quantize_per_tensor_affine(x, scale, zp, -128, 127))


@pytest.mark.parametrize("learned, deployed", [(-129.4, -128), (131.0, 127), (-3.4, -3)])
def test_a_learned_zero_point_stays_in_the_int8_code_range(learned, deployed):
    """QAT moved a gLN scalar's zero-point to -129, which no int8 file can hold: it is held at the range end."""
    q = ActivationQuantizer()
    with torch.no_grad():
        q.scale.fill_(0.01)
        q.zero_point.fill_(learned)
    assert q.qparams() == (pytest.approx(0.01), deployed)
    x = torch.linspace(-3, 3, 601)
    expected = (torch.clamp(torch.round(x / 0.01) + deployed, -128, 127) - deployed) * 0.01
    assert torch.allclose(q(x), expected, atol=1e-6)


@pytest.mark.parametrize("op,scale,zp", [("sigmoid", 1 / 256, -128), ("softmax", 1 / 256, -128), ("tanh", 1 / 128, 0)])
def test_fixed_qparams(op, scale, zp):
    q = FixedQParamsQuantizer(op, bits=8)
    assert q.qparams() == (scale, zp)
    assert list(q.parameters()) == []  # nothing to learn


def test_observe_mode_is_identity_and_records_range():
    q = ActivationQuantizer(bits=8)
    q.set_mode("observe")
    x = torch.randn(100) * 2
    assert torch.equal(q(x), x)
    assert q.running_min.item() == pytest.approx(x.min().item())
    assert q.running_max.item() == pytest.approx(x.max().item())


def test_training_and_inference_paths_agree():
    """With gradients the LSQ Function runs, without them torch's native kernel: same values."""
    q = ActivationQuantizer(bits=8)
    q.set_range(-0.7, 1.9)
    x = torch.randn(4, 1000) * 1.5
    with torch.no_grad():
        fast = q(x)
    slow = q(x.clone().requires_grad_(True))
    assert torch.equal(fast, slow.detach())
    w = torch.randn(8, 3, 5)
    wq = WeightQuantizer(w, bits=7, axis=0)
    with torch.no_grad():
        fast = wq(w)
    assert torch.equal(fast, wq(w.clone().requires_grad_(True)).detach())


def test_zero_point_gradient_is_lsq_plus():
    q = ActivationQuantizer(bits=8)
    q.set_range(-1.0, 1.0)
    x = torch.tensor([[0.5, 9.0, -9.0, 0.1]])
    q(x).sum().backward()
    s = q.scale.detach().item()
    g = 1.0 / math.sqrt(4 * 127)
    # only the two clipped values move the output when the offset moves: -s each
    assert q.zero_point.grad.item() == pytest.approx(-2 * s * g, rel=1e-5)


@pytest.mark.parametrize("scale, zero_point", [(0.0173, 7.0), (1 / 3, 0.0), (0.02, 3.0)])
def test_compiled_kernels_equal_torch_fused_kernels(scale, zero_point):
    """Large activations take the compiled path: same values and LSQ gradients as torch's kernels.

    Values: bit-exact, also on a linspace full of rounding ties. Gradients: on
    random data, where no value sits exactly on a tie at a clipping edge (there
    torch's backward rounds x/s + zp while its forward rounds x/s then adds zp;
    ours follows the forward), and with a non-negative integer zero-point:
    torch's backward rounds the zero-point as int(zp + 0.5), which makes -7 into
    -6 and shifts its clipping mask by one code; ours uses the forward's rounding.
    """
    from compressor.quant import fake_quant

    ties = torch.linspace(-4, 4, 40001)[:40000].reshape(2, 4, 5000)
    s, z = torch.tensor(scale), torch.tensor(zero_point)
    assert ties.numel() >= fake_quant._COMPILE_MIN_NUMEL
    with torch.no_grad():
        assert torch.equal(fake_quantize(ties, s, z, -128, 127),
                           torch.fake_quantize_per_tensor_affine(ties, scale, round(zero_point), -128, 127))
    x_ref = torch.randn(2, 4, 5000, generator=torch.Generator().manual_seed(0)) * 2
    grad = torch.randn_like(x_ref)
    results = []
    for path in ("ours", "torch"):
        x = x_ref.clone().requires_grad_(True)
        s = torch.tensor([scale], requires_grad=True)
        z = torch.tensor([zero_point], requires_grad=True)
        if path == "ours":
            y = fake_quantize(x, s, z, -128, 127, grad_scale=0.01)
        else:
            y = torch._fake_quantize_learnable_per_tensor_affine(x, s, z, -128, 127, 0.01)
        y.backward(grad)
        results.append((y.detach(), x.grad, s.grad, z.grad))
    (y, gx, gs, gz), (y_ref, gx_ref, gs_ref, gz_ref) = results
    assert torch.equal(y, y_ref)
    assert torch.equal(gx, gx_ref)
    assert torch.allclose(gs, gs_ref, rtol=1e-4) and torch.allclose(gz, gz_ref, rtol=1e-4, atol=1e-7)


def test_compiled_kernels_are_in_use():
    """The speed of QAT rests on them; a silent fall-back to eager would hide a 2x slowdown."""
    import os

    from compressor.quant import fake_quant

    if os.environ.get("COMPRESS_NO_COMPILE", "") not in ("", "0"):
        pytest.skip("compiled kernels switched off by COMPRESS_NO_COMPILE")
    assert fake_quant._kernels().compiled is True


class _GlobalNorm(torch.nn.Module):
    """gLN's statistics: one mean and one rsqrt per item, then the normalized signal."""

    def forward(self, x):
        mean = x.mean(dim=(1, 2), keepdim=True)
        var = ((x - mean) ** 2).mean(dim=(1, 2), keepdim=True)
        return (x - mean) * torch.rsqrt(var + 1e-8)


def _calibrated(batches, method="mse"):
    from compressor.quant import QuantConfig, calibrate, quantize

    qmodel = quantize(_GlobalNorm(), (batches[0],), QuantConfig(calibration=method))
    calibrate(qmodel, batches, method)
    return qmodel


def test_per_item_statistics_get_the_extremes_seen_widened():
    # 8 batches of 2 items at one level, then one batch 10x quieter: its rsqrt is 10x larger. An EMA of batch
    # maxima (or an MSE fit on 18 values) would clip it; a statistic's range is the extremes seen x 1.5.
    from compressor.quant.graph import statistic_quantizers
    from compressor.quant.quantizers import STATISTIC_MARGIN

    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 4, 256, generator=gen) for _ in range(8)] + [0.1 * torch.randn(2, 4, 256, generator=gen)]
    qmodel = _calibrated(batches)
    rsqrt = [q for name, q in qmodel.activation_quantizers().items() if "rsqrt" in name]
    assert len(rsqrt) == 1
    largest = max(float(torch.rsqrt(((b - b.mean(dim=(1, 2), keepdim=True)) ** 2).mean(dim=(1, 2)) + 1e-8).max())
                  for b in batches)
    scale, zero_point = rsqrt[0].qparams()
    assert (rsqrt[0].qmax - zero_point) * scale == pytest.approx(STATISTIC_MARGIN * largest, rel=1e-5)
    qmodel.set_mode("observe")
    qmodel(batches[0])
    few = {name for name, q in qmodel.activation_quantizers().items() if q.few_values_per_item}
    statistics = statistic_quantizers(qmodel.graph_module) & few
    assert statistics and all(n.split("_")[1] in ("mean", "add", "rsqrt") for n in statistics)  # not the signals
    assert "act_x" not in statistics  # the input: 1024 values per item, and no reduction's


def test_calibration_is_reproducible_whatever_ran_before():
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(2, 4, 20000, generator=gen) for _ in range(3)]  # more values than the sample reservoir
    first = _calibrated(batches).state_dict()
    _calibrated([b * 3 for b in batches])  # draws from the calibration samples' generator
    again = _calibrated(batches).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
