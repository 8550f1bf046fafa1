"""Whole-model export (Conv-TasNet), the CLI, and what export refuses."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import runtimes
from compressor.checkpoint import ArchSpec, save_float, save_quantized
from compressor.cli.main import main
from compressor.errors import ExportError, ParityError, RuntimeLoadError
from compressor.quant import calibrate, quantize
from exporters import ExportConfig, export
from tests.conftest import TFLITE_END_TO_END_LSB, TFLITE_MIN_SNR_DB, TINY_TASNET

CHUNK_SECONDS = 0.1  # 1600 samples at 16 kHz


@pytest.fixture(scope="module")
def tiny_qmodel():
    from compressor.zoo import build_model

    torch.manual_seed(0)
    model = build_model("conv_tasnet", TINY_TASNET)
    x = torch.randn(2, 1600) * 0.1
    qmodel = quantize(model, x)
    calibrate(qmodel, [torch.randn(2, 1600) * 0.1 for _ in range(3)])
    return qmodel


def _audio(n=3, seconds=CHUNK_SECONDS, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(int(16000 * seconds)) * 0.1).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def exported(tiny_qmodel, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    files = {}
    for target in ("onnx", "tflite"):
        cfg = ExportConfig(target=target, chunk_seconds=CHUNK_SECONDS)
        files[target] = export(tiny_qmodel, target, folder / f"tasnet.{target}", config=cfg, calibration=_audio())
    return files


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_conv_tasnet_exports_integer_only_and_matches_simulation(exported, target):
    result = exported[target]
    assert result.ops["float_op_count"] == 0
    # every op within 1 LSB of the simulation on its own inputs; end to end those differences may add up to 2 LSB
    # (this random-weight model's statistics grids are wide: calibrate() ranges a gLN's rsqrt to 1.5x its extremes)
    verification = result.verification
    bound = 2 if target == "onnx" else TFLITE_END_TO_END_LSB
    assert verification.op_max_lsb <= 1 and verification.max_lsb <= bound and verification.snr_db >= 25
    assert result.rewrites.get("conv_transpose1d -> polyphase conv1d + reshape") == 1
    # Conv-TasNet's PReLUs have one slope: one LEAKY_RELU / LeakyRelu op each, not GREATER + SELECT
    assert result.rewrites.get("prelu (one slope) -> leaky_relu", 0) >= 1
    assert "prelu -> where(x > 0, x, a * x)" not in result.rewrites
    meta = result.metadata
    assert meta.sample_rate == 16000 and meta.chunk_samples == 1600 and meta.num_sources == 1


def test_xnnpack_runs_every_conv_tasnet_op_but_the_norm_statistics(exported):
    """LEAKY_RELU keeps PReLU inside XNNPACK; only gLN's statistics stay on the builtin kernels: its mean and
    variance sums (int8 matmuls of the centred signal with a broadcast column of ones and with itself: XNNPACK's
    MEAN saturates on long reductions on AVX2), its per-utterance scalar (floor, +eps, rsqrt) and the input's
    constant-value pad."""
    from exporters.tflite_export import xnnpack_coverage

    coverage = xnnpack_coverage(exported["tflite"].path)
    assert set(coverage["undelegated"]) <= {"BATCH_MATMUL", "FULLY_CONNECTED", "BROADCAST_TO", "MAXIMUM", "ADD",
                                            "RSQRT", "PADV2"}, coverage
    assert "MEAN" not in coverage["undelegated"]
    norms = 1 + 2 * TINY_TASNET["R"] * TINY_TASNET["X"]  # the input gLN and two per conv block
    assert coverage["partitions"] <= 1 + 4 * norms, coverage


def test_tflite_file_stores_repeated_vectors_and_tables_once(exported):
    """Zero-point and shape vectors, qparams and op options are written once and shared; same computation."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    data = exported["tflite"].path.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    plain = bytes(builder.Output())  # the same model with every vector and table written per use
    tensors = model.subgraphs[0].tensors
    zero_points = sum(8 * len(t.quantization.zeroPoint) for t in tensors
                      if t.quantization is not None and t.quantization.zeroPoint is not None)
    assert len(data) < len(plain) - 0.9 * zero_points
    # activations point at the empty sentinel buffer 0; no other buffer is empty but the metadata's
    metadata_buffers = {m.buffer for m in model.metadata}
    for i, buffer in enumerate(model.buffers):
        assert i == 0 or i in metadata_buffers or (buffer.data is not None and len(buffer.data) > 0)
    outputs = []
    for content in (data, plain):
        interp = Interpreter(model_content=content,
                             experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        interp.allocate_tensors()
        detail = interp.get_input_details()[0]
        interp.set_tensor(detail["index"], np.random.default_rng(0).integers(-128, 128, detail["shape"], dtype=np.int8))
        interp.invoke()
        outputs.append(interp.get_tensor(interp.get_output_details()[0]["index"]))
    assert np.array_equal(*outputs)


def test_channels_last_pass_removes_layout_transposes_and_computes_the_same(exported, tiny_qmodel):
    """The converter's TRANSPOSE + RESHAPE pairs around every conv go (its NHWC tensors are used as they
    are); every output code stays the same on XNNPACK and on the builtin kernels."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from exporters.lowering import lower
    from exporters.tflite_export import convert, finish

    raw = convert(lower(tiny_qmodel, int8_io=False, input_shape=[1, 1600], target="tflite"), torch.zeros(1, 1600))
    metadata = exported["tflite"].metadata
    files = {flag: finish(raw, metadata, channels_last=flag) for flag in (False, True)}

    def op_counts(content):
        """Op counts; a TRANSPOSE of a long mean's broadcast column of ones (into FULLY_CONNECTED weights, any
        layout) counts as "TRANSPOSE of ones"."""
        model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
        names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        graph = model.subgraphs[0]
        made_by = {int(t): names[model.operatorCodes[o.opcodeIndex].builtinCode] for o in graph.operators
                   for t in o.outputs}
        ops = [names[model.operatorCodes[o.opcodeIndex].builtinCode] for o in graph.operators]
        ops = ["TRANSPOSE of ones" if n == "TRANSPOSE" and made_by.get(int(o.inputs[0])) == "BROADCAST_TO" else n
               for n, o in zip(ops, graph.operators)]
        return {name: ops.count(name) for name in set(ops)}

    before, after = op_counts(files[False]), op_counts(files[True])
    convs = before["CONV_2D"] + before.get("DEPTHWISE_CONV_2D", 0)
    # left: the encoder output (it meets the 4-D mask product) and the decoder's polyphase interleave
    assert before["TRANSPOSE"] >= 2 * convs - 2 and after.get("TRANSPOSE", 0) <= before["TRANSPOSE"] // 3, (before, after)
    # a gLN's sum of squares reads its signal as a row and a column; its long mean's sum with ones flattens it
    # and makes its [N, 1] sum [N, 1, 1]
    flattenings = 2 * (before.get("BATCH_MATMUL", 0) + before.get("FULLY_CONNECTED", 0))
    assert after["RESHAPE"] - flattenings <= (before["RESHAPE"] - flattenings) // 2, (before, after)
    assert sum(after.values()) < sum(before.values()) - 2 * convs
    assert len(files[True]) < len(files[False])
    codes = np.random.default_rng(1).integers(-100, 100, (4, 1, 1600), dtype=np.int8)
    for resolver in (OpResolverType.AUTO, OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES):
        outputs = []
        for content in (files[False], files[True]):
            interp = Interpreter(model_content=content, experimental_op_resolver_type=resolver)
            interp.allocate_tensors()
            detail = interp.get_input_details()[0]
            got = []
            for c in codes:
                interp.set_tensor(detail["index"], c.reshape(detail["shape"]))
                interp.invoke()
                got.append(interp.get_tensor(interp.get_output_details()[0]["index"]).copy())
            outputs.append(np.stack(got))
        if resolver == OpResolverType.AUTO:  # XNNPACK picks kernels per layout; on some CPUs they round apart
            assert np.abs(outputs[0].astype(np.int32) - outputs[1]).max() <= TFLITE_END_TO_END_LSB, resolver
        else:
            assert np.array_equal(*outputs), resolver


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_metadata_travels_inside_the_file(exported, target):
    rt = runtimes.load(exported[target].path)
    assert rt.metadata == exported[target].metadata


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_runtime_processes_long_audio_like_the_simulation(exported, tiny_qmodel, tmp_path, target):
    """Any length, chunked with cross-fades: the file's output follows the simulation's (same chunking)."""
    ckpt = tmp_path / "q.pt"
    save_quantized(ckpt, tiny_qmodel, ArchSpec("zoo", "conv_tasnet", TINY_TASNET), {"name": "test"})
    sim = runtimes.load(ckpt, chunk_seconds=CHUNK_SECONDS)
    deployed = runtimes.load(exported[target].path)
    audio = _audio(1, seconds=0.37, seed=3)[0]
    a, b = sim.process(audio), deployed.process(audio)
    assert a.shape == b.shape == audio.shape
    lsb = exported[target].metadata.outputs[0].scale
    # each op is within 1 LSB (checked at export); through this small net's ~15 requantizations a
    # 1-LSB rounding difference may grow to 2 at the output (LiteRT: more on some CPUs, conftest)
    assert np.max(np.abs(a - b)) <= ((2 if target == "onnx" else TFLITE_END_TO_END_LSB) + 0.0001) * lsb
    # repeated runs of the same file are identical
    assert np.array_equal(b, deployed.process(audio))
    # int16 input gives the same as its float equivalent
    pcm16 = np.round(audio * 32767).astype(np.int16)
    assert np.array_equal(deployed.process(pcm16), deployed.process(pcm16.astype(np.float32) / 32768))


def test_parity_failure_writes_nothing(tiny_qmodel, tmp_path):
    out = tmp_path / "never.onnx"
    cfg = ExportConfig(target="onnx", chunk_seconds=CHUNK_SECONDS, tolerance_lsb=-1)  # nothing can pass
    with pytest.raises(ParityError, match="nothing was written") as failure:
        export(tiny_qmodel, "onnx", out, config=cfg, calibration=_audio())
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # the report names layers and ops, not only tensors
    assert "Ops off by more than the tolerance" in str(failure.value) and "conv1d" in str(failure.value)


def test_end_to_end_drift_below_the_snr_floor_writes_nothing(tiny_qmodel, tmp_path, monkeypatch):
    """Every op matches, yet the deploying runtime's output drifts (as a broken delegate would): refused."""
    import exporters.api as api
    from exporters.verify import EndToEnd

    out = tmp_path / "never.onnx"
    monkeypatch.setattr(api, "end_to_end", lambda *a: EndToEnd(max_lsb=40, mean_lsb=6.0, snr_db=12.0))
    cfg = ExportConfig(target="onnx", chunk_seconds=CHUNK_SECONDS)
    with pytest.raises(ParityError, match="every op of the exported onnx file matches") as failure:
        export(tiny_qmodel, "onnx", out, config=cfg, calibration=_audio())
    assert not out.exists() and "dB SNR" in str(failure.value)


def test_export_refuses_a_float_model(tmp_path):
    from compressor.zoo import build_model

    with pytest.raises(ExportError, match="quantized model"):
        export(build_model("conv_tasnet", TINY_TASNET), "onnx", tmp_path / "x.onnx")


@pytest.mark.parametrize("cut", [0.5, 0.1])
def test_truncated_files_are_clear_errors(exported, tmp_path, cut):
    for target, result in exported.items():
        data = result.path.read_bytes()
        bad = tmp_path / f"cut.{target}"
        bad.write_bytes(data[: int(len(data) * cut)])
        with pytest.raises(RuntimeLoadError, match="cut"):
            runtimes.load(bad)


def test_cli_export_float_checkpoint_and_run(tmp_path):
    """compress export on a float model: PTQ on the demo data, verified file, then compress run."""
    from compressor.data.audio import read_audio, write_audio
    from compressor.zoo import build_model

    torch.manual_seed(0)
    ckpt = tmp_path / "float.pt"
    save_float(ckpt, build_model("conv_tasnet", TINY_TASNET), ArchSpec("zoo", "conv_tasnet", TINY_TASNET))
    out = tmp_path / "model.tflite"
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(ckpt), "--target", "tflite", "--out", str(out),
                                  "--chunk-seconds", "0.25", "--report", str(tmp_path / "report.json"),
                                  "--min-snr-db", str(TFLITE_MIN_SNR_DB)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "float compute ops: 0" in result.output
    wav_in, wav_out = tmp_path / "in.wav", tmp_path / "out.wav"
    write_audio(wav_in, _audio(1, seconds=0.6)[0], 16000)
    result = runner.invoke(main, ["run", str(out), str(wav_in), str(wav_out)])
    assert result.exit_code == 0, result.output
    assert read_audio(wav_out).shape == read_audio(wav_in).shape


def test_cli_export_errors(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = runner.invoke(main, ["export", str(bad), "--target", "onnx"])
    assert result.exit_code == 2 and "error:" in result.output and "bad.pt" in result.output
    assert not (tmp_path / "bad.onnx").exists()
    for out, message in [(bad / "m.onnx", "not a directory"), (tmp_path / "dir.onnx", "is a directory"),
                         (__import__("pathlib").Path("/proc/m.onnx"), "not writable")]:
        if message == "is a directory":
            out.mkdir()
        result = runner.invoke(main, ["export", str(bad), "--target", "onnx", "--out", str(out)])
        assert result.exit_code == 2 and message in result.output, result.output


def test_cli_run_refuses_wrong_rate_with_strict_audio(exported, tmp_path):
    from compressor.data.audio import write_audio

    wav = tmp_path / "8k.wav"
    write_audio(wav, _audio(1)[0], 8000)
    result = CliRunner().invoke(main, ["run", str(exported["tflite"].path), str(wav), str(tmp_path / "o.wav"),
                                       "--strict-audio"])
    assert result.exit_code == 2 and "8000" in result.output
    assert not (tmp_path / "o.wav").exists()
    empty = tmp_path / "empty.wav"
    import soundfile as sf

    sf.write(empty, np.zeros(0, np.float32), 16000)
    result = CliRunner().invoke(main, ["run", str(exported["tflite"].path), str(empty), str(tmp_path / "o.wav")])
    assert result.exit_code == 2 and "empty" in result.output


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_every_op_of_the_file_matches_the_simulation_on_its_own_inputs(exported, tiny_qmodel, target):
    """Teacher forcing: each int8 tensor of the file vs the lowered graph fed the file's own inputs."""
    from exporters import lower
    from exporters.api import _drift, _file_tensors
    from exporters.verify import describe_tensors, lowered_tensors, op_parity

    lowered = lower(tiny_qmodel, int8_io=(target == "onnx"), input_shape=[1, 1600])
    cfg = ExportConfig(target=target, chunk_seconds=CHUNK_SECONDS)
    session = runtimes.load(exported[target].path)
    spec = session.metadata.inputs[0]
    shift = 128 if spec.dtype == "uint8" else 0
    codes = [spec.quantize(a.reshape(spec.shape)) for a in _audio(2)]
    rows = op_parity(lowered, _file_tensors(lowered, exported[target].path, cfg, codes[0], shift), codes,
                     float_input=(target == "tflite"), zero_shift=shift)
    int8_codes = (codes[0].astype(np.int16) - shift).astype(np.int8)
    expected = lowered_tensors(lowered, int8_codes, float_input=(target == "tflite"))
    assert len(rows) == len(expected), set(expected) - set(rows)  # every int8 tensor of the graph is in the file
    assert set(rows) <= set(describe_tensors(lowered))
    assert all(r["max_lsb"] <= 1 for r in rows.values()), {k: r for k, r in rows.items() if r["max_lsb"] > 1}
    # the accumulated (not teacher-forced) report reads the same tensors; rounding-level drift only
    report = _drift(lowered, exported[target].path, cfg, session, _audio(1)[0])
    assert all(row["max_lsb"] <= 2 for row in report), [r for r in report if r["max_lsb"] > 2]


def test_op_parity_finds_an_op_that_computes_differently(exported, tiny_qmodel):
    """A file whose one op is off (here: one tensor's codes shifted) is caught at that op, not downstream."""
    from exporters import lower
    from exporters.api import _file_tensors
    from exporters.verify import op_parity

    lowered = lower(tiny_qmodel, int8_io=True, input_shape=[1, 1600])
    cfg = ExportConfig(target="onnx", chunk_seconds=CHUNK_SECONDS)
    spec = runtimes.load(exported["onnx"].path).metadata.inputs[0]
    codes = [spec.quantize(_audio(1)[0].reshape(spec.shape))]
    read = _file_tensors(lowered, exported["onnx"].path, cfg, codes[0], 128)
    victim = sorted(read(codes[0]))[len(read(codes[0])) // 2]

    def tampered(c):
        found = read(c)
        found[victim] = [np.clip(found[victim][0].astype(np.int32) + 5, 0, 255).astype(np.uint8)]
        return found

    rows = op_parity(lowered, tampered, codes, float_input=False, zero_shift=128)
    off = [k for k, r in rows.items() if r["max_lsb"] > 1]
    assert victim in off and rows[victim]["max_lsb"] >= 4


def test_drift_report_names_the_first_differing_tensor():
    from exporters.verify import drift_report

    expected = {"a": np.array([1, 2, 3], np.int8), "b": np.array([5, 5], np.int8), "c": np.array([0], np.int8)}
    got = {"a": np.array([1, 2, 3], np.int8), "b": np.array([5, 9], np.int8), "c": np.array([3], np.int8)}
    rows = drift_report(expected, got)
    assert [r["tensor"] for r in rows] == ["b", "c"] and rows[0]["max_lsb"] == 4


def test_fqse_model_exports_and_runs_with_splitter_and_combiner(tmp_path):
    """FQSE: two int8 input channels, two int8 outputs; the runtimes split before and combine after."""
    from compressor.data import open_dataset
    from compressor.recipes import RecipeContext, get_recipe
    from compressor.zoo import build_model
    from exporters.metadata import io_processing, stages_of

    torch.manual_seed(0)
    recipe = get_recipe("fqse").from_options({"steps": 2, "batch_size": 2, "calib_batches": 2,
                                              "checkpoint_every": 2, "validate_every": 2})
    train = open_dataset("demo:train", segment_seconds=0.25, seed=0)
    qmodel = recipe.run(RecipeContext(build_model("conv_tasnet", TINY_TASNET), train, None, tmp_path / "run",
                                      progress=False))
    ckpt = save_quantized(tmp_path / "fqse.pt", qmodel, recipe.saved_arch(None), recipe.describe())
    splitter, combiner = io_processing(recipe.describe())
    assert splitter and combiner
    sim = runtimes.load(ckpt, chunk_seconds=0.25)
    audio = _audio(1, seconds=0.6, seed=5)[0]
    expected = sim.process(audio)
    for target in ("onnx", "tflite"):
        cfg = ExportConfig(target=target, chunk_seconds=0.25, tolerance_lsb=1, min_snr_db=TFLITE_MIN_SNR_DB)
        result = export(qmodel, target, tmp_path / f"fqse.{target}", config=cfg, calibration=_audio(),
                        model_info={"splitter": splitter, "combiner": combiner,
                                    "stages": stages_of(recipe.describe())})
        meta = result.metadata
        assert result.ops["float_op_count"] == 0 and len(meta.outputs) == 2
        assert meta.inputs[0].layout == "batch,split,time" and meta.splitter == splitter
        rt = runtimes.load(result.path)
        # one chunk by hand: level gain -> split -> the file's two int8 inputs -> its two int8 outputs
        # -> combine -> gain undone
        from compressor.fqse.io_codec import combine, split

        chunk = audio[: meta.chunk_samples]
        gain = rt.level_stage.gain(chunk)
        codes = meta.inputs[0].quantize(split((chunk * gain)[None], np, axis=-2).reshape(meta.inputs[0].shape))
        y_o, eps = rt.run_codes(codes)
        manual = combine(meta.outputs[0].dequantize(y_o), meta.outputs[1].dequantize(eps), combiner["gain"])
        assert np.array_equal(rt.run_chunk(chunk), manual.reshape(1, -1) / gain)
        # any length: the deployed output follows the simulation's (the runtimes' requantization
        # differs by an LSB here and there, which a few layers amplify; see README)
        got = rt.process(audio)
        assert got.shape == audio.shape
        snr = 10 * np.log10(np.sum(expected ** 2) / np.sum((got - expected) ** 2))
        assert snr > 20, (target, snr)
        if target == "onnx":  # the same split/combine as plain ONNX ops around the file
            _check_pipeline(result.path, tmp_path / "fqse.pipeline.onnx", audio)


def _check_pipeline(core, out, audio):
    from exporters.pipeline_onnx import to_pcm16, write_pipeline

    write_pipeline(core, out, [audio])
    import onnx

    model = onnx.load(str(out))
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.INT16]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [onnx.TensorProto.INT16]
    pipeline, file = runtimes.load(out), runtimes.load(core)
    assert pipeline.pipeline and pipeline.metadata.model["pipeline"]["input"]["dtype"] == "int16"
    pcm = to_pcm16(audio)  # what an app has; float audio off the 16-bit grid is rounded here, floored by the splitter
    got, want = to_pcm16(pipeline.process(pcm)), to_pcm16(file.process(pcm))
    assert got.shape == want.shape and np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= 1


def test_pipeline_onnx_takes_and_returns_int16_pcm(exported, tmp_path):
    _check_pipeline(exported["onnx"].path, tmp_path / "tasnet.pipeline.onnx", _audio(1, seconds=0.37, seed=4)[0])


def test_wav_pipeline_takes_wav_bytes(exported, tmp_path):
    """The WAV-bytes variant computes what the int16 pipeline computes, for full and short clips and 48 kHz WAV."""
    from exporters.pipeline_onnx import to_pcm16, wav_bytes, wav_session, write_pipeline

    audio = _audio(1, seconds=CHUNK_SECONDS, seed=6)[0]
    pcm_file = write_pipeline(exported["onnx"].path, tmp_path / "t.pipeline.onnx", [audio])
    wav_file = write_pipeline(exported["onnx"].path, tmp_path / "t.wav.onnx", [audio], wav=True)
    pcm_session, session = wav_session(pcm_file), wav_session(wav_file)
    pcm = to_pcm16(audio)
    full = session.run(None, {"wav": wav_bytes(pcm, 16000)})[0]
    assert np.array_equal(full, pcm_session.run(None, {"pcm": pcm[None]})[0])
    short = session.run(None, {"wav": wav_bytes(pcm[:1000], 16000)})[0]
    padded = np.zeros_like(pcm)
    padded[:1000] = pcm[:1000]
    assert short.shape == (1, 1000)
    assert np.array_equal(short, pcm_session.run(None, {"pcm": padded[None]})[0][:, :1000])
    # a 48 kHz WAV is down-sampled inside the graph: a third of the samples come out
    high = session.run(None, {"wav": wav_bytes(np.repeat(pcm[:900], 3), 48000)})[0]
    assert high.shape == (1, 900)
    # runtimes.load runs it like any file: any length, chunked
    deployed, core = runtimes.load(wav_file), runtimes.load(exported["onnx"].path)
    long = _audio(1, seconds=0.37, seed=7)[0]
    got, want = to_pcm16(deployed.process(to_pcm16(long))), to_pcm16(core.process(to_pcm16(long)))
    assert got.shape == want.shape and np.abs(got.astype(np.int32) - want.astype(np.int32)).max() <= 1


def test_pipeline_refuses_a_tflite_core(exported, tmp_path):
    from exporters.pipeline_onnx import write_pipeline

    with pytest.raises(ExportError, match="onnx"):
        write_pipeline(exported["tflite"].path, tmp_path / "x.pipeline.onnx")
    assert not (tmp_path / "x.pipeline.onnx").exists()


def test_leaky_relu_grids_make_xnnpack_compute_prelu_exactly(tiny_qmodel, tmp_path):
    """After snap_leaky_relu_grids both LEAKY_RELU multipliers are odd integers over 256, and XNNPACK's
    8-fractional-bit arithmetic gives what exact rounding gives on every element (ties only at d = +-128)."""
    import copy

    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.interpreter import Interpreter

    from compressor.quant.leaky_grid import snap_leaky_relu_grids

    qmodel = copy.deepcopy(tiny_qmodel)
    before = qmodel(torch.from_numpy(_audio(1)[0]).unsqueeze(0))
    assert snap_leaky_relu_grids(qmodel) == 2 * TINY_TASNET["R"] * TINY_TASNET["X"] + 1  # two per block, the mask's
    after = qmodel(torch.from_numpy(_audio(1)[0]).unsqueeze(0))
    assert float((after - before).abs().max()) < 0.05 * float(before.abs().max())  # a small move, not a new model
    path = tmp_path / "snapped.tflite"
    export(qmodel, "tflite", path, config=ExportConfig(target="tflite", chunk_seconds=CHUNK_SECONDS),
           calibration=_audio())
    content = path.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    graph = model.subgraphs[0]
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    leaky = [o for o in graph.operators if names[model.operatorCodes[o.opcodeIndex].builtinCode] == "LEAKY_RELU"]
    assert leaky
    for op in leaky:
        s_in = float(graph.tensors[op.inputs[0]].quantization.scale[0])
        s_out = float(graph.tensors[op.outputs[0]].quantization.scale[0])
        for m in (256 * s_in / s_out, 256 * s_in / s_out * op.builtinOptions.alpha):
            assert abs(m - round(m)) < 1e-3 and round(m) % 2 == 1, m
    # keep every LEAKY_RELU tensor as a graph output, so that XNNPACK materializes it
    keep = {int(t) for o in leaky for t in (o.inputs[0], o.outputs[0])} | {int(t) for t in graph.outputs}
    graph.outputs = np.asarray(sorted(keep), dtype=np.int32)
    model.signatureDefs = []
    builder = flatbuffers.Builder(2 * len(content))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    interp = Interpreter(model_content=bytes(builder.Output()))  # XNNPACK, LiteRT's default
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    rng = np.random.default_rng(2)
    for _ in range(3):
        interp.set_tensor(detail["index"], rng.integers(-60, 60, detail["shape"], dtype=np.int8))
        interp.invoke()
        for op in leaky:
            qi, qo = graph.tensors[op.inputs[0]].quantization, graph.tensors[op.outputs[0]].quantization
            d = interp.get_tensor(int(op.inputs[0])).astype(np.int64) - int(qi.zeroPoint[0])
            real = np.where(d >= 0, d, d * float(op.builtinOptions.alpha)) * float(qi.scale[0]) / float(qo.scale[0])
            want = np.clip(np.round(real) + int(qo.zeroPoint[0]), -128, 127)
            got = interp.get_tensor(int(op.outputs[0])).astype(np.int64)
            assert np.array_equal(got[np.abs(d) != 128], want[np.abs(d) != 128])
