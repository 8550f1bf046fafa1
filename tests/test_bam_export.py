"""The int8 x int1 model exported: every op int8, parity with the simulation, 0/1 maps in both files,
and the bit-packed runtime equal to the .tflite file. Slow: two conversions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import exporters
from click.testing import CliRunner
from compressor.bam.frontend import MelConfig
from compressor.cli.main import main
from compressor.data.audio import write_audio
from compressor.recipes import get_recipe
from compressor.recipes.bam import BAMConfig
from compressor.recipes.base import RecipeContext
from compressor.zoo.dnsmos_cnn import DnsmosCNN
from exporters.sessions import open_session
from runtimes.binary_maps import onnx_binary_maps, tflite_binary_maps
from runtimes.packed_binary import from_quantized
from tests.test_bam import SMALL, _Features

SMALL_MEL = MelConfig(n_mels=24, clip_seconds=0.76)  # 37 frames x 24 mels, the SMALL model's input


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    recipe = get_recipe("bam")(BAMConfig(epochs=1, batch_size=4, calib_batches=2))
    data = _Features(12)
    qmodel = recipe.run(RecipeContext(DnsmosCNN(SMALL), data, None, Path("."), progress=False))
    out = tmp_path_factory.mktemp("bam")
    calibration = [data.x[i].numpy() for i in range(4)]
    files, results = {}, {}
    for target in ("onnx", "tflite"):
        files[target] = out / f"bam.{target}"
        results[target] = exporters.export(qmodel, target, files[target], calibration=calibration,
                                           model_info={"task": "quality", "frontend": SMALL_MEL.to_dict()})
    return qmodel, files, results, data


def test_files_are_all_int8_and_match_the_simulation(exported):
    qmodel, files, results, data = exported
    for target, result in results.items():
        assert result.ops["float_op_count"] == 0, (target, result.ops)
    for result in results.values():  # every op within 1 LSB on the file's own inputs (NHWC maps included)
        assert result.verification.passed and result.verification.op_max_lsb <= 1
    session = open_session(files["tflite"])
    spec_in, spec_out = session.metadata.inputs[0], session.metadata.outputs[0]
    for x in data.x:
        codes = spec_in.quantize(x.numpy().reshape(spec_in.shape))
        with torch.no_grad():
            simulated = spec_out.quantize(qmodel(torch.from_numpy(spec_in.dequantize(codes))).numpy())
        got = session.run_codes(codes)[0]
        assert np.abs(got.astype(int) - simulated.astype(int)).max() <= 1
    assert results["tflite"].ops["count"].get("GREATER_EQUAL") == 4
    assert results["onnx"].ops["count"].get("GreaterOrEqual") == 4


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_binary_maps_hold_only_zero_and_one_in_the_file(exported, target):
    _, files, _, data = exported
    spec = open_session(files[target]).metadata.inputs[0]
    read = onnx_binary_maps if target == "onnx" else tflite_binary_maps
    maps = read(files[target], spec.quantize(data.x[0].numpy().reshape(spec.shape)))
    assert len(maps) >= 4
    for values in maps.values():
        assert set(np.unique(values).tolist()) <= {0, 1}
    assert any(0 < v.mean() < 1 for v in maps.values())


def test_packed_runtime_equals_the_tflite_file(exported):
    qmodel, files, _, data = exported
    session = open_session(files["tflite"])
    spec = session.metadata.inputs[0]
    packed = from_quantized(qmodel)
    for x in data.x:
        codes = spec.quantize(x.numpy().reshape(spec.shape))
        np.testing.assert_array_equal(packed.run_codes(codes).reshape(-1), session.run_codes(codes)[0].reshape(-1))


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_compress_run_prints_the_predicted_score(exported, target, tmp_path):
    _, files, _, _ = exported
    assert SMALL_MEL.frames() == 37
    wav = tmp_path / "clip.wav"
    write_audio(wav, np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 0.1, 16000)
    result = CliRunner().invoke(main, ["run", str(files[target]), str(wav)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "predicted quality" in result.output and "3 clip(s)" in result.output
