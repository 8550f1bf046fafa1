"""Entry point of the ``compress`` command."""
from __future__ import annotations

import click

from compressor.cli.demo_cmd import demo_cmd
from compressor.cli.eval_cmd import eval_cmd
from compressor.cli.quantize_cmds import ptq_cmd, qat_cmd
from compressor.cli.train_cmd import train_cmd


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="audio-compress")
def main() -> None:
    """Compress audio neural networks into fully 8-bit models.

    \b
    compress demo              the whole flow on the embedded demo data
    compress train             train a float zoo model
    compress ptq MODEL         post-training quantization
    compress qat MODEL         quantization-aware training (--recipe vanilla|fqse|bam)
    compress eval MODEL...     quality, float and simulated side by side
    compress export MODEL      integer-only .tflite / QDQ .onnx, verified
    compress run MODEL IN OUT  enhance a WAV with any model file
    compress bench MODEL...    size, BOPs, latency, memory and quality of model files
    """


for command in (demo_cmd, train_cmd, qat_cmd, ptq_cmd, eval_cmd):
    main.add_command(command)


def _plugin_commands() -> None:
    """export/run/bench live in exporters/runtimes/benchmarks, which compressor must not import
    (data flows one way); they register as entry points in pyproject.toml."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="compress.commands"):
        main.add_command(entry.load(), entry.name)


_plugin_commands()

if __name__ == "__main__":
    main()
