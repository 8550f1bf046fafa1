"""SI-SNR / PIT loss and the evaluation metrics and their summaries."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from compressor.errors import ConfigError
from compressor.losses import neg_si_snr_loss, pairwise_si_snr, si_snr
from compressor.metrics import (
    bss_sdr,
    delta,
    evaluate_pair,
    snr_bucket,
    summarize,
)

SR = 16000


def _orthogonal_noise(ref: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Zero-mean noise orthogonal to the zero-mean ``ref`` (last axis)."""
    n = torch.randn(ref.shape, generator=gen, dtype=ref.dtype)
    n = n - n.mean(dim=-1, keepdim=True)
    r = ref - ref.mean(dim=-1, keepdim=True)
    return n - (n * r).sum(-1, keepdim=True) / (r * r).sum(-1, keepdim=True) * r


# ---------------------------------------------------------------- SI-SNR ---


def test_si_snr_of_scaled_self_is_huge_and_scale_invariant():
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(4, 2000, generator=gen, dtype=torch.float64)
    # Only eps (1e-8 on the energies) bounds the value of a perfect estimate.
    for scale in (0.1, 1.0, 37.0):
        assert (si_snr(scale * ref, ref) > 80).all()
    est = ref + 0.3 * torch.randn(4, 2000, generator=gen, dtype=torch.float64)
    a = si_snr(est, ref)
    torch.testing.assert_close(si_snr(5.0 * est, ref), a)
    torch.testing.assert_close(si_snr(est, 0.2 * ref), a)
    torch.testing.assert_close(si_snr(est + 3.0, ref - 1.0), a)  # zero-mean first


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 7.5, 20.0])
def test_si_snr_matches_known_power_ratio(snr_db):
    gen = torch.Generator().manual_seed(1)
    ref = torch.randn(3, 4000, generator=gen, dtype=torch.float64)
    ref = ref - ref.mean(-1, keepdim=True)
    noise = _orthogonal_noise(ref, gen)
    power = (ref * ref).sum(-1, keepdim=True) / (noise * noise).sum(-1, keepdim=True)
    noise = noise * torch.sqrt(power / 10 ** (snr_db / 10))
    got = si_snr(0.7 * (ref + noise), ref)  # the scale must not matter either
    torch.testing.assert_close(got, torch.full((3,), snr_db, dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_si_snr_leading_dims_and_silence():
    x = torch.randn(2, 3, 5, 100)
    assert si_snr(x, x).shape == (2, 3, 5)
    assert torch.isfinite(si_snr(torch.zeros(100), torch.zeros(100)))
    with pytest.raises(ConfigError):
        si_snr(torch.zeros(10), torch.zeros(11))


# ------------------------------------------------------------------- PIT ---


def test_pit_recovers_swapped_sources():
    gen = torch.Generator().manual_seed(2)
    refs = torch.randn(4, 3, 1000, generator=gen)
    perms = [(0, 1, 2), (2, 0, 1), (1, 0, 2), (2, 1, 0)]
    # estimates[b, perms[b][j]] is a noisy copy of references[b, j]
    est = torch.empty_like(refs)
    for b, p in enumerate(perms):
        for j in range(3):
            est[b, p[j]] = refs[b, j] + 0.1 * torch.randn(1000, generator=gen)
    loss, perm = neg_si_snr_loss(est, refs, pit=True, return_perm=True)
    assert perm.tolist() == [list(p) for p in perms]
    aligned = torch.stack([est[b, perm[b]] for b in range(4)])
    torch.testing.assert_close(loss, -si_snr(aligned, refs).mean())
    assert loss < -15  # about 20 dB per source
    no_pit = neg_si_snr_loss(est, refs, pit=False)
    assert no_pit > loss + 10


def test_pit_matches_brute_force_and_has_gradients():
    gen = torch.Generator().manual_seed(3)
    refs = torch.randn(5, 2, 300, generator=gen)
    est = torch.randn(5, 2, 300, generator=gen, requires_grad=True)
    loss = neg_si_snr_loss(est, refs)
    best = []
    for b in range(5):
        best.append(max(
            si_snr(est[b, list(p)], refs[b]).mean().item()
            for p in itertools.permutations(range(2))
        ))
    assert loss.item() == pytest.approx(-np.mean(best), abs=1e-5)
    loss.backward()
    assert est.grad is not None and torch.isfinite(est.grad).all()
    assert pairwise_si_snr(est, refs).shape == (5, 2, 2)


def test_single_source_loss_and_shape_errors():
    x = torch.randn(2, 1, 100)
    loss, perm = neg_si_snr_loss(x, x, return_perm=True)
    assert loss < -80 and perm.tolist() == [[0], [0]]
    with pytest.raises(ConfigError):
        neg_si_snr_loss(torch.randn(2, 100), torch.randn(2, 100))


# --------------------------------------------------------------- metrics ---


def _speechlike(rng: np.random.Generator, n: int) -> np.ndarray:
    """Amplitude-modulated coloured noise: enough structure for STOI."""
    t = np.arange(n) / SR
    carrier = np.convolve(rng.standard_normal(n), np.hanning(9), mode="same")
    return carrier * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t)) ** 2


def test_evaluate_pair_single_source():
    rng = np.random.default_rng(4)
    n = SR  # 1 s
    clean = _speechlike(rng, n)
    noise = rng.standard_normal(n)
    noise *= np.sqrt(np.sum(clean**2) / np.sum(noise**2))  # 0 dB mixture
    mixture = clean + noise
    estimate = clean + 0.1 * noise  # 20 dB less noise
    m = evaluate_pair(estimate, clean, mixture, SR)
    assert set(m) == {"si_snr", "si_snri", "sdr", "stoi"}
    assert all(isinstance(v, float) for v in m.values())
    assert m["si_snr"] == pytest.approx(20.0, abs=0.3)
    assert m["si_snri"] == pytest.approx(20.0, abs=0.5)
    # BSS-eval SDR: the 512-tap filter absorbs a little of the noise.
    assert 19.8 < m["sdr"] < 21.0
    assert 0.9 < m["stoi"] <= 1.0
    worse = evaluate_pair(mixture, clean, mixture, SR)
    assert worse["si_snri"] == pytest.approx(0.0, abs=1e-9)
    assert worse["stoi"] < m["stoi"]


def test_evaluate_pair_aligns_sources_by_permutation():
    rng = np.random.default_rng(5)
    a, b = _speechlike(rng, SR), rng.standard_normal(SR) * 0.3
    ref = np.stack([a, b])
    mixture = a + b
    est = np.stack([b, a]) + 0.05 * rng.standard_normal((2, SR))  # swapped
    m = evaluate_pair(est, ref, mixture, SR)
    same = evaluate_pair(est[::-1], ref, mixture, SR)
    for key in m:
        assert m[key] == pytest.approx(same[key], abs=1e-9)
    assert m["si_snr"] > 10
    with pytest.raises(ConfigError):
        evaluate_pair(est, ref[:1], mixture, SR)


def test_bss_sdr_matches_least_squares_projection():
    """fast_bss_eval's SDR equals BSS-eval's definition computed directly:
    project the estimate on the 512 delayed copies of the reference."""
    rng = np.random.default_rng(6)
    n, taps = 2000, 512
    ref = _speechlike(rng, n)
    est = np.convolve(ref, [0.9, 0.2, -0.1])[:n] + 0.2 * rng.standard_normal(n)
    padded = np.concatenate([est, np.zeros(taps - 1)])
    basis = np.zeros((n + taps - 1, taps))
    for k in range(taps):
        basis[k : k + n, k] = ref
    coef = np.linalg.solve(basis.T @ basis, basis.T @ padded)  # least squares
    target = basis @ coef
    expected = 10 * np.log10(np.sum(target**2) / np.sum((padded - target) ** 2))
    assert bss_sdr(est, ref) == pytest.approx(expected, abs=1e-3)


# ------------------------------------------------------------- summaries ---


@pytest.mark.parametrize(
    "snr, bucket",
    [(-5, "low"), (1.99, "low"), (2.0, "mid"), (5, "mid"), (10.0, "mid"),
     (10.01, "high"), (30, "high")],
)
def test_snr_bucket(snr, bucket):
    assert snr_bucket(snr) == bucket


def _row(snr_db, si, sdr=5.0, stoi=0.8):
    return {"si_snr": si, "si_snri": si - snr_db, "sdr": sdr, "stoi": stoi,
            "snr_db": snr_db}


def test_summarize_buckets_and_delta():
    rows = [_row(0.0, 4.0), _row(-3.0, 2.0), _row(5.0, 10.0, sdr=7.0, stoi=0.9)]
    s = summarize(rows)
    assert s["count"] == {"all": 3, "low": 2, "mid": 1, "high": 0}
    assert s["si_snr"] == {"all": pytest.approx(16 / 3), "low": 3.0, "mid": 10.0,
                           "high": None}
    assert s["si_snri"]["low"] == pytest.approx(((4 - 0) + (2 + 3)) / 2)
    assert s["sdr"] == pytest.approx(17 / 3)
    assert s["stoi"] == pytest.approx(2.5 / 3)

    ref_rows = [_row(0.0, 5.0), _row(-3.0, 3.0), _row(12.0, 20.0)]
    d = delta(s, summarize(ref_rows))
    assert d["si_snr"]["low"] == pytest.approx(-1.0)
    assert d["si_snr"]["mid"] is None and d["si_snr"]["high"] is None
    assert d["sdr"] == pytest.approx(0.0 + (17 / 3 - 5.0))
    assert d["count"] == s["count"]

    empty = summarize([])
    assert empty["si_snr"]["all"] is None and empty["sdr"] is None
    assert empty["count"]["all"] == 0
    with pytest.raises(ConfigError):
        summarize([{"si_snr": 1.0}])
    assert math.isclose(delta(s, s)["stoi"], 0.0)
