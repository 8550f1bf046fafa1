"""The exact rewrites of compressor/ops/decompositions.py compute what torch's own ops compute.

F.unfold / F.fold (im2col / col2im) and linear / bilinear upsampling are rewritten into slices, pads,
stacks, reshapes, adds and scalar multiplications; here each is checked against torch on random shapes,
directly and through quantize()'s trace (every axis dynamic: another batch size and length must run).
"""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compressor.errors import UnsupportedOpError
from compressor.ops import decompositions as dec
from compressor.quant import quantize
from compressor.quant.model import trace

aten = torch.ops.aten


def _unfold_cases(count: int, seed: int):
    rng = random.Random(seed)
    cases = [
        ((100, 1), (1, 1), (100, 0), (50, 1), (2, 3, 260, 1)),  # asteroid's DPRNN: K=100, S=50
        ((8, 1), (1, 1), (8, 0), (4, 1), (1, 4, 37, 1)),
        ((5, 1), (1, 1), (2, 0), (3, 1), (2, 2, 29, 1)),  # K % S != 0, coprime
        ((6, 1), (1, 1), (1, 0), (4, 1), (2, 2, 31, 1)),  # K % S != 0, gcd 2: zero-stuffing in the fold
        ((3, 6), (2, 1), (2, 2), (2, 4), (1, 1, 8, 30)),  # 2-D, dilated along H
        ((4, 4), (1, 1), (0, 0), (4, 4), (2, 3, 12, 16)),  # no overlap
        ((3, 3), (1, 1), (1, 1), (1, 1), (1, 2, 5, 7)),  # stride 1
        ((2, 5), (1, 2), (0, 3), (3, 2), (2, 2, 9, 13)),  # stride > kernel along H: gaps
    ]
    while len(cases) < count:
        k = (rng.randint(1, 7), rng.randint(1, 6))
        d = (rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2]))
        p = (rng.randint(0, k[0]), rng.randint(0, k[1]))
        s = (rng.randint(1, 6), rng.randint(1, 5))
        hw = [rng.randint(max(1, d[i] * (k[i] - 1) + 1 - 2 * p[i]), 40) for i in range(2)]
        cases.append((k, d, p, s, (rng.randint(1, 3), rng.randint(1, 4), *hw)))
    return cases


@pytest.mark.parametrize("kernel,dilation,padding,stride,shape", _unfold_cases(40, seed=0))
def test_unfold_and_fold_match_torch(kernel, dilation, padding, stride, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    args = (kernel, dilation, padding, stride)
    want = aten.im2col(x, *args)
    got = dec.im2col(x, *args)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # data movement only: bit-exact
    cols = torch.randn_like(want, dtype=torch.float64)  # float64: the overlaps are summed in another order
    want = aten.col2im(cols, shape[2:], *args)
    got = dec.col2im(cols, shape[2:], *args)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_unbatched_unfold_and_fold():
    x = torch.randn(3, 11, 9)
    args = ((3, 2), (1, 1), (1, 0), (2, 2))
    torch.testing.assert_close(dec.im2col(x, *args), aten.im2col(x, *args))
    cols = aten.im2col(x, *args)
    torch.testing.assert_close(dec.col2im(cols, (11, 9), *args), aten.col2im(cols, (11, 9), *args))


def test_the_framing_costs_kernel_over_gcd_slices():
    """asteroid's K=100, S=50: two strided slices per unfold and one add per fold, not 100 of each."""

    class Chunks(nn.Module):
        def forward(self, x):
            t = x.shape[-1]
            chunks = F.unfold(x.unsqueeze(-1), (100, 1), padding=(100, 0), stride=(50, 1))
            return F.fold(chunks * 0.5, (t, 1), (100, 1), padding=(100, 0), stride=(50, 1))

    gm = trace(Chunks(), [torch.randn(2, 4, 500)])
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert aten.im2col.default not in targets and aten.col2im.default not in targets
    assert targets.count(aten.slice.Tensor) <= 2 + 1  # 2 frame slices + the crop of the fold's padding
    assert targets.count(aten.add.Tensor) == 1


@pytest.mark.parametrize("factor", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("length", [1, 2, 7, 33])
def test_linear_upsampling_matches_torch(factor, length):
    # in float64: torch's float32 source index (o + 0.5) / factor - 0.5 is itself off by up to ~1e-5 on
    # long signals for factors that are not powers of 2, while the rewrite's weights are exact
    torch.manual_seed(factor)
    x = torch.randn(2, 3, length, dtype=torch.float64)
    want = F.interpolate(x, scale_factor=factor, mode="linear")
    torch.testing.assert_close(dec.upsample_linear(x, None, False, [float(factor)]), want, rtol=1e-12, atol=1e-12)
    size = dec.upsample_linear(x, [factor * length], False, None)
    torch.testing.assert_close(size, F.interpolate(x, size=factor * length, mode="linear"), rtol=1e-12, atol=1e-12)
    got = dec.upsample_linear(x.float(), None, False, [float(factor)])
    torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("factors,shape", [((2, 2), (2, 3, 5, 9)), ((3, 2), (1, 2, 4, 7)), ((2, 4), (2, 1, 6, 1)),
                                           ((1, 3), (1, 2, 3, 8))])
def test_bilinear_upsampling_matches_torch_on_non_square_maps(factors, shape):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64)
    want = F.interpolate(x, scale_factor=factors, mode="bilinear")
    got = dec.upsample_linear(x, None, False, [float(f) for f in factors])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    got = dec.upsample_linear(x.float(), None, False, [float(f) for f in factors])
    torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=1e-6)


class _DualPath(nn.Module):
    """A DPRNN-like block: chunks of 8 with hop 4, a Linear over each chunk, overlap-add back."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x):
        b, c, t = x.shape
        chunks = F.unfold(x.unsqueeze(-1), (8, 1), padding=(8, 0), stride=(4, 1))
        n = chunks.shape[-1]
        chunks = self.fc(chunks.reshape(b, c, 8, n).transpose(2, 3)).transpose(2, 3).reshape(b, c * 8, n)
        out = F.fold(chunks, (t, 1), (8, 1), padding=(8, 0), stride=(4, 1)).squeeze(-1)
        return F.interpolate(out, scale_factor=2.0, mode="linear")


def test_traced_rewrites_run_at_other_batch_sizes_and_lengths():
    """No guard on the input's shape: the traced graph runs at any batch size and length."""
    torch.manual_seed(0)
    model = _DualPath().eval()
    gm = trace(model, [torch.randn(2, 4, 64)])
    targets = {n.target for n in gm.graph.nodes if n.op == "call_function"}
    assert not targets & {aten.im2col.default, aten.col2im.default, aten.upsample_linear1d.vec}
    with torch.no_grad():
        for shape in [(1, 4, 64), (3, 4, 50), (1, 4, 17), (2, 4, 101)]:
            x = torch.randn(shape)
            torch.testing.assert_close(gm(x), model(x), rtol=1e-5, atol=1e-5)


class _Upsample(nn.Module):
    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.kwargs = kwargs

    def forward(self, x):
        return F.interpolate(x, **self.kwargs)


@pytest.mark.parametrize("kwargs,op", [
    (dict(scale_factor=1.5, mode="linear"), "upsample_linear1d"),
    (dict(scale_factor=2.0, mode="linear", align_corners=True), "upsample_linear1d"),
    (dict(size=96, mode="linear"), "upsample_linear1d"),  # a fixed size: no fixed factor for every length
    (dict(scale_factor=1.5, mode="nearest"), "upsample_nearest1d"),
])
def test_upsampling_without_an_int8_form_is_refused_with_a_hint(kwargs, op):
    with pytest.raises(UnsupportedOpError) as err:
        quantize(_Upsample(**kwargs), torch.randn(1, 2, 64))
    message = str(err.value)
    assert f"aten.{op}.default" in message and "integer factors" in message
