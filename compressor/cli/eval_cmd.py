"""``compress eval``: quality of float and simulated-quantized models side by side."""
from __future__ import annotations

from pathlib import Path

import click

from compressor.cli.common import data_option, eval_set, handle_errors, load, set_threads, setup_logging, write_json
from compressor.evaluation import evaluate
from compressor.fileio import write_text_atomic
from compressor.reporting import markdown_table, model_entry


@click.command("eval")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@data_option(help_extra="Evaluation data ('demo' = its test split).")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path),
              help="Float model the deltas refer to (default: the first float MODEL).")
@click.option("--model-factory", metavar="PKG.MODULE:FUNCTION", help="For state_dict MODELs.")
@click.option("--trust-pickle", is_flag=True, help="Allow pickled full modules (runs code from the file).")
@click.option("--max-items", type=int, help="Evaluate only the first N items.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as JSON.")
@click.option("--md", "md_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report as Markdown.")
@click.option("--threads", type=int)
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def eval_cmd(models, data, strict_audio, reference, model_factory, trust_pickle, max_items, json_out, md_out, threads, verbose):
    """SI-SNR, SI-SNRi, SDR and STOI of MODELS, overall and by input SNR
    (low < 2 dB, mid 2-10 dB, high > 10 dB).

    A quantized checkpoint is evaluated twice: simulated (every tensor
    quantized) and with its quantizers off ("float weights"), side by side.
    """
    setup_logging(verbose)
    set_threads(threads)
    dataset = eval_set(data, strict_audio)
    results: list[tuple[str, dict]] = []
    ref_summary = None
    if reference is not None:
        ref_summary = evaluate(load(reference, model_factory, trust_pickle).model, dataset, desc=reference.stem,
                               max_items=max_items)
        results.append((f"{reference.stem} (reference)", ref_summary))
    for path in models:
        loaded = load(path, model_factory, trust_pickle)
        if loaded.quantized:
            results.append((f"{path.stem} (simulated int{loaded.model.config.activation_bits})",
                            evaluate(loaded.model, dataset, desc=path.stem, max_items=max_items)))
            loaded.model.set_mode("float")
            results.append((f"{path.stem} (quantizers off)",
                            evaluate(loaded.model, dataset, desc=f"{path.stem} float", max_items=max_items)))
        else:
            summary = evaluate(loaded.model, dataset, desc=path.stem, max_items=max_items)
            ref_summary = ref_summary or summary
            results.append((path.stem, summary))
    entries = [model_entry(name, s, ref_summary) for name, s in results]
    table = markdown_table(entries)
    click.echo(table)
    if json_out:
        write_json(json_out, {"data": data, "models": entries})
    if md_out:
        write_text_atomic(md_out, f"# Evaluation on {data}\n\n{table}")
