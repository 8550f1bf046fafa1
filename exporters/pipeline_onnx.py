"""A pipeline ONNX for apps: int16 PCM in, int16 PCM out, one chunk per run.

The exported QDQ file takes and returns int8/uint8 codes, and the runtimes
do the rest in numpy: scale the PCM, apply the level gain, split it (FQSE),
quantize; dequantize, combine (FQSE), undo the gain, scale back. An app that only has onnxruntime can instead
run this file, which holds that arithmetic as plain ONNX ops around the
unchanged core graph: Cast, Mul, Floor, Clip, Sub, Concat, QuantizeLinear
before; DequantizeLinear, Mul, Add, Round, Clip, Cast after. The input is
one chunk of ``chunk_samples`` int16 samples ``[1, T]``; the output is
``[sources, T]`` int16. Longer audio is cut into chunks by the app (or by
``runtimes``, which runs this file too).

A variant takes the bytes of a WAV file instead (``build_wav_pipeline``):
onnxruntime-extensions' AudioDecoder in front (the app then needs that
package too), mono mix-down and down-sampling to the model's rate included.

Each step mirrors ``compressor/fqse/io_codec.py`` and ``TensorSpec`` op for
op (multiply by 1/scale, round half to even), so the pipeline gives the
same int16 samples as the runtimes on the core file; ``write_pipeline``
checks that on the verification audio before it writes anything.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compressor.errors import ExportError, ParityError
from compressor.fileio import atomic_path
from compressor.stages.level import run_with_gain
from exporters.io_processing import decode, encode
from exporters.metadata import METADATA_KEY, DeployMetadata, TensorSpec
from exporters.sessions import ort_session_options

PCM_IN, PCM_OUT, WAV_IN = "pcm", "pcm_out", "wav"
EXTENSIONS_DOMAIN = "ai.onnx.contrib"  # onnxruntime-extensions' custom ops
PCM_SCALE = 32768.0
_P = "pipeline_"  # prefix of every name this module adds to the graph


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []
        self._count = 0

    def const(self, value: float | Sequence[int], dtype=np.float32) -> str:
        name = f"{_P}c{len(self.constants)}"
        self.constants.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, domain: str | None = None,
           **attrs) -> str:
        self._count += 1
        output = output or f"{_P}{op_type.lower()}{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=f"{_P}{op_type}{self._count}",
                                           domain=domain, **attrs))
        return output

    def quantize(self, x: str, spec: TensorSpec, output: str) -> str:
        """``TensorSpec.quantize``: rint(x * (1/s)) + zp, saturated (QuantizeLinear with scale 1)."""
        scaled = self.op("Mul", [x, self.const(np.float32(1.0) / np.float32(spec.scale))])
        zero = self.const(spec.zero_point, np.dtype(spec.dtype).type)
        shaped = self.op("Reshape", [scaled, self.const(spec.shape, np.int64)])
        return self.op("QuantizeLinear", [shaped, self.const(1.0), zero], output)

    def dequantize(self, codes: str, spec: TensorSpec) -> str:
        zero = self.const(spec.zero_point, np.dtype(spec.dtype).type)
        return self.op("DequantizeLinear", [codes, self.const(spec.scale), zero])

    def floor_quantize(self, x: str) -> str:
        """io_codec._floor_quantize: clip(floor(x * 128), -128, 127) (codes, as floats)."""
        from compressor.fqse.io_codec import SPLIT_SCALE

        floored = self.op("Floor", [self.op("Mul", [x, self.const(1.0 / SPLIT_SCALE)])])
        return self.op("Clip", [floored, self.const(-128.0), self.const(127.0)])


def _split(b: _Builder, x: str) -> str:
    """io_codec.split: (1, T) samples -> (1, 2, T): the high and low byte codes times 1/128."""
    from compressor.fqse.io_codec import SPLIT_SCALE

    hi = b.floor_quantize(x)
    eps = b.op("Sub", [x, b.op("Mul", [hi, b.const(SPLIT_SCALE)])])
    lo = b.floor_quantize(b.op("Sub", [b.op("Mul", [eps, b.const(2.0 / SPLIT_SCALE)]), b.const(1.0)]))
    axis = b.const([-2], np.int64)
    both = b.op("Concat", [b.op("Unsqueeze", [hi, axis]), b.op("Unsqueeze", [lo, axis])], axis=-2)
    return b.op("Mul", [both, b.const(SPLIT_SCALE)])


def build_pipeline(core: onnx.ModelProto, metadata: DeployMetadata) -> onnx.ModelProto:
    """``core`` (an exported QDQ file) wrapped into int16 PCM in / int16 PCM out."""
    b = _Builder()
    x = b.op("Mul", [b.op("Cast", [PCM_IN], to=TensorProto.FLOAT), b.const(1.0 / PCM_SCALE)])
    pcm_in = helper.make_tensor_value_info(PCM_IN, TensorProto.INT16, [1, metadata.chunk_samples])
    return _wrap(core, metadata, b, x, pcm_in, None)


def build_wav_pipeline(core: onnx.ModelProto, metadata: DeployMetadata) -> onnx.ModelProto:
    """``core`` wrapped into encoded WAV bytes in / int16 PCM out, through onnxruntime-extensions' AudioDecoder.

    The input is the bytes of one WAV file (``[1, bytes]`` uint8) of at most
    one chunk; the decoder mixes it to mono and down-samples it to the
    model's rate (it cannot up-sample: a WAV below the model's rate is an
    error at run time). The samples are rounded to the int16 grid (exact
    for 16-bit WAV at the model's rate), zero-padded to the chunk, and from
    there the graph is the int16 pipeline's; the output is cut back to the
    WAV's length, ``[sources, min(length, chunk)]``.
    """
    b = _Builder()
    chunk = metadata.chunk_samples
    decoded = b.op("AudioDecoder", [WAV_IN], domain=EXTENSIONS_DOMAIN, downsampling_rate=int(metadata.sample_rate),
                   stereo_to_mono=1)
    mono = b.op("Reshape", [decoded, b.const([1, -1], np.int64)])
    length = b.op("Gather", [b.op("Shape", [mono]), b.const([1], np.int64)], axis=0)
    short = b.op("Max", [b.op("Sub", [b.const([chunk], np.int64), length]), b.const([0], np.int64)])
    pads = b.op("Concat", [b.const([0, 0, 0], np.int64), short], axis=0)
    padded = b.op("Pad", [mono, pads])
    window = b.op("Slice", [padded, b.const([0], np.int64), b.const([chunk], np.int64), b.const([1], np.int64)])
    steps = b.op("Clip", [b.op("Round", [b.op("Mul", [window, b.const(PCM_SCALE)])]), b.const(-32768.0),
                          b.const(32767.0)])
    x = b.op("Mul", [steps, b.const(1.0 / PCM_SCALE)])
    kept = b.op("Min", [length, b.const([chunk], np.int64)])
    wav_in = helper.make_tensor_value_info(WAV_IN, TensorProto.UINT8, [1, None])
    return _wrap(core, metadata, b, x, wav_in, kept)


def _level_gain(b: _Builder, x: str, stage) -> str | None:  # noqa: ANN001 - a LevelStage or None
    """The level stage's gain for the chunk ``x`` as ONNX ops, float32 as compressor/stages/level.py computes it."""
    if stage is None:
        return None
    lo = stage.target_peak / 10.0 ** (stage.max_gain_db / 20.0)
    hi = stage.target_peak / 10.0 ** (stage.min_gain_db / 20.0)
    peak = b.op("ReduceMax", [b.op("Abs", [x])], keepdims=1)
    return b.op("Div", [b.const(stage.target_peak), b.op("Clip", [peak, b.const(lo), b.const(hi)])])


def _wrap(core: onnx.ModelProto, metadata: DeployMetadata, b: _Builder, x: str, graph_input: onnx.ValueInfoProto,
          kept: str | None) -> onnx.ModelProto:
    """The core graph between ``b``'s input nodes (float samples ``x``, (1, chunk)) and the int16 output."""
    if metadata.target != "onnx":
        raise ExportError("a pipeline is built around an exported .onnx file")
    if len(metadata.inputs) != 1 or (metadata.combiner and len(metadata.outputs) != 2):
        raise ExportError(f"pipeline: unexpected boundary ({len(metadata.inputs)} inputs, "
                          f"{len(metadata.outputs)} outputs) for this model's pre/post-processing")
    spec_in = metadata.inputs[0]
    if not metadata.splitter and spec_in.layout != "batch,time":
        raise ExportError(f"pipeline: the model's input is {spec_in.layout}, not mono audio")
    model = copy.deepcopy(core)
    graph = model.graph
    gain = _level_gain(b, x, metadata.level_stage())
    if gain is not None:
        x = b.op("Mul", [x, gain])
    if metadata.splitter:
        x = _split(b, x)
    b.quantize(x, spec_in, graph.input[0].name)
    pre = list(b.nodes)

    b.nodes = []
    values = [b.dequantize(o.name, spec) for o, spec in zip(graph.output, metadata.outputs)]
    if metadata.combiner:
        y = b.op("Add", [values[0], b.op("Mul", [values[1], b.const(1.0 / metadata.combiner["gain"])])])
    else:
        y = values[0]
    y = b.op("Reshape", [y, b.const([metadata.num_sources, metadata.chunk_samples], np.int64)])
    if gain is not None:
        y = b.op("Div", [y, gain])
    if kept is not None:
        y = b.op("Slice", [y, b.const([0], np.int64), kept, b.const([1], np.int64)])
    pcm = b.op("Clip", [b.op("Round", [b.op("Mul", [y, b.const(PCM_SCALE)])]), b.const(-32768.0), b.const(32767.0)])
    b.op("Cast", [pcm], PCM_OUT, to=TensorProto.INT16)

    nodes = pre + list(graph.node) + b.nodes
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(b.constants)
    del graph.input[:]
    graph.input.append(graph_input)
    out_shape = [metadata.num_sources, metadata.chunk_samples if kept is None else None]
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(PCM_OUT, TensorProto.INT16, out_shape))
    in_type = graph_input.type.tensor_type
    described = DeployMetadata.from_dict({**metadata.to_dict(), "model": {
        **metadata.model, "pipeline": {
            "input": {"name": graph_input.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(in_type.elem_type).name,
                      "shape": [d.dim_value or None for d in in_type.shape.dim]},
            "output": {"name": PCM_OUT, "dtype": "int16", "shape": out_shape},
            "stages_inside": True}}})
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = described.to_json()
    if any(node.domain == EXTENSIONS_DOMAIN for node in pre):
        model.opset_import.append(helper.make_opsetid(EXTENSIONS_DOMAIN, 1))
        # onnxruntime-extensions 0.15 loads custom-op graphs only up to IR version 10
        model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    return model


def wav_session(model: onnx.ModelProto | str | Path):
    """An onnxruntime session for a WAV-bytes pipeline (registers onnxruntime-extensions' custom ops)."""
    import onnxruntime as ort

    try:
        from onnxruntime_extensions import get_library_path
    except ImportError as exc:
        raise ExportError("the WAV-bytes pipeline needs onnxruntime-extensions (pip install "
                          "onnxruntime-extensions)") from exc
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    options, _ = ort_session_options(proto, name="the WAV pipeline")
    options.register_custom_ops_library(get_library_path())
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def wav_bytes(pcm16: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono int16 samples as the bytes of a 16-bit PCM WAV file, ``[1, bytes]`` uint8 (the WAV pipeline's input)."""
    import io
    import wave

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(np.asarray(pcm16, "<i2").tobytes())
    return np.frombuffer(buffer.getvalue(), np.uint8)[None]


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Float samples -> the int16 PCM the pipeline takes (as a WAV writer rounds and clips)."""
    return np.clip(np.rint(np.asarray(audio, np.float64) * PCM_SCALE), -32768, 32767).astype(np.int16)


def write_pipeline(core_path: str | Path, out: str | Path, chunks: Sequence[np.ndarray] | None = None,
                   tolerance: int = 1, seed: int = 0, wav: bool = False) -> Path:
    """Build the pipeline around the exported ``core_path``, check it against the core file, write it atomically.

    ``chunks``: audio (chunk_samples each) on which the pipeline's int16 output
    must equal the core file's output (run by ``exporters.sessions``, pre/post
    in numpy) within ``tolerance`` int16 steps; speech-level noise when None.
    ``wav``: the WAV-bytes variant (``build_wav_pipeline``); it is also checked
    on a clip shorter than a chunk.
    """
    import onnxruntime as ort

    from exporters.sessions import open_session

    core = open_session(core_path)
    if core.metadata.target != "onnx":
        raise ExportError(f"{core_path}: a pipeline is built around an exported .onnx file, not {core.metadata.target}")
    meta = core.metadata
    if meta.spectral_stage() is not None:
        raise ExportError(f"{core_path}: a spectral model; its STFT/iSTFT stage runs in the runtimes "
                          "(compress run, runtimes.load), a --pipeline ONNX around it is not built yet")
    if wav:
        model = build_wav_pipeline(onnx.load(str(core_path)), meta)
        session = wav_session(model)
    else:
        model = build_pipeline(onnx.load(str(core_path)), meta)
        options, _ = ort_session_options(model, name=str(core_path))
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    if not chunks:
        rng = np.random.default_rng(seed)
        chunks = [(rng.standard_normal(meta.chunk_samples) * 0.1).astype(np.float32) for _ in range(2)]
    clips = [np.asarray(c, np.float32).reshape(-1)[: meta.chunk_samples] for c in chunks]
    if wav:  # a clip shorter than the chunk: zero-padded in, cut back out
        clips.append(clips[0][: meta.chunk_samples * 2 // 3])
    worst = 0
    for clip in clips:
        pcm = to_pcm16(clip)
        feed = {WAV_IN: wav_bytes(pcm, meta.sample_rate)} if wav else {PCM_IN: pcm.reshape(1, -1)}
        got = session.run(None, feed)[0]
        audio = np.zeros(meta.chunk_samples, np.float32)
        audio[: pcm.size] = pcm.astype(np.float32) / np.float32(PCM_SCALE)
        boundary = lambda a: decode(meta, core.run_codes(encode(meta, a)))  # noqa: E731
        want = to_pcm16(run_with_gain(meta.level_stage(), boundary, audio))[..., : pcm.size]
        if got.shape != want.shape:
            raise ParityError(f"the pipeline around {core_path} returns {got.shape} samples for {want.shape}; "
                              "nothing was written")
        worst = max(worst, int(np.abs(got.astype(np.int32) - want.astype(np.int32)).max()))
    if worst > tolerance:
        raise ParityError(f"the pipeline around {core_path} differs from the core file by {worst} int16 steps "
                          f"(tolerance {tolerance}); nothing was written")
    with atomic_path(out) as tmp:
        onnx.save(model, str(tmp))
    return Path(out)


__all__ = ["PCM_IN", "PCM_OUT", "WAV_IN", "build_pipeline", "build_wav_pipeline", "to_pcm16", "wav_bytes",
           "wav_session", "write_pipeline"]
