"""FQSE on the demo data: the paper's Table 1 and 2, the ablation, and the SNR sweep, from real runs.

    python examples/fqse_tables.py --out runs/fqse_tables --steps 300 --groups main,init,ablation,io

Every row comes from a QAT run of the shipped float checkpoint (or a given
one) on the demo train split, evaluated on the demo test split (simulated
8-bit) two ways: whole utterances (the paper's protocol) and as deployed,
in the files' 2 s chunks with 25 % cross-faded overlap (``runtimes`` on the
checkpoint, the same chunking as the .tflite/.onnx files; the float model
is chunked the same way). Each run's result is cached as OUT/<run>.json
(delete it to redo the run); the tables go to OUT/tables.md and the sweeps
to OUT/sweep*.png/.json.
Groups: main (float, vanilla, fqse + the sweeps), init (one two-channel
conv vs one conv per byte), paper_init (the paper's Gaussian splitter
init), ablation (no SNR augmentation, no splitter + RQB, no distillation,
the high-byte encoder range clipped at -max(low byte)),
io (the four input/output precision rows of Table 2).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from compressor.checkpoint import load_model, save_quantized
from compressor.data import open_dataset
from compressor.demo import DEMO_CHECKPOINT
from compressor.evaluation import evaluate
from compressor.fqse import FQSEPipeline
from compressor.ops.macs import count_macs
from compressor.fqse.cost import float_size_mb, gbops, quantized_size_mb
from compressor.recipes import RecipeContext, get_recipe
from compressor.recipes.fqse import FQSE, build_core
from compressor.reporting import model_entry
from compressor.sweep import plot_sweep, sweep_against_reference, sweep_points

CHUNK_SECONDS = 2.0  # what the exported files take


def deployed(path: Path) -> torch.nn.Module:
    """The checkpoint as the runtimes run it: fixed chunks, cross-faded (benchmarks.export_parity)."""
    import runtimes
    from benchmarks.export_parity import RuntimeAsModule

    return RuntimeAsModule(runtimes.load(path, threads=2, chunk_seconds=CHUNK_SECONDS))

SECONDS = 3.0
RUNS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # name: (group, recipe, options)
    "vanilla": ("main", "vanilla", {}),
    "fqse": ("main", "fqse", {}),
    "fqse_paper_init": ("paper_init", "fqse", {"splitter_init": "paper"}),
    "fqse_one_conv": ("init", "fqse", {"split_encoder": "one_conv"}),
    "fqse_no_snr_aug": ("ablation", "fqse", {"snr_aug": False}),
    "fqse_no_spt_rqb": ("ablation", "fqse", {"input_precision": "8bit", "output_precision": "8bit"}),
    "fqse_no_kd": ("ablation", "fqse", {"distill": 0.0}),
    "fqse_tight_range": ("ablation", "fqse", {"tight_split_range": True}),
    "io_8bit_16bit": ("io", "fqse", {"input_precision": "8bit", "output_precision": "16bit"}),
    "io_split_16bit": ("io", "fqse", {"input_precision": "split", "output_precision": "16bit"}),
    "io_16bit_8bit": ("io", "fqse", {"input_precision": "16bit", "output_precision": "8bit"}),
    "io_16bit_rqb": ("io", "fqse", {"input_precision": "16bit", "output_precision": "rqb"}),
}


def run_one(name: str, args: argparse.Namespace, sets: dict[str, Any]) -> dict[str, Any]:
    cache = args.out / f"{name}.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    _, recipe_name, options = RUNS[name]
    recipe = get_recipe(recipe_name).from_options({"steps": args.steps, "batch_size": args.batch_size,
                                                  "seed": args.seed, "checkpoint_every": args.steps, **options})
    loaded = load_model(args.checkpoint)
    t0 = time.perf_counter()
    ctx = RecipeContext(loaded.model, sets["train"], sets["valid"], args.out / f"{name}.run", progress=False)
    qmodel = recipe.run(ctx)
    qat_s = time.perf_counter() - t0
    arch = recipe.saved_arch(loaded.arch)
    save_quantized(args.out / f"{name}.pt", qmodel, arch, recipe.describe(), {"float_model": str(args.checkpoint)})
    example = torch.zeros(1, int(SECONDS * 16000))
    if recipe_name == "fqse":
        model = FQSE.inference_model(qmodel, recipe.describe())
        core = build_core(load_model(args.checkpoint).model, recipe.config)
        macs = count_macs(core, FQSEPipeline(core, recipe.config.io()).core_input(example))
    else:
        model = qmodel
        macs = count_macs(load_model(args.checkpoint).model, example)
    summary = evaluate(model, sets["test"], progress=False, max_items=args.max_items)
    chunked = evaluate(deployed(args.out / f"{name}.pt"), sets["test"], progress=False, max_items=args.max_items)
    result = {"name": name, "recipe": recipe.describe(), "qat_seconds": round(qat_s, 1),
              "entry": model_entry(name, summary, sets["float_summary"]),
              "deployed_entry": model_entry(name, chunked, sets["float_deployed"]),
              "size_mb": quantized_size_mb(qmodel), "macs_3s": macs,
              "gbops_3s": gbops(macs, qmodel.config.weight_bits, qmodel.config.activation_bits)}
    cache.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{name}: SI-SNR {summary['si_snr']['all']:.2f} dB (QAT {qat_s:.0f} s)", flush=True)
    return result


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"  # a bucket with no clips (--max-items)


def _row(label: str, r: dict[str, Any], entry: str = "entry") -> str:
    q = r[entry]["quality"]
    s = q["si_snr"]
    return (f"| {label} | {r['size_mb']:.3f} | {r['gbops_3s']:.3f} | {_num(s['low'])} | {_num(s['mid'])} | "
            f"{_num(s['high'])} | {_num(s['all'])} | {_num(q['sdr'])} | {_num(q['stoi'], 4)} |")


def tables(results: dict[str, dict[str, Any]], counts: dict[str, int]) -> str:
    head = (f"| model | size [MB] | GBOPs (3 s) | SI-SNR low (n={counts['low']}) | mid (n={counts['mid']}) "
            f"| high (n={counts['high']}) | all | SDR | STOI |\n|---|---|---|---|---|---|---|---|---|")
    labels = {"float": "Float", "vanilla": "Vanilla QAT", "fqse": "FQSE",
              "fqse_paper_init": "FQSE, splitter init: paper (Gaussian)",
              "fqse_no_snr_aug": "FQSE w/o SNR augmentation", "fqse_no_spt_rqb": "FQSE w/o splitter and RQB"}
    labels.update({"fqse_one_conv": "FQSE, splitter as one two-channel conv (paper)",
                   "fqse_no_kd": "FQSE w/o distillation",
                   "fqse_tight_range": "FQSE, high-byte encoder range clipped at -max(low byte)"})
    out = ["## Table 1 (demo test split, simulated 8-bit, whole utterances)", "", head]
    out += [_row(labels[k], results[k]) for k in ("float", "vanilla", "fqse") if k in results]
    out += ["", f"## Table 1 as deployed ({CHUNK_SECONDS:g} s chunks, 25 % cross-fade; float chunked the same way)",
            "", head]
    out += [_row(labels[k], results[k], "deployed_entry") for k in ("float", "vanilla", "fqse") if k in results]
    rest = [k for k in ("fqse_paper_init", "fqse_one_conv", "fqse_no_snr_aug", "fqse_no_spt_rqb", "fqse_no_kd",
                        "fqse_tight_range")
            if k in results]
    if rest:
        out += ["", "## Ablation and splitter initialisation (whole utterances)", "", head]
        out += [_row(labels[k], results[k]) for k in ("fqse", *rest) if k in results]
        out += ["", "## Ablation and splitter initialisation (as deployed)", "", head]
        out += [_row(labels[k], results[k], "deployed_entry") for k in ("fqse", *rest) if k in results]
    if "vanilla" in results and "fqse" in results:
        over = results["fqse"]["gbops_3s"] / results["vanilla"]["gbops_3s"] - 1
        out += ["", f"FQSE BOPs overhead over vanilla QAT: {100 * over:+.2f} %"]
    io_rows = [k for k in RUNS if RUNS[k][0] == "io" and k in results]
    if io_rows:
        out += ["", "## Table 2 (input/output precision; SNR augmentation on)", "",
                "| input | output | SI-SNR low | mid | high | all |", "|---|---|---|---|---|---|"]
        for k in io_rows:
            cfg = results[k]["recipe"]["config"]
            s = results[k]["entry"]["quality"]["si_snr"]
            out.append(f"| {cfg['input_precision']} | {cfg['output_precision']} | {_num(s['low'])} | "
                       f"{_num(s['mid'])} | {_num(s['high'])} | {_num(s['all'])} |")
    return "\n".join(out) + "\n"


def sweep_section(models: dict[str, torch.nn.Module], snrs: list[float], sets: dict[str, Any],
                  args: argparse.Namespace, protocol: str) -> str:
    t0 = time.perf_counter()
    curves = sweep_against_reference(models, "float", sets["test"], snrs, max_items=args.sweep_items,
                                     progress=False)
    suffix = "" if protocol == "whole" else "_deployed"
    (args.out / f"sweep{suffix}.json").write_text(json.dumps({"snr_db": snrs, "curves": curves}, indent=2) + "\n")
    how = "whole utterances" if protocol == "whole" else f"as deployed, {CHUNK_SECONDS:g} s chunks"
    plot_sweep(snrs, {k: v["si_snr"] for k, v in curves.items()}, args.out / f"sweep{suffix}.png",
               title=f"Conv-TasNet on the demo test set, 8-bit (simulated, {how})")
    names = list(curves)
    lines = ["", f"## SI-SNR vs input SNR, {how} (noise rescaled, eq. 2; {time.perf_counter() - t0:.0f} s)", "",
             "| SNR | " + " | ".join(names) + " | " + " | ".join(f"{n} − float" for n in names[1:])
             + " | " + " | ".join(f"SQNR {n}" for n in names[1:]) + " |",
             "|" + "---|" * (1 + len(names) + 2 * (len(names) - 1))]
    for i, snr in enumerate(snrs):
        vals = [curves[n]["si_snr"][i] for n in names]
        gaps = [curves[n]["si_snr"][i] - vals[0] for n in names[1:]]
        sq = [curves[n]["sqnr"][i] for n in names[1:]]
        lines.append(f"| {snr:g} | " + " | ".join(f"{v:.2f}" for v in vals) + " | "
                     + " | ".join(f"{g:+.2f}" for g in gaps) + " | " + " | ".join(f"{v:.1f}" for v in sq) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/fqse_tables"))
    parser.add_argument("--checkpoint", type=Path, default=DEMO_CHECKPOINT)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--groups", default="main,init,ablation,io")
    parser.add_argument("--max-items", type=int)
    parser.add_argument("--sweep-items", type=int, help="test clips per sweep point (default all)")
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    groups = args.groups.split(",")

    float_model = load_model(args.checkpoint).model
    sets = {"train": open_dataset("demo:train", segment_seconds=2.0, seed=args.seed),
            "valid": open_dataset("demo:valid"), "test": open_dataset("demo:test")}
    float_cache = args.out / "float.json"
    if float_cache.is_file():
        float_result = json.loads(float_cache.read_text())
    else:
        summary = evaluate(float_model, sets["test"], progress=False, max_items=args.max_items)
        chunked = evaluate(deployed(args.checkpoint), sets["test"], progress=False, max_items=args.max_items)
        macs = count_macs(float_model, torch.zeros(1, int(SECONDS * 16000)))
        float_result = {"name": "float", "entry": model_entry("float", summary, summary),
                        "deployed_entry": model_entry("float", chunked, chunked),
                        "size_mb": float_size_mb(float_model), "macs_3s": macs, "gbops_3s": gbops(macs, 32, 32)}
        float_cache.write_text(json.dumps(float_result, indent=2) + "\n")
    sets["float_summary"] = float_result["entry"]["quality"]
    sets["float_deployed"] = float_result["deployed_entry"]["quality"]
    results = {"float": float_result}
    for name, (group, _, _) in RUNS.items():
        if group in groups:
            results[name] = run_one(name, args, sets)
    text = tables(results, float_result["entry"]["quality"]["count"])

    if "main" in groups and not args.no_sweep:
        from compressor.recipes import inference_model

        for protocol in ("whole", "deployed"):
            # chunked runs are ~4x slower per clip: the deployed sweep covers the goal's range only
            snrs = sweep_points(-6, 18, 1) if protocol == "whole" else sweep_points(10, 18, 1)
            models: dict[str, torch.nn.Module] = {
                "float": float_model if protocol == "whole" else deployed(args.checkpoint)}
            for name in ("vanilla", "fqse"):
                path = args.out / f"{name}.pt"
                if name in results and path.is_file():
                    models[name] = inference_model(load_model(path)) if protocol == "whole" else deployed(path)
            text += sweep_section(models, snrs, sets, args, protocol)
    (args.out / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
