"""``export()``: a quantized model to a verified int8 file, written atomically."""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import onnx
import torch

from compressor.configs import JsonConfig
from compressor.errors import ConfigError, ExportError, ParityError
from compressor.fileio import atomic_path
from compressor.quant.model import QuantizedModel
from exporters import float_ops, onnx_export, tflite_export
from exporters.lowering import LoweredModel, lower
from compressor.stages.spectral import KIND as SPECTRAL_KIND
from exporters.metadata import DeployMetadata, TensorSpec
from exporters.sessions import open_session
from exporters.verify import (
    Verification, as_int8, closest, describe_tensors, drift_report, end_to_end, lowered_tensors, op_parity, qparams_of,
)

log = logging.getLogger(__name__)
TARGETS = ("onnx", "tflite")


@dataclass(frozen=True)
class ExportConfig(JsonConfig):
    """How ``export()`` writes and checks a file.

    chunk_seconds: the file's fixed input length (runtimes chunk longer audio);
    uint8_activations: ONNX only, activations as uint8 (ORT fuses Add/Mul only then);
    tolerance_lsb: largest allowed difference of any op to the simulation given the
        file's own inputs, in LSBs of that op's output scale (exporters/verify.py);
    min_snr_db: lowest allowed SNR of the file's output against the simulated
        output, end to end on the deploying runtime (rounding drift accumulates);
    allow_float: op names that may stay float (listed in the report), else export fails;
    keep_tensor_names: TFLite only; by default the names of intermediate tensors (module paths,
        ~15% of the file) are dropped, the input and output names kept.
    """

    target: str = "tflite"
    sample_rate: int = 16000
    chunk_seconds: float = 2.0
    uint8_activations: bool = True
    verify: bool = True
    tolerance_lsb: float = 1.0
    min_snr_db: float = 25.0
    verify_chunks: int = 4
    allow_float: tuple[str, ...] = ()
    threads: int | None = None
    keep_tensor_names: bool = False

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"unknown export target {self.target!r}; expected one of {TARGETS}")
        if self.chunk_seconds <= 0 or self.sample_rate <= 0:
            raise ConfigError("chunk_seconds and sample_rate must be positive")

    @property
    def chunk_samples(self) -> int:
        return int(round(self.chunk_seconds * self.sample_rate))


@dataclass
class ExportResult:
    path: Path
    metadata: DeployMetadata
    verification: Verification | None
    ops: dict[str, Any]
    rewrites: dict[str, int]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "target": self.metadata.target, "bytes": self.path.stat().st_size,
                "verification": self.verification.to_dict() if self.verification else None,
                "ops": self.ops, "rewrites": self.rewrites, "seconds": round(self.seconds, 1), **self.extra}


def _input_shape(qmodel: QuantizedModel, cfg: ExportConfig, stages: Sequence[dict[str, Any]] | None = None
                 ) -> list[int]:
    """The file's input shape for one chunk: (1, chunk) audio, or a spectral stage's frames of one chunk."""
    from compressor.stages.spectral import spectral_stage_of

    shape = list(qmodel.example_shapes[0])
    shape[0] = 1
    spectral = spectral_stage_of(list(stages or []))
    if spectral is not None:  # (batch, bins, frames[, 2]): the STFT of one chunk
        shape[2] = spectral.frames(cfg.chunk_samples)
    elif len(shape) == 2:  # (batch, time): audio in, the file takes one chunk
        shape[1] = cfg.chunk_samples
    multiple = getattr(qmodel, "length_multiple", 1)
    if multiple > 1 and shape[-1] % multiple:
        fits = max(multiple, shape[-1] // multiple * multiple)
        raise ConfigError(
            f"--chunk-seconds {cfg.chunk_seconds:g} gives {shape[-1]} samples, but this model runs only at multiples "
            f"of {multiple} samples (its code turns the input length into a Python int); use --chunk-seconds "
            f"{fits / cfg.sample_rate:g} ({fits} samples) or another multiple")
    return shape


def deploy_metadata(qmodel: QuantizedModel, lowered: LoweredModel, cfg: ExportConfig,
                    model_info: dict[str, Any]) -> DeployMetadata:
    """The metadata a file exported with ``cfg`` carries (also what the simulation runtime uses)."""
    input_shape = _input_shape(qmodel, cfg, model_info.get("stages"))
    with torch.no_grad():
        out = qmodel(torch.zeros(input_shape))
    output_shapes = [list(o.shape) for o in (out if isinstance(out, (tuple, list)) else [out])]
    model_info = dict(model_info)
    splitter, combiner = model_info.pop("splitter", None), model_info.pop("combiner", None)
    stages = list(model_info.pop("stages", None) or [])
    io_dtype = "uint8" if (cfg.target == "onnx" and cfg.uint8_activations) else "int8"
    shift = 128 if io_dtype == "uint8" else 0
    p_in = lowered.inputs[0]
    spectral = any(isinstance(s, dict) and s.get("kind") == SPECTRAL_KIND for s in stages)
    if splitter:
        in_layout = "batch,split,time"
    elif spectral:
        in_layout = "batch,bins,frames" + (",complex" if len(input_shape) == 4 else "")
    else:
        in_layout = "batch,time" if len(input_shape) == 2 else "as traced"
    sources = output_shapes[0][1] if len(output_shapes[0]) == 3 and not spectral else 1

    def out_layout(shape: list[int]) -> str:
        if spectral:
            return "batch,bins,frames" + (",complex" if len(shape) == 4 else "")
        return "batch,sources,time" if len(shape) == 3 else "as traced"

    def out_spec(k: int, p: Any, shape: list[int]) -> TensorSpec:
        if p.dtype == torch.int16:  # a 16-bit output stays signed in a uint8 ONNX file too
            return TensorSpec(f"output_q{k or ''}", "int16", shape, p.scale, p.zero_point, out_layout(shape))
        return TensorSpec(f"output_q{k or ''}", io_dtype, shape, p.scale, p.zero_point + shift, out_layout(shape))

    outputs = [out_spec(k, p, shape) for k, (p, shape) in enumerate(zip(lowered.outputs, output_shapes))]
    return DeployMetadata(
        target=cfg.target, sample_rate=cfg.sample_rate,
        chunk_samples=cfg.chunk_samples if spectral else input_shape[-1], num_sources=sources,
        inputs=[TensorSpec("audio_q", io_dtype, input_shape, p_in.scale, p_in.zero_point + shift, in_layout)],
        outputs=outputs,
        model={**model_info, "quant_config": qmodel.config.to_dict()},
        splitter=splitter, combiner=combiner,
        allowed_float_ops=list(cfg.allow_float),
        stages=stages,
    )


def _verification_chunks(calibration: Sequence[np.ndarray] | None, shape: list[int], n: int,
                         split: bool = False, stage: Any = None, spectral: Any = None,
                         chunk_samples: int | None = None) -> list[np.ndarray]:
    """Inputs of the file's input shape: calibration audio cut to length (split for FQSE), or noise.

    With a level stage, each chunk as the stage hands it to the file (scaled to the calibration level);
    with a spectral stage, the chunk's STFT features.
    """
    length = chunk_samples if spectral is not None else shape[-1] if split else int(np.prod(shape))
    rng = np.random.default_rng(0)
    sources = [np.asarray(a, np.float32).reshape(-1) for a in (calibration or [])][:n]
    # no data given: speech-level noise still exercises every layer
    sources += [(rng.standard_normal(length) * 0.05).astype(np.float32) for _ in range(n - len(sources))]
    chunks = []
    for audio in sources:
        audio = np.pad(audio, (0, max(0, length - audio.size)))[:length]
        if stage is not None:
            audio = (audio * stage.gain(audio)).astype(np.float32)
        if spectral is not None:
            chunks.append(spectral.features_of(spectral.stft(audio.reshape(1, -1))).reshape(shape))
        elif split:
            from compressor.fqse.io_codec import split as split_audio

            chunks.append(split_audio(audio.reshape(1, -1), np, axis=-2).astype(np.float32).reshape(shape))
        else:
            chunks.append(audio.reshape(shape))
    return chunks


def export(qmodel: QuantizedModel, target: str, path: str | Path, *, config: ExportConfig | None = None,
           calibration: Sequence[np.ndarray] | None = None, model_info: dict[str, Any] | None = None,
           verify: bool | None = None) -> ExportResult:
    """Lower ``qmodel`` to an int8 ``target`` file at ``path``; verify it against the simulation.

    Nothing is written at ``path`` unless the file converted, holds no float
    compute op (outside ``allow_float``) and, with verification on, matches
    the simulation within ``tolerance_lsb`` on the calibration audio.
    """
    start = time.perf_counter()
    cfg = config or ExportConfig(target=target)
    if cfg.target != target:
        cfg = ExportConfig(**{**cfg.to_dict(), "target": target})
    if verify is not None and verify != cfg.verify:
        cfg = ExportConfig(**{**cfg.to_dict(), "verify": verify})
    if not isinstance(qmodel, QuantizedModel):
        raise ExportError(f"export() needs a quantized model (got {type(qmodel).__name__}); run PTQ or QAT first")
    path = Path(path)
    qmodel.eval()
    shape = _input_shape(qmodel, cfg, (model_info or {}).get("stages"))
    lowered = lower(qmodel, int8_io=(target == "onnx"), input_shape=shape, target=target)
    x_float = torch.zeros(shape)
    metadata = deploy_metadata(qmodel, lowered, cfg, model_info or {})

    with tempfile.TemporaryDirectory(prefix="compress-export-") as tmp:
        scratch = Path(tmp) / f"model.{'onnx' if target == 'onnx' else 'tflite'}"
        extra: dict[str, Any] = {}
        if target == "onnx":
            example = torch.zeros(shape, dtype=torch.int8)
            model, extra = onnx_export.build_onnx(lowered, example, metadata, Path(tmp) / "raw.onnx",
                                                  cfg.uint8_activations)
            onnx.save(model, str(scratch))
            ops = float_ops.onnx_ops(model)
        else:
            scratch.write_bytes(tflite_export.build_tflite(lowered, x_float, metadata, cfg.keep_tensor_names))
            ops = float_ops.tflite_ops(scratch)
        float_ops.check(ops, cfg.allow_float, target)
        verification = None
        if cfg.verify:
            # the reference is a fresh lowering of the simulation, not the module the converter traced
            verification = _verify(qmodel, lower(qmodel, int8_io=(target == "onnx"), input_shape=shape, target=target),
                                   scratch, cfg, calibration, shape)
        with atomic_path(path) as tmp_out:
            Path(tmp_out).write_bytes(scratch.read_bytes())
    return ExportResult(path, metadata, verification, ops, lowered.rewrites, time.perf_counter() - start, extra)


def _verify(qmodel: QuantizedModel, lowered: LoweredModel, file: Path, cfg: ExportConfig,
            calibration: Sequence[np.ndarray] | None, shape: list[int]) -> Verification:
    runtime = open_session(file, threads=cfg.threads)
    chunks = _verification_chunks(calibration, shape, cfg.verify_chunks, split=bool(runtime.metadata.splitter),
                                  stage=runtime.metadata.level_stage(), spectral=runtime.metadata.spectral_stage(),
                                  chunk_samples=runtime.metadata.chunk_samples)
    e2e = end_to_end(qmodel, runtime, chunks)
    spec = runtime.metadata.inputs[0]
    shift = 128 if spec.dtype == "uint8" else 0
    input_codes = [spec.quantize(c.reshape(spec.shape)) for c in chunks]
    rows = op_parity(lowered, _file_tensors(lowered, file, cfg, input_codes[0], shift), input_codes,
                     float_input=(cfg.target == "tflite"), zero_shift=shift)
    names = describe_tensors(lowered)
    worst = max(rows, key=lambda k: rows[k]["max_lsb"], default=None)
    result = Verification(
        op_max_lsb=rows[worst]["max_lsb"] if worst else 0, max_lsb=e2e.max_lsb, mean_lsb=e2e.mean_lsb,
        snr_db=e2e.snr_db, tolerance_lsb=cfg.tolerance_lsb, min_snr_db=cfg.min_snr_db, inputs=len(chunks),
        runtime=runtime.name,
        worst_op={"tensor": worst, **names.get(worst, {}), **rows[worst]} if worst else {})
    log.info("verification on %s: ops within %d LSB (%d checked); end to end max %d LSB, mean %.4f LSB, "
             "SNR %.1f dB over %d chunks", runtime.name, result.op_max_lsb, len(rows), result.max_lsb,
             result.mean_lsb, result.snr_db, len(chunks))
    if result.passed:
        return result
    if not result.ops_match:
        result.drift = [{"tensor": k, **names.get(k, {}), **v} for k, v in rows.items()
                        if v["max_lsb"] > cfg.tolerance_lsb][:12]
        finding = (f"{len([v for v in rows.values() if v['max_lsb'] > cfg.tolerance_lsb])} op(s) of the exported "
                   f"{cfg.target} file compute differently from the simulation on the same inputs (worst "
                   f"{result.op_max_lsb} LSB of its output scale, tolerance {cfg.tolerance_lsb:g})")
        where = "Ops off by more than the tolerance, given the file's own inputs (graph order)"
    else:
        result.drift = _drift(lowered, file, cfg, runtime, chunks[0])
        finding = (f"every op of the exported {cfg.target} file matches the simulation, but on {runtime.name} its "
                   f"output drifts to {result.snr_db:.1f} dB SNR against the simulated output (floor "
                   f"{cfg.min_snr_db:g} dB; max {result.max_lsb} LSB)")
        where = "Where the drift starts (first int8 tensors that differ, in graph order)"
    lines = "\n  ".join(f"{r.get('layer', '?')} ({r.get('op', '?')}, tensor {r['tensor']}): max {r['max_lsb']} LSB, "
                         f"mean {r['mean_lsb']}" for r in result.drift)
    raise ParityError(f"{finding}; nothing was written.\n{where}:\n  {lines or '(not located)'}")


def _file_tensors(lowered: LoweredModel, file: Path, cfg: ExportConfig, example_codes: np.ndarray,
                  shift: int) -> Callable[[np.ndarray], dict[str, list[np.ndarray]]]:
    """codes -> the file's candidate int8 tensors per quantize node of ``lowered``."""
    expected = lowered_tensors(lowered, as_int8(example_codes, shift), float_input=(cfg.target == "tflite"))
    if cfg.target == "onnx":
        names = {k: v for k, v in onnx_export.onnx_tensor_names(lowered).items() if k in expected}
        return lambda codes: {k: [v] for k, v in onnx_export.intermediate_tensors(file, names, codes).items()}
    wanted = qparams_of(lowered, list(expected), expected)
    return lambda codes: tflite_export.intermediate_tensors(file, wanted, codes)


def _drift(lowered: LoweredModel, file: Path, cfg: ExportConfig, runtime: Any, audio: np.ndarray) -> list[dict[str, Any]]:
    spec = runtime.metadata.inputs[0]
    codes = spec.quantize(audio.reshape(spec.shape))
    shift = 128 if spec.dtype == "uint8" else 0
    expected = lowered_tensors(lowered, as_int8(codes, shift), float_input=(cfg.target == "tflite"))
    try:
        candidates = _file_tensors(lowered, file, cfg, codes, shift)(codes)
    except Exception as exc:  # the report is a diagnosis aid; never mask the parity failure itself
        log.warning("could not collect intermediate tensors for the drift report: %s", exc)
        return []
    got = {k: closest(v, expected[k], shift) for k, v in candidates.items() if k in expected}
    got = {k: v for k, v in got.items() if v is not None}
    return drift_report(expected, got, names=describe_tensors(lowered))
