"""How much the I/O quantization can cost, in the terms of Theorem III.1 (../shared/seeds/003).

    python examples/fqse_io_sqnr.py [--checkpoint FLOAT.pt]

The float model's graph is quantized and calibrated (min/max), then run two
ways on the demo test split: with only its input and output quantizers on
(weights and every other activation float), and with every tensor 8-bit.
For each input-SNR bucket it prints the float model's SDR and the SQNR of
each quantized output against the float output, both measured at the float
output's own scale (the model is trained on SI-SNR, so its gain is free) and
energy-weighted over the bucket. A quantized model loses about
10 log10(1 + 10^((SDR - SQNR) / 10)) dB, so the I/O matters only where its
SQNR comes near the float SDR.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from compressor.checkpoint import load_model
from compressor.data import open_dataset
from compressor.demo import DEMO_CHECKPOINT
from compressor.fqse.io_config import io_quantizers
from compressor.recipes import RecipeContext
from compressor.recipes.vanilla import QATConfig, prepare_qat_model


def bucket(snr_db: float) -> str:
    return "low" if snr_db < 2 else ("mid" if snr_db <= 10 else "high")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=str(DEMO_CHECKPOINT))
    args = parser.parse_args()
    float_model = load_model(args.checkpoint).model.eval()
    train = open_dataset("demo:train", segment_seconds=2.0, seed=0)
    qmodel = prepare_qat_model(RecipeContext(load_model(args.checkpoint).model, train, None, None, progress=False),
                               QATConfig())
    quantizers = {n: q for n, q in qmodel.quantizers().items() if hasattr(q, "set_mode")}
    ins, outs = io_quantizers(qmodel)
    test = open_dataset("demo:test")
    rows: dict[str, dict[str, float]] = {}
    for mode in ("I/O only", "every tensor"):
        for name, q in quantizers.items():
            q.set_mode("quantize" if mode == "every tensor" or name in ins + outs else "float")
        sums: dict[str, list[float]] = {}
        for i in range(len(test)):
            item = test[i]
            x = item["mixture"].float().unsqueeze(0)
            clean = item["sources"].double()[0]
            with torch.no_grad():
                y_q, y_f = qmodel(x)[0, 0].double(), float_model(x)[0, 0].double()
            clean = clean * float((y_f * clean).sum() / (clean * clean).sum())
            for key in (bucket(float(item["snr_db"])), "all"):
                s = sums.setdefault(key, [0.0, 0.0, 0.0])
                s[0] += float((clean * clean).sum())
                s[1] += float(((y_q - y_f) ** 2).sum())
                s[2] += float(((y_f - clean) ** 2).sum())
        rows[f"SQNR, {mode} 8-bit"] = {k: 10 * np.log10(v[0] / v[1]) for k, v in sums.items()}
        rows["float SDR"] = {k: 10 * np.log10(v[0] / v[2]) for k, v in sums.items()}
    print("| dB | low | mid | high | all |\n|---|---|---|---|---|")
    for label in ("float SDR", "SQNR, I/O only 8-bit", "SQNR, every tensor 8-bit"):
        print(f"| {label} | " + " | ".join(f"{rows[label][k]:.1f}" for k in ("low", "mid", "high", "all")) + " |")


if __name__ == "__main__":
    main()
