"""Runtime layer: PCM handling, seamless chunking, bad files and bad audio."""
from __future__ import annotations

import numpy as np
import pytest

import runtimes
from compressor.errors import DataError, RuntimeLoadError
from runtimes.base import overlap_add, to_float_pcm


def test_int16_and_float_pcm():
    pcm = np.array([0, 16384, -32768, 32767], np.int16)
    assert np.allclose(to_float_pcm(pcm), [0.0, 0.5, -1.0, 32767 / 32768])
    assert to_float_pcm(np.array([0.25], np.float64)).dtype == np.float32


@pytest.mark.parametrize("bad, message", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros((2, 100), np.float32), "mono"),
    (np.array([0.0, np.nan], np.float32), "NaN"),
    (np.array([1, 2], np.int32), "int16 or float"),
])
def test_bad_pcm_is_refused(bad, message):
    with pytest.raises(DataError, match=message):
        to_float_pcm(bad)


@pytest.mark.parametrize("length", [100, 1000, 1001, 4567])
def test_overlap_add_has_no_seams(length):
    """A model that passes its input through comes back unchanged at any length: no seams, no gain bumps."""
    x = np.random.default_rng(0).standard_normal(length).astype(np.float32)
    calls = []

    def identity(chunk):
        calls.append(chunk.shape[-1])
        return chunk[None, :]

    y = overlap_add(identity, x, chunk=256, overlap=0.25, sources=1)
    assert set(calls) == {256}
    np.testing.assert_allclose(y[0], x, rtol=1e-6, atol=1e-6)


def test_overlap_add_blends_chunk_dependent_outputs_smoothly():
    """With a per-chunk gain (a model whose output depends on the chunk), the blend is a ramp, not a step."""
    x = np.ones(2000, np.float32)
    gains = iter([1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0, 1.0, 2.0])
    y = overlap_add(lambda c: c[None, :] * next(gains), x, chunk=400, overlap=0.25, sources=1)[0]
    assert np.max(np.abs(np.diff(y))) < 0.02  # 1 -> 2 spread over the 100-sample overlap


def test_unknown_and_missing_files(tmp_path):
    with pytest.raises(RuntimeLoadError, match="no such file"):
        runtimes.load(tmp_path / "missing.tflite")
    other = tmp_path / "model.bin"
    other.write_bytes(b"1234")
    with pytest.raises(RuntimeLoadError, match="unknown model format"):
        runtimes.load(other)


@pytest.mark.parametrize("suffix", [".onnx", ".tflite"])
def test_garbage_model_file_is_a_clear_error(tmp_path, suffix):
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(RuntimeLoadError, match=str(bad.name)):
        runtimes.load(bad)
