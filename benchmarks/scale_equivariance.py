"""How exactly a float model is scale-equivariant, f(g x) = g f(x): where the level stage is exact.

    python -m benchmarks.scale_equivariance [--items 8] [--out benchmarks/results/level]

The level stage (compressor/stages/level.py) deploys ``f(g x) / g``. For a
scale-equivariant model that equals ``f(x)`` and the stage costs nothing; for
one that is not, the stage moves the audio to the level the model was
trained at. Measured on the demo test split, per gain g (dB): the SNR of
``f(g x) / g`` against ``f(x)`` (how exact the stage is; float32 noise is
about 140 dB) and the SI-SNR of ``f(g x) / g`` against the clean speech.

Models: the shipped float Conv-TasNet (no encoder bias, gLN: equivariant up
to gLN's eps); the FQSE float pipeline around it (its splitter floors the
input onto the 16-bit PCM grid, which is not equivariant at low levels); and
the same Conv-TasNet with a bias added to its encoder (0.1 of the encoder
output's std at the demo level), the way a model with biases before its first
norm is built.
"""
from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import numpy as np
import torch

from compressor.checkpoint import load_model
from compressor.data.datasets import open_dataset
from compressor.fileio import write_text_atomic
from compressor.metrics import si_snr_np

GAINS_DB = (-30.0, -20.0, -12.0, -6.0, 0.0, 6.0, 12.0, 18.0)


def _snr(estimate: np.ndarray, reference: np.ndarray) -> float:
    noise = float(np.sum((estimate - reference) ** 2.0))
    return float(10 * np.log10(max(float(np.sum(reference ** 2.0)), 1e-30) / max(noise, 1e-30)))


def models(checkpoint: str, example: torch.Tensor) -> dict[str, torch.nn.Module]:
    from compressor.fqse import FQSEConvTasNet, FQSEModelConfig, FQSEPipeline, IOConfig

    base = load_model(checkpoint).model.eval()
    fqse = FQSEPipeline(FQSEConvTasNet(copy.deepcopy(base), FQSEModelConfig()).eval(), IOConfig())
    biased = copy.deepcopy(base)
    encoder = biased.encoder
    with torch.no_grad():
        std = float(encoder(example.reshape(1, 1, -1)).std())
        encoder.bias = torch.nn.Parameter(torch.full((encoder.out_channels,), 0.1 * std))
    return {"conv_tasnet (gLN, no encoder bias)": base, "fqse float pipeline (16-bit splitter)": fqse,
            "conv_tasnet + encoder bias": biased}


@torch.no_grad()
def measure(model: torch.nn.Module, dataset, items: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for gain_db in GAINS_DB:
        g = 10.0 ** (gain_db / 20.0)
        exact, quality = [], []
        for index in range(items):
            item = dataset[index]
            x = item["mixture"].reshape(1, -1)
            reference = model(x).reshape(-1).numpy()
            scaled = (model(x * g) / g).reshape(-1).numpy()
            exact.append(_snr(scaled, reference))
            quality.append(float(si_snr_np(scaled, item["sources"].numpy().sum(axis=0))))
        out[f"{gain_db:+g}"] = {"snr_vs_unscaled_db": float(np.mean(exact)), "si_snr": float(np.mean(quality))}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="examples/checkpoints/conv_tasnet_demo.pt")
    parser.add_argument("--items", type=int, default=8, help="demo test clips")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/level"))
    args = parser.parse_args(argv)
    dataset = open_dataset("demo:test")
    results = {name: measure(model, dataset, args.items)
               for name, model in models(args.checkpoint, dataset[0]["mixture"]).items()}
    lines = ["# Scale equivariance of float models (demo test split, "
             f"{args.items} clips): SNR of f(g x)/g against f(x), dB / SI-SNR of f(g x)/g, dB", "",
             "| model | " + " | ".join(f"g {k} dB" for k in next(iter(results.values()))) + " |",
             "|---|" + "---|" * len(GAINS_DB)]
    for name, per_gain in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{v['snr_vs_unscaled_db']:.1f} / {v['si_snr']:.2f}"
                                                 for v in per_gain.values()) + " |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "scale_equivariance.md", text)
    write_text_atomic(args.out / "scale_equivariance.json", json.dumps(results, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
