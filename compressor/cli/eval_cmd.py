"""``compress eval``: quality of float and simulated-quantized models side by side."""
from __future__ import annotations

from pathlib import Path

import click
import torch

from compressor.cli.common import data_option, eval_set, handle_errors, load, set_threads, setup_logging, write_json
from compressor.evaluation import evaluate
from compressor.fileio import write_text_atomic
from compressor.quant.clipping import ClippingMonitor, ClippingReport
from compressor.quant.precision import OUTPUT_ROLE
from compressor.quant.sensitivity import SensitivityReport
from compressor.quant.sensitivity import sensitivity as sensitivity_of
from compressor.recipes import inference_model
from compressor.reporting import markdown_table, model_entry
from compressor.sweep import plot_sweep, sweep_points, sweep_report, sweep_table
from compressor.sweep import snr_sweep as snr_sweep_of

CLIPPING_ROWS = 15  # --clipping prints this many quantizers (the worst), plus the input and output
SENSITIVITY_ROWS = 15
SENSITIVITY_ITEMS = 4  # each of them, cut to 2 s, runs twice per quantizer: keep the default short


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
@click.option("--snr-sweep", is_flag=True,
              help="Also rescale the noise of the whole set to each input SNR of --sweep-range (FQSE eq. 2) "
                   "and report SI-SNR per SNR.")
@click.option("--sweep-range", type=float, nargs=3, default=(-6.0, 18.0, 1.0), show_default=True,
              metavar="LOW HIGH STEP", help="Input SNRs of the sweep, in dB.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Plot SI-SNR vs input SNR of every model in one figure (implies --snr-sweep).")
@click.option("--task", type=click.Choice(["enhancement", "quality"]), default="enhancement", show_default=True,
              help="quality: speech-quality predictors (bam recipe): test MSE and Pearson correlation against "
                   "PESQ-WB labels; --data is a quality split (.npz, default runs/bam_data/test.npz).")
@click.option("--clipping", is_flag=True,
              help="Quantized MODELS: per activation quantizer, the fraction of values beyond its int8 range and "
                   "its SQNR, measured on the eval data during the simulated pass. Prints the worst "
                   f"{CLIPPING_ROWS} (and the input and output); --json/--md get every quantizer.")
@click.option("--sensitivity", is_flag=True,
              help="Quantized MODELS: per activation quantizer, the SI-SNR gained by keeping only that tensor at "
                   f"16 bits, and as float (one quantizer at a time, on --max-items items, default "
                   f"{SENSITIVITY_ITEMS}). Prints the {SENSITIVITY_ROWS} most sensitive; --json/--md get all. "
                   "Tells where a --precision '#NAME=a16' override pays.")
@click.option("--threads", type=int)
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def eval_cmd(models, data, strict_audio, reference, model_factory, trust_pickle, max_items, json_out, md_out,
             snr_sweep, sweep_range, plot_out, task, clipping, sensitivity, threads, verbose):
    """SI-SNR, SI-SNRi, SDR and STOI of MODELS, overall and by input SNR
    (low < 2 dB, mid 2-10 dB, high > 10 dB).

    A quantized checkpoint is evaluated twice: simulated (every tensor
    quantized) and with its quantizers off ("float weights"), side by side.
    With --clipping, the simulated pass also measures which int8 activations
    clip on this data (louder audio than the calibration level clips).
    """
    setup_logging(verbose)
    set_threads(threads)
    if (clipping or sensitivity) and task != "enhancement":
        raise click.UsageError("--clipping and --sensitivity work with --task enhancement only")
    if task == "quality":
        _eval_quality(models, data, model_factory, trust_pickle, max_items, json_out, md_out)
        return
    dataset = eval_set(data, strict_audio)
    results: list[tuple[str, dict]] = []
    swept: list[tuple[str, torch.nn.Module]] = []  # the models of the SNR sweep, before any goes float
    ref_summary = None
    if reference is not None:
        ref_model = load(reference, model_factory, trust_pickle).model
        ref_summary = evaluate(ref_model, dataset, desc=reference.stem, max_items=max_items)
        results.append((f"{reference.stem} (reference)", ref_summary))
        swept.append((reference.stem, ref_model))
    sweep = snr_sweep or plot_out is not None
    curves: dict[str, list[float]] = {}
    snrs = sweep_points(*sweep_range) if sweep else []
    clip_reports: dict[str, ClippingReport] = {}
    sensitivity_reports: dict[str, SensitivityReport] = {}
    for path in models:
        loaded = load(path, model_factory, trust_pickle)
        model = inference_model(loaded)  # e.g. FQSE: splitter -> int8 graph -> combiner
        if loaded.quantized:
            wide = _sixteen_bit_label(loaded.model.config.overrides)
            name = f"{path.stem} (simulated int{loaded.model.config.activation_bits}{wide})"
            if clipping:  # hooks on the quantizers during the simulated pass: the data runs once
                with ClippingMonitor(model) as monitor:
                    results.append((name, evaluate(model, dataset, desc=path.stem, max_items=max_items)))
                clip_reports[path.stem] = monitor.report()
            else:
                results.append((name, evaluate(model, dataset, desc=path.stem, max_items=max_items)))
            if sweep:
                curves[name] = snr_sweep_of(model, dataset, snrs, max_items=max_items, desc=f"sweep {path.stem}")
            if sensitivity:
                sensitivity_reports[path.stem] = sensitivity_of(model, loaded.model, dataset,
                                                                max_items or SENSITIVITY_ITEMS)
            loaded.model.set_mode("float")
            results.append((f"{path.stem} (quantizers off)",
                            evaluate(model, dataset, desc=f"{path.stem} float", max_items=max_items)))
        else:
            if clipping or sensitivity:
                click.echo(f"note: --clipping/--sensitivity: {path} is a float model; it has no int8 ranges, "
                           "nothing to report", err=True)
            summary = evaluate(model, dataset, desc=path.stem, max_items=max_items)
            ref_summary = ref_summary or summary
            results.append((path.stem, summary))
            swept.append((path.stem, model))
    for name, model in swept:
        if sweep:
            curves[name] = snr_sweep_of(model, dataset, snrs, max_items=max_items, desc=f"sweep {name}")
    entries = [model_entry(name, s, ref_summary) for name, s in results]
    table = markdown_table(entries)
    click.echo(table)
    sweep_md = ""
    if sweep:
        reference_curve = swept[0][0] if swept else None
        ordered = {n: curves[n] for n, _ in swept} | {n: c for n, c in curves.items() if n not in dict(swept)}
        sweep_md = "\n## SI-SNR by input SNR (noise rescaled, eq. 2)\n\n" + sweep_table(snrs, ordered, reference_curve)
        click.echo(sweep_md)
        if plot_out:
            plot_sweep(snrs, ordered, plot_out, title=f"SI-SNR vs input SNR ({data})")
            click.echo(f"wrote {plot_out}")
    clip_md = ""
    for stem, report in clip_reports.items():
        click.echo(f"\n## Clipping: {stem} (worst {CLIPPING_ROWS} by clipped fraction, input and output)\n")
        click.echo(report.markdown(report.worst(CLIPPING_ROWS)))
        click.echo(f"{stem}: {report.summary()}")
        clip_md += f"\n## Clipping: {stem}\n\n{report.summary()}\n\n{report.markdown()}"
    sensitivity_md = ""
    for stem, report in sensitivity_reports.items():
        click.echo(f"\n## Sensitivity: {stem} (the {SENSITIVITY_ROWS} tensors where 16 bits gain most)\n")
        click.echo(report.markdown(SENSITIVITY_ROWS))
        click.echo(f"{stem}: {report.summary()}")
        sensitivity_md += f"\n## Sensitivity: {stem}\n\n{report.summary()}\n\n{report.markdown()}"
    if json_out:
        payload = {"data": data, "models": entries}
        if sensitivity:
            payload["sensitivity"] = {stem: report.to_dict() for stem, report in sensitivity_reports.items()}
        if sweep:
            payload["snr_sweep"] = sweep_report(snrs, curves)
        if clipping:
            payload["clipping"] = {stem: report.to_dict() for stem, report in clip_reports.items()}
        write_json(json_out, payload)
    if md_out:
        write_text_atomic(md_out, f"# Evaluation on {data}\n\n{table}{sweep_md}{clip_md}{sensitivity_md}")


def _eval_quality(models, data, model_factory, trust_pickle, max_items, json_out, md_out) -> None:
    """MSE and PCC of quality predictors; a quantized one simulated and with its quantizers off."""
    from compressor.bam.data import QualityDataset
    from compressor.bam.train import quality_metrics, predict

    dataset = QualityDataset(Path("runs/bam_data/test.npz") if data == "demo" else Path(data))
    n = min(len(dataset), max_items or len(dataset))
    x, y = dataset.features[:n], dataset.labels[:n].numpy()
    rows = []
    for path in models:
        loaded = load(path, model_factory, trust_pickle)
        variants = [("simulated int8", "quantize"), ("quantizers off", "float")] if loaded.quantized else [("", None)]
        for label, mode in variants:
            if mode:
                loaded.model.set_mode(mode)
            metrics = quality_metrics(predict(loaded.model, x), y)
            rows.append({"model": f"{path.stem} ({label})" if label else path.stem, **metrics})
    table = "| model | test MSE | test PCC | clips |\n|---|---|---|---|\n" + "".join(
        f"| {r['model']} | {r['mse']:.4f} | {r['pcc']:.4f} | {r['n']} |\n" for r in rows)
    click.echo(table)
    if json_out:
        write_json(json_out, {"data": data, "task": "quality", "models": rows})
    if md_out:
        write_text_atomic(md_out, f"# Quality prediction on {data}\n\n{table}")


def _sixteen_bit_label(rules) -> str:
    """What a model's 16-bit rules widen, for its row name: the output (the recipes' default), or more."""
    wide = [r for r in rules if r.activation_bits == 16]
    if not wide:
        return ""
    return " + 16-bit output" if all(r.op == OUTPUT_ROLE and r.tensor == "*" for r in wide) else " + 16-bit overrides"
