"""``compress demo``: the whole flow on the embedded demo data."""
from __future__ import annotations

from pathlib import Path

import click

from compressor.cli.common import handle_errors, set_threads, setup_logging
from compressor.demo import DemoConfig, run_demo
from compressor.reporting import markdown_table


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo_out"), show_default=True,
              help="Folder for the checkpoints and report.json / report.md.")
@click.option("--qat-steps", default=DemoConfig.qat_steps, show_default=True, help="Vanilla QAT steps.")
@click.option("--fqse-steps", default=DemoConfig.fqse_steps, show_default=True, help="FQSE QAT steps.")
@click.option("--max-items", type=int, help="Evaluate only the first N test clips (quick look).")
@click.option("--float-checkpoint", type=click.Path(dir_okay=False, path_type=Path),
              help="Float model to start from (default: the shipped Conv-TasNet).")
@click.option("--threads", type=int)
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def demo_cmd(out, qat_steps, fqse_steps, max_items, float_checkpoint, threads, verbose):
    """Evaluate the shipped float Conv-TasNet, quantize it by PTQ, by vanilla
    QAT and by FQSE (every weight and activation 8-bit, input and output
    included), and report SI-SNR by input-SNR bucket, SDR and STOI side by side."""
    setup_logging(verbose)
    set_threads(threads)
    config = DemoConfig(qat_steps=qat_steps, fqse_steps=fqse_steps, max_items=max_items,
                        **({"float_checkpoint": str(float_checkpoint)} if float_checkpoint else {}))
    report = run_demo(out, config, log=lambda msg: click.echo(msg, err=True))
    click.echo(markdown_table(report["models"]))
    click.echo(f"wrote {out / 'report.json'} and {out / 'report.md'} in {report['timings_s']['total']:.0f} s")
