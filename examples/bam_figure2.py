"""The BAM paper's Figure 2 on our data: float, post-training binarization, BAM-QAT,
BAM + binary weights, BAM + 8-bit weights; test MSE and PCC over seeds.

One training per call (so a 2-core machine is shared fairly), then the table:

    python examples/bam_figure2.py train --variant float --seed 0
    python examples/bam_figure2.py train --variant bam --seed 0
    python examples/bam_figure2.py train --variant bam_bw --seed 0
    python examples/bam_figure2.py table            # -> runs/bam/figure2.md / .json

``float`` also scores its post-training binarization (Heaviside in place of
ReLU, nothing retrained) and its 8-bit PTQ; ``bam`` also scores its int8
PTQ (the int8 x int1 model) and saves it as a quantized checkpoint.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from compressor.bam.binarization import binarize_activations
from compressor.bam.data import QualityDataset
from compressor.bam.train import FitConfig, evaluate, fit
from compressor.checkpoint import ArchSpec, save_float, save_quantized
from compressor.fileio import write_text_atomic
from compressor.quant import QuantConfig, calibrate, quantize
from compressor.recipes.bam import BAM, BAMConfig
from compressor.recipes.base import RecipeContext, calibration_batches, example_input
from compressor.zoo.dnsmos_cnn import DnsmosCNN, DnsmosConfig

ROWS = [("float", "float"), ("float_ptb", "post-training binarization"), ("bam", "BAM-QAT"),
        ("bam_bw", "BAM + binary weights"), ("bam_bw_int8", "BAM + binary weights, int8 PTQ (int8 file form)"),
        ("bam_int8", "BAM + 8-bit weights (int8 x int1)"),
        ("float_int8", "float + 8-bit PTQ (reference)")]


def _sets(data: Path) -> tuple[QualityDataset, QualityDataset, QualityDataset]:
    return QualityDataset(data / "train.npz"), QualityDataset(data / "valid.npz"), QualityDataset(data / "test.npz")


def train_float(seed: int, epochs: int, data: Path, out: Path, lr: float) -> dict:
    train, valid, test = _sets(data)
    torch.manual_seed(seed)
    model = DnsmosCNN(DnsmosConfig())
    history = fit(model, train, valid, FitConfig(epochs=epochs, seed=seed, lr=lr))
    save_float(out / f"float_s{seed}.pt", model, ArchSpec("zoo", "dnsmos_cnn", DnsmosConfig().to_dict()),
               {"history": history})
    result = {"float": evaluate(model, test), "float_ptb": evaluate(binarize_activations(model), test)}
    qmodel = quantize(model, example_input(train), QuantConfig(calibration="mse"))
    calibrate(qmodel, calibration_batches(train, 4, 16, seed), "mse")
    result["float_int8"] = evaluate(qmodel, test)
    return {"history": history["history"], **result}


def train_bam(seed: int, epochs: int, data: Path, out: Path, binary_weights: bool, lr: float) -> dict:
    train, valid, test = _sets(data)
    recipe = BAM(BAMConfig(seed=seed, epochs=epochs, binary_weights=binary_weights, lr=lr))
    ctx = RecipeContext(DnsmosCNN(), train, valid, out)
    qmodel = recipe.run(ctx)
    name = "bam_bw" if binary_weights else "bam"
    save_quantized(out / f"{name}_s{seed}.pt", qmodel, recipe.saved_arch(None), recipe.describe(),
                   {"history": recipe.history})
    result = {name: evaluate(recipe.binarized, test), f"{name}_int8": evaluate(qmodel, test)}
    return {"history": recipe.history["history"], **result}


def table(out: Path) -> str:
    runs = [json.loads(p.read_text()) for p in sorted(out.glob("result_*.json"))]
    lines = ["| model | test MSE | test PCC | seeds |", "|---|---|---|---|"]
    summary = {}
    for key, label in ROWS:
        vals = [r[key] for r in runs if key in r]
        if not vals:
            continue
        mse, pcc = np.array([v["mse"] for v in vals]), np.array([v["pcc"] for v in vals])
        summary[key] = {"mse_mean": mse.mean(), "mse_std": mse.std(ddof=1) if len(vals) > 1 else 0.0,
                        "pcc_mean": pcc.mean(), "pcc_std": pcc.std(ddof=1) if len(vals) > 1 else 0.0,
                        "seeds": len(vals), "n_test": vals[0]["n"]}
        s = summary[key]
        lines.append(f"| {label} | {s['mse_mean']:.3f} ± {s['mse_std']:.3f} | {s['pcc_mean']:.3f} ± "
                     f"{s['pcc_std']:.3f} | {len(vals)} |")
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "figure2.md", text)
    write_text_atomic(out / "figure2.json", json.dumps(summary, indent=2))
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["train", "table"])
    parser.add_argument("--variant", choices=["float", "bam", "bam_bw"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--data", type=Path, default=Path("runs/bam_data"))
    parser.add_argument("--out", type=Path, default=Path("runs/bam"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.action == "table":
        print(table(args.out))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.variant == "float":
        result = train_float(args.seed, args.epochs, args.data, args.out, args.lr)
    else:
        result = train_bam(args.seed, args.epochs, args.data, args.out, args.variant == "bam_bw", args.lr)
    write_text_atomic(args.out / f"result_{args.variant}_s{args.seed}.json", json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))


if __name__ == "__main__":
    main()
