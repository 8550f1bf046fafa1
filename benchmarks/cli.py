"""``compress bench``: size, BOPs, latency, memory and quality of model files, side by side."""
from __future__ import annotations

from pathlib import Path

import click

from compressor.cli.common import handle_errors, setup_logging


@click.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", default="demo", show_default=True,
              help="Quality data: 'demo' (its test split), a LibriMix csv or folder, a paired folder "
                   "(noisy/ + clean/) or a mixing folder.")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="The float model (checkpoint or file) every delta_vs_float refers to; benched too.")
@click.option("--threads", type=int, help="'All threads' for latency and the quality runs (default: usable cores). "
                                          "Latency is also measured at 1 thread.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the JSON here.")
@click.option("--md", "md_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the Markdown here.")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path),
              help="Write figures here: SI-SNR vs input SNR, latency bars, size bars.")
@click.option("--per-layer", is_flag=True, help="Add the per-layer BOPs table.")
@click.option("--runs", default=20, show_default=True, help="Timed runs per latency figure.")
@click.option("--warmup", default=5, show_default=True, help="Untimed runs before timing.")
@click.option("--chunk-seconds", default=2.0, show_default=True,
              help="Chunk a checkpoint runs in (deployed files have their own).")
@click.option("--max-items", type=int, help="Quality on the first N clips only.")
@click.option("--no-quality", is_flag=True, help="Skip the quality runs.")
@click.option("--no-latency", is_flag=True, help="Skip latency and memory.")
@click.option("--no-dnsmos", is_flag=True, help="Skip DNSMOS (its keys are then null).")
@click.option("--no-pesq", is_flag=True, help="Skip PESQ (its keys are then null).")
@click.option("--pack", "pack_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Do not benchmark here: write a folder that benchmarks the one MODEL (.onnx/.tflite) on a "
                   "device with only numpy and onnxruntime or ai-edge-litert (python runner.py ...).")
@click.option("--pack-clips", default=6, show_default=True, help="Test clips to put in the --pack folder.")
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def bench_cmd(models, data, reference, threads, json_out, md_out, plots, per_layer, runs, warmup, chunk_seconds,
              max_items, no_quality, no_latency, no_dnsmos, no_pesq, pack_dir, pack_clips, verbose):
    """Benchmark MODELS (.tflite, .onnx or our checkpoints, float or quantized).

    \b
    For each model:
      size     file bytes; stored parameters counted by bit width
      BOPs     per layer MACs x weight bits x activation bits, summed, for one chunk
      latency  warm-up, then --runs timed runs of 1 s of audio and of one chunk,
               median and p90 ms, real-time factor, at 1 thread and all threads,
               each model in its own process; its peak resident memory
      quality  SI-SNR, SI-SNRi, SDR, STOI, PESQ-WB, DNSMOS SIG/BAK/OVRL against the
               clean references, per input-SNR bucket (low < 2, mid 2-10, high > 10 dB)
               and overall; with --reference, the difference to the float model

    \b
    Example:
      compress bench fqse.tflite fqse.onnx --reference examples/checkpoints/conv_tasnet_demo.pt \\
          --json bench.json --md bench.md --plots plots/
      compress bench fqse.tflite --pack device_bench/     # then on the device: python runner.py ...
    """
    from benchmarks.bench import BenchConfig, bench
    from benchmarks.latency import BenchmarkError

    setup_logging(verbose)
    if pack_dir:
        from benchmarks.pack import pack

        if len(models) != 1:
            raise BenchmarkError(f"--pack takes exactly one MODEL, got {len(models)}")
        folder = pack(models[0], pack_dir, data=data, clips=pack_clips)
        click.echo(f"wrote {folder}; on the device: cd {folder.name} && python runner.py {models[0].name} "
                   "--clips clips --json result.json")
        return
    config = BenchConfig(data=data, reference=str(reference) if reference else None, threads=threads, runs=runs,
                         warmup=warmup, chunk_seconds=chunk_seconds, per_layer=per_layer, quality=not no_quality,
                         latency=not no_latency, pesq=not no_pesq, dnsmos=not no_dnsmos, max_items=max_items)
    entries = bench(models, config)
    from benchmarks.report import markdown, write_reports

    doc = write_reports(entries, config.to_dict(), json_out, md_out)
    if plots:
        from benchmarks.plots import write_plots

        for path in write_plots(entries, plots):
            click.echo(f"wrote {path}")
    if not md_out:
        click.echo(markdown(entries, doc))
    for path in (json_out, md_out):
        if path:
            click.echo(f"wrote {path}")
