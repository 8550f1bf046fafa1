"""``compress run``: enhance (or separate) a WAV file with any model file.

An int8 model's input and output ranges are fixed at calibration; audio
louder than that clips silently. After processing, the runtime's boundary
clipping counts are checked and one warning line goes to stderr when more
than 0.1 % of the input or output codes sat at the int8 limits.
"""
from __future__ import annotations

import time
from pathlib import Path

import click

from compressor.cli.common import handle_errors, setup_logging
from compressor.data.audio import read_audio, write_audio
from compressor.errors import DataError
from compressor.quant.clipping import CLIP_WARN_FRACTION
from runtimes import Runtime, load
from runtimes.quality import frontend_of, predict_quality


@click.command("run")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("input_wav", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("output_wav", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--threads", type=int, help="Runtime threads (default: the runtime's choice).")
@click.option("--strict-audio", is_flag=True,
              help="Refuse input at another sample rate or with several channels (default: resample / down-mix "
                   "with a warning).")
@click.option("--overlap", default=0.25, show_default=True, help="Chunk overlap (fraction of a chunk) for long audio.")
@click.option("--no-xnnpack", is_flag=True, help=".tflite: builtin kernels only, no XNNPACK delegate.")
@click.option("--no-integer-kernels", is_flag=True,
              help=".onnx: switch off ORT's int8 fusion (reference QDQ semantics, slower).")
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def run_cmd(model, input_wav, output_wav, threads, strict_audio, overlap, no_xnnpack, no_integer_kernels, verbose):
    """Run MODEL on INPUT_WAV and write OUTPUT_WAV (written atomically);
    a speech-quality model (bam recipe) prints its predicted score instead.

    MODEL: an exported .tflite (LiteRT) or .onnx (onnxruntime), or our
    checkpoint (.pt, run as the PyTorch simulation). Audio of any length is
    processed in the file's fixed-size chunks with cross-faded overlaps.
    A model with several sources writes OUTPUT_WAV with one channel each.
    """
    setup_logging(verbose)
    options: dict[str, object] = {}
    if model.suffix.lower() == ".tflite" and no_xnnpack:
        options["xnnpack"] = False
    if model.suffix.lower() == ".onnx" and no_integer_kernels:
        options["integer_kernels"] = False
    runtime = load(model, threads=threads, **options)
    audio = read_audio(input_wav, runtime.sample_rate, resample=not strict_audio, mono=not strict_audio)
    if audio.size == 0:
        raise DataError(f"audio file {input_wav} is empty (0 samples)")
    if frontend_of(runtime) is not None:
        _print_quality(runtime, audio, input_wav)
        _warn_clipping(runtime, model)
        return
    if output_wav is None:
        raise click.UsageError("OUTPUT_WAV is required for an audio-to-audio model")
    start = time.perf_counter()
    out = runtime.process(audio, overlap=overlap)
    seconds = time.perf_counter() - start
    write_audio(output_wav, out, runtime.sample_rate)
    duration = audio.shape[-1] / runtime.sample_rate
    click.echo(f"wrote {output_wav}: {duration:.2f} s of audio in {seconds:.2f} s on {runtime.name} "
               f"(real-time factor {seconds / duration:.3f})")
    _warn_clipping(runtime, model)


def _warn_clipping(runtime: Runtime, model: Path) -> None:
    """One stderr line when more than 0.1 % of the boundary int8 codes clipped; nothing otherwise."""
    fraction = runtime.clipping()
    if max(fraction["input"], fraction["output"]) <= CLIP_WARN_FRACTION:
        return
    if runtime.spectral_stage is not None:
        click.echo(f"warning: {model}: {fraction['input']:.2%} of the STFT features and {fraction['output']:.2%} of "
                   "the mask values sat at the int8 limits: the audio is louder than the model's calibration data; "
                   "re-quantize it on audio at this level (README 'Clipping')", err=True)
        return
    click.echo(f"warning: {model}: {fraction['input']:.2%} of the input and {fraction['output']:.2%} of the output "
               f"samples clipped at the int8 limits: the audio is louder than the model's calibration level; "
               f"re-export the model with a level stage (README 'Clipping' and 'Level')", err=True)


def _print_quality(runtime, audio, input_wav: Path) -> None:
    start = time.perf_counter()
    result = predict_quality(runtime, audio)
    seconds = time.perf_counter() - start
    clips = ", ".join(f"{s:.2f}" for s in result["clips"])
    click.echo(f"{input_wav}: predicted quality (PESQ-WB scale) {result['score']:.2f} "
               f"({len(result['clips'])} clip(s) of {result['clip_seconds']:g} s: {clips}) "
               f"in {seconds * 1000:.0f} ms on {runtime.name}")
