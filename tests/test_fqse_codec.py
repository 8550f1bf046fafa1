"""FQSE's splitter and combiner (numpy only, as the runtimes run them)."""
import numpy as np

from compressor.data import from_int16
from compressor.data.snr_rescale import rescale_noise
from compressor.fqse import io_codec


def test_split_is_lossless_for_every_int16_value():
    k = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)
    x = from_int16(k)  # float32, the toolkit's PCM convention
    hi, lo = io_codec.split_codes(x)
    assert hi.min() >= -128 and hi.max() <= 127 and lo.min() >= -128 and lo.max() <= 127
    # float split (eq. 3) == bit split, and both invert exactly
    hi_i, lo_i = io_codec.split_int16(k)
    assert np.array_equal(hi.astype(np.int8), hi_i) and np.array_equal(lo.astype(np.int8), lo_i)
    assert np.array_equal(io_codec.merge_int16(hi_i, lo_i), k)
    both = io_codec.split(x)
    assert both.shape == (2, k.size) and both.dtype == np.float32
    assert np.array_equal(io_codec.merge(both), x)
    # the model's input is exactly on the int8 grid with scale 1/128, zero-point 0
    assert np.array_equal(np.round(both * 128), both * 128)


def test_split_of_a_batch_stacks_channels_before_time():
    x = from_int16(np.random.default_rng(0).integers(-32768, 32768, size=(3, 50)).astype(np.int16))
    split = io_codec.split(x)
    assert split.shape == (3, 2, 50)
    assert np.array_equal(io_codec.merge(split), x)


def test_combiner_inverts_a_known_residual():
    rng = np.random.default_rng(0)
    y = rng.uniform(-0.55, 0.55, 4000)  # inside the grid [(-128 - z_o) s_o, (127 - z_o) s_o]
    s_o, z_o = 1.2 / 255, 3
    q_o = np.clip(np.round(y / s_o) + z_o, -128, 127)
    y_o = io_codec.dequantize(q_o, s_o, z_o)
    residual = y - y_o
    assert np.abs(residual).max() <= s_o / 2 + 1e-12
    gain = io_codec.DEFAULT_GAIN
    # eps = gain * residual on its own int8 grid: |eps| <= 64 s_o, so 127 codes of s_e = 64 s_o / 127
    s_e, z_e = 64 * s_o / 127, 0
    q_e = np.clip(np.round(gain * residual / s_e) + z_e, -128, 127)
    assert np.abs(q_e).max() <= 127
    out = io_codec.combine_codes(q_o, (s_o, z_o), q_e, (s_e, z_e), gain)
    assert np.abs(out - y).max() <= s_e / gain / 2 + 1e-12  # 16-bit resolution: s_o / 256
    assert np.abs(out - y).max() < np.abs(residual).max() / 100
    # the float form used in training is the same arithmetic
    assert np.allclose(io_codec.combine(y_o, io_codec.dequantize(q_e, s_e, z_e), gain), out)


def test_noise_rescaled_to_exact_snr():
    rng = np.random.default_rng(1)
    clean = 0.1 * rng.standard_normal(8000)
    mixture = clean + 0.05 * rng.standard_normal(8000)
    for snr in (-6.0, 0.0, 18.0):
        new, gain = rescale_noise(mixture, clean, snr)
        target = clean * gain
        measured = 10 * np.log10(np.sum(target**2) / np.sum((new - target) ** 2))
        assert abs(measured - snr) < 1e-3
        assert np.abs(new).max() <= 0.99 + 1e-6
