"""The int8 x int1 model exported: every op int8, parity with the simulation, 0/1 maps in both files,
and the bit-packed runtime equal to the .tflite file. Slow: two conversions (not the MEAN test)."""
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
from runtimes.packed_binary import MAP_QPARAMS, from_quantized, requantize_mean
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


def _mean_tflite(shape: tuple[int, int, int, int], in_q: tuple[float, int], out_q: tuple[float, int]) -> bytes:
    """A one-op int8 file: MEAN over the last two axes of an NCHW map (as the bam file's head has it)."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    def tensor(name, shape_, dtype, buffer=0, q=None):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape_), dtype, buffer
        if q is not None:
            t.quantization = fb.QuantizationParametersT()
            t.quantization.scale, t.quantization.zeroPoint = [float(q[0])], [int(q[1])]
        return t

    axes = fb.BufferT()
    axes.data = list(np.array([2, 3], "<i4").tobytes())
    sub = fb.SubGraphT()
    sub.tensors = [tensor("map", shape, fb.TensorType.INT8, q=in_q), tensor("axes", [2], fb.TensorType.INT32, 1),
                   tensor("mean", shape[:2], fb.TensorType.INT8, q=out_q)]
    sub.inputs, sub.outputs = [0], [2]
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1], [2]
    op.builtinOptionsType, op.builtinOptions = fb.BuiltinOptions.ReducerOptions, fb.ReducerOptionsT()
    sub.operators = [op]
    code = fb.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = fb.BuiltinOperator.MEAN, fb.BuiltinOperator.MEAN, 2
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, [code], [sub], [fb.BufferT(), axes]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


@pytest.mark.parametrize("hw, out_q", [((56, 15), (float(np.float32(1 / 255)), -128)),  # the bam head's MEAN
                                       ((42, 16), (0.005077033303678036, -127)),
                                       ((27, 27), (0.005828569643199444, -128)),
                                       ((8, 8), (0.125, -13))])  # exact scale, odd zero-point: the tie rule
def test_packed_mean_equals_xnnpack_mean_on_every_count(hw, out_q):
    """Channel c of the map holds c ones, so every count 0..n is requantized once. XNNPACK sums the raw
    codes (count - 128 n), scales that in float32 and adds the zero-points back as a float bias, so
    means near a .5 land on exact ties (the bam head: 15 of its 841 counts): only the same float32
    steps, rounded half to even, give the same codes."""
    from ai_edge_litert.interpreter import Interpreter

    n = hw[0] * hw[1]
    zp = MAP_QPARAMS[1]
    bits = (np.arange(n)[None, :] < np.arange(n + 1)[:, None])  # (n + 1 channels, n positions)
    codes = (bits.astype(np.int16) + zp).astype(np.int8).reshape(1, n + 1, *hw)
    interp = Interpreter(model_content=_mean_tflite(codes.shape, MAP_QPARAMS, out_q), num_threads=1)
    interp.allocate_tensors()
    assert "DELEGATE" in {op["op_name"] for op in interp._get_ops_details()}  # XNNPACK runs the MEAN
    interp.set_tensor(interp.get_input_details()[0]["index"], codes)
    interp.invoke()
    got = interp.get_tensor(interp.get_output_details()[0]["index"]).reshape(-1).astype(np.int64)
    np.testing.assert_array_equal(requantize_mean(np.arange(n + 1), n, MAP_QPARAMS, out_q), got)
