"""``compress export``: a model file to a verified integer-only .tflite or QDQ .onnx."""
from __future__ import annotations

import json
import math
from pathlib import Path

import click

from compressor.checkpoint import LoadedModel
from compressor.cli.common import data_option, handle_errors, load, model_options, set_threads, setup_logging
from compressor.errors import ConfigError, ExportError
from exporters.api import ExportConfig, export


def _quantized(loaded: LoadedModel, calib: str, strict_audio: bool, reduce_range: bool, seed: int):
    """The quantized model to export: the checkpoint's own, or PTQ of a float model."""
    if loaded.quantized:
        bits = loaded.model.config.weight_bits
        if reduce_range and bits != 7:
            raise ConfigError(
                f"{loaded.path} was trained with {bits}-bit weights; --reduce-range needs a model trained with "
                "7-bit weights (compress qat --weight-bits 7), requantizing would change what was trained")
        from exporters.metadata import io_processing, stages_of

        splitter, combiner = io_processing(loaded.recipe)
        info = {"recipe": (loaded.recipe or {}).get("name", "unknown"), "splitter": splitter, "combiner": combiner,
                "stages": stages_of(loaded.recipe)}
        if info["recipe"] == "bam":  # a quality predictor: the runtimes compute its log-mel input in numpy
            from compressor.bam.frontend import MelConfig

            info.update(task="quality", frontend=MelConfig().to_dict())
        return loaded.model, info
    from compressor.cli.common import training_sets
    from compressor.recipes import RecipeContext, get_recipe

    click.echo(f"{loaded.path} is a float model: post-training quantization on {calib!r} first")
    train_set, _ = training_sets(calib, None, 2.0, seed, strict_audio)
    recipe = get_recipe("ptq").from_options({"weight_bits": 7 if reduce_range else 8, "seed": seed})
    qmodel = recipe.run(RecipeContext(loaded.model, train_set, None, Path("."), progress=True))
    return qmodel, {"recipe": "ptq", "calibration_data": calib, "stages": recipe.describe().get("stages", [])}


def _verification_audio(calib: str, strict_audio: bool, seconds: float, count: int, seed: int):
    from compressor.cli.common import training_sets
    from compressor.recipes.base import calibration_batches

    train_set, _ = training_sets(calib, None, seconds, seed + 1, strict_audio)
    return [batch[0].numpy() for batch in calibration_batches(train_set, count, 1, seed + 1)]


@click.command("export")
@model_options
@click.option("--target", type=click.Choice(["tflite", "onnx"]), required=True,
              help="tflite: integer-only int8 LiteRT file; onnx: QDQ ONNX for onnxruntime.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file (default: MODEL with .tflite/.onnx).")
@data_option(help_extra="Calibration audio for PTQ of a float MODEL and for verifying the file.")
@click.option("--calib", "calib", help="Same as --data (the issue's name for it).")
@click.option("--reduce-range", is_flag=True,
              help="7-bit weights for onnxruntime on x86 without VNNI (automatic for models trained with them).")
@click.option("--chunk-seconds", default=2.0, show_default=True,
              help="The file's fixed input length; runtimes cut longer audio into overlapping chunks.")
@click.option("--sample-rate", default=16000, show_default=True, help="Sample rate the model works at (stored in the file).")
@click.option("--int8-activations", is_flag=True,
              help="onnx: keep int8 activations (default uint8, which ORT needs to fuse Add/Mul).")
@click.option("--keep-tensor-names", is_flag=True,
              help="tflite: keep every tensor's module-path name (default: only the input/output names; "
                   "the names are ~15% of the file).")
@click.option("--no-verify", is_flag=True, help="Skip running the file against the simulated model.")
@click.option("--tolerance-lsb", default=1.0, show_default=True,
              help="Largest allowed difference of any op to the simulation, given the file's own inputs to that op, "
                   "in LSBs of its output scale.")
@click.option("--min-snr-db", default=25.0, show_default=True,
              help="Lowest allowed SNR of the file's output against the simulated output, end to end on the "
                   "deploying runtime (1-LSB rounding differences accumulate through deep models).")
@click.option("--allow-float", default="", metavar="OPS",
              help="Comma-separated op names that may stay float (listed in the report); otherwise export fails.")
@click.option("--pipeline", is_flag=True,
              help="onnx: also write OUT.pipeline.onnx, int16 PCM in and out with the splitter/combiner inside "
                   "(plain ONNX ops, one chunk per run), checked against the file on the verification audio.")
@click.option("--wav-pipeline", is_flag=True,
              help="onnx: also write OUT.wav.onnx, the pipeline with WAV file bytes in (onnxruntime-extensions' "
                   "AudioDecoder: mono mix-down and down-sampling to the model's rate, one chunk per run).")
@click.option("--report", type=click.Path(dir_okay=False, path_type=Path), help="Also write the export report as JSON.")
@click.option("--threads", type=int, help="Threads for PTQ and verification.")
@click.option("--seed", default=0, show_default=True)
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def export_cmd(model, model_factory, trust_pickle, target, out, data, strict_audio, calib, reduce_range, chunk_seconds,
               sample_rate, int8_activations, keep_tensor_names, no_verify, tolerance_lsb, min_snr_db, allow_float, pipeline, wav_pipeline, report, threads, seed, verbose):
    """Export MODEL as an integer-only int8 file that computes what was trained.

    MODEL is a quantized checkpoint (compress qat / ptq), or a float model (our
    checkpoint, a .pt2, or a state_dict with --model-factory), which is first
    quantized by PTQ on the calibration data. Every op of the file is int8,
    its input and output included. The file is run on calibration audio and
    checked against the simulated model twice: op by op on the file's own
    inputs (each op within --tolerance-lsb), and end to end on the runtime
    that deploys it (output SNR at least --min-snr-db). Nothing is written
    when either fails; a per-layer report says where.
    """
    setup_logging(verbose)
    set_threads(threads)
    calib = calib or data
    out = out or model.with_suffix(f".{target}")
    if out.resolve() == Path(model).resolve():
        raise ExportError(f"--out {out} would overwrite the model file")
    _check_writable(out)
    loaded = load(model, model_factory, trust_pickle)
    qmodel, info = _quantized(loaded, calib, strict_audio, reduce_range, seed)
    info.update({"source": str(model), "sample_rate": sample_rate})
    if loaded.arch is not None:
        info["architecture"] = loaded.arch.describe()
    cfg = ExportConfig(target=target, sample_rate=int(loaded.info.get("sample_rate", sample_rate)),
                       chunk_seconds=chunk_seconds, uint8_activations=not int8_activations, verify=not no_verify,
                       tolerance_lsb=tolerance_lsb, min_snr_db=min_snr_db, threads=threads,
                       keep_tensor_names=keep_tensor_names,
                       allow_float=tuple(op.strip() for op in allow_float.split(",") if op.strip()))
    audio = None if no_verify else _verification_audio(calib, strict_audio, chunk_seconds, cfg.verify_chunks, seed)
    click.echo(f"exporting to {target} ({'verifying against the simulation' if cfg.verify else 'no verification'}) ...")
    result = export(qmodel, target, out, config=cfg, calibration=audio, model_info=info)
    summary = result.to_dict()
    v = result.verification
    click.echo(f"wrote {out} ({summary['bytes'] / 1024:.1f} KiB, {result.seconds:.0f} s)")
    click.echo(f"  ops: {', '.join(f'{k} x{n}' for k, n in sorted(result.ops['count'].items()))}")
    click.echo(f"  float compute ops: {result.ops['float_op_count']}"
               + (f" (allowed: {', '.join(cfg.allow_float)})" if cfg.allow_float else ""))
    if target == "tflite":
        from exporters.tflite_export import xnnpack_coverage

        coverage = summary["xnnpack"] = xnnpack_coverage(out)
        left = ", ".join(f"{k} x{n}" for k, n in sorted(coverage["undelegated"].items())) or "none"
        click.echo(f"  XNNPACK: {coverage['partitions']} partition(s); ops left to the builtin kernels: {left}")
    summary["level"] = {"stage": (result.metadata.level_stage().to_dict() if result.metadata.level_stage() else None),
                        "report": _level_line(result.metadata)}
    click.echo(f"  {summary['level']['report']}")
    if v is not None:
        click.echo(f"  parity with the simulation: every op within {v.op_max_lsb} LSB on the file's own inputs; "
                   f"end to end on {v.runtime}: max {v.max_lsb} LSB, mean {v.mean_lsb:.4f} LSB, SNR {v.snr_db:.1f} dB "
                   f"over {v.inputs} chunks of {chunk_seconds:g} s")
    if pipeline:
        summary["pipeline"] = str(_write_pipeline(out, target, audio, seed))
        click.echo(f"wrote {summary['pipeline']} (int16 PCM in/out, {chunk_seconds:g} s per run)")
    if wav_pipeline:
        summary["wav_pipeline"] = str(_write_pipeline(out, target, audio, seed, wav=True))
        click.echo(f"wrote {summary['wav_pipeline']} (WAV bytes in, int16 PCM out, up to {chunk_seconds:g} s per run)")
    if report:
        from compressor.fileio import write_text_atomic

        write_text_atomic(report, json.dumps(summary, indent=2, default=str) + "\n")


def _level_line(metadata) -> str:
    """What the report says about input level: the calibration level and whether the file follows other levels."""
    stage = metadata.level_stage()
    spec = metadata.inputs[0]
    if stage is not None:
        return (f"level: calibrated at a chunk peak of {stage.target_peak:.3f} ({stage.target_dbfs:.1f} dBFS); "
                f"the file's level stage scales every chunk to it (gain {stage.min_gain_db:+g} to "
                f"{stage.max_gain_db:+g} dB) and back, so louder or quieter audio neither clips nor loses resolution")
    if metadata.splitter:
        return "level: no level stage; the input is 16-bit PCM split in two int8 channels (full scale)"
    if metadata.spectral_stage() is not None:
        top = (spec.qmax - spec.zero_point) * spec.scale
        return (f"level: no level stage; the file's input is the STFT features of the audio (up to {top:.3g} on its "
                "int8 grid): louder audio clips the features")
    top = max(abs((spec.qmin - spec.zero_point) * spec.scale), abs((spec.qmax - spec.zero_point) * spec.scale))
    return (f"level: no level stage; the input clips above {top:.3f} ({20 * math.log10(top):.1f} dBFS) "
            "peak: louder audio clips the model (re-quantize to get a level stage)")


def _write_pipeline(out: Path, target: str, audio, seed: int, wav: bool = False) -> Path:
    from exporters.pipeline_onnx import write_pipeline

    if target != "onnx":
        raise ExportError(f"--{'wav-' if wav else ''}pipeline needs --target onnx (the pipeline is an ONNX graph)")
    return write_pipeline(out, out.with_suffix(".wav.onnx" if wav else ".pipeline.onnx"), audio, seed=seed, wav=wav)


def _check_writable(out: Path) -> None:
    """Fail before minutes of work, not after, when the output cannot be written."""
    import tempfile

    if out.is_dir():
        raise ExportError(f"cannot write {out}: it is a directory")
    probe = out.parent
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ExportError(f"cannot write {out}: {probe} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {probe} is not writable ({exc.strerror})") from exc
