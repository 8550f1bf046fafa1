"""How an unrolled recurrence grows with the frames in a file's chunk: conversion time, file size, parity.

The exporters unroll each nn.GRU / nn.LSTM over the frames of the file's fixed
chunk (compressor/recurrent), so a longer chunk means a bigger graph. This
builds a CRN-like masker (Conv1d encoder with a 10 ms hop, a 64-unit GRU, a
sigmoid mask, a transposed-conv decoder; random weights, PTQ on random
audio), exports it to both targets at several chunk lengths and records the
wall time of each export (conversion plus verification against the
simulation), the file size and the verification result.

    python -m benchmarks.recurrent_unroll --out benchmarks/results/recurrent
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from compressor.errors import ExportError
from compressor.quant import calibrate, quantize
from exporters import ExportConfig, export

SAMPLE_RATE = 16000
HOP = 160


class GRUMasker(nn.Module):
    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.encoder = nn.Conv1d(1, channels, 2 * HOP, stride=HOP, padding=HOP // 2)
        self.gru = nn.GRU(channels, channels, batch_first=True)
        self.mask = nn.Linear(channels, channels)
        self.decoder = nn.ConvTranspose1d(channels, 1, 2 * HOP, stride=HOP, padding=HOP // 2)

    def forward(self, x):
        w = torch.relu(self.encoder(x.unsqueeze(1)))
        frames, _ = self.gru(w.transpose(1, 2))
        return self.decoder(w * torch.sigmoid(self.mask(frames)).transpose(1, 2)).squeeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/recurrent"))
    args = parser.parse_args()
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    qmodel = quantize(GRUMasker().eval(), torch.randn(2, SAMPLE_RATE) * 0.1)
    calibrate(qmodel, [torch.randn(2, SAMPLE_RATE, generator=gen) * 0.1 for _ in range(4)], progress=False)
    calibration = [(torch.randn(1, 4 * SAMPLE_RATE, generator=gen) * 0.1).numpy() for _ in range(2)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.chunks:
            for target in ("tflite", "onnx"):
                path = Path(tmp) / f"gru_{seconds}.{target}"
                cfg = ExportConfig(target=target, chunk_seconds=seconds, verify_chunks=2)
                start = time.perf_counter()
                try:
                    result = export(qmodel, target, path, config=cfg, calibration=calibration)
                    outcome = {"verified": bool(result.verification and result.verification.passed),
                               "float_ops": result.ops["float_op_count"], "kib": path.stat().st_size / 1024}
                except ExportError as exc:
                    outcome = {"verified": False, "error": str(exc).splitlines()[0][:200]}
                row = {"chunk_seconds": seconds, "frames": int(seconds * SAMPLE_RATE) // HOP, "target": target,
                       "export_s": round(time.perf_counter() - start, 1), **outcome}
                print(row, flush=True)
                rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "unroll.json").write_text(json.dumps(rows, indent=1))
    lines = ["| chunk (s) | frames | target | export + verify (s) | file (KiB) | verified |", "|---|---|---|---|---|---|"]
    for r in rows:
        kib = f"{r['kib']:.0f}" if "kib" in r else "-"
        lines.append(f"| {r['chunk_seconds']} | {r['frames']} | {r['target']} | {r['export_s']} | {kib} | "
                     f"{'yes' if r['verified'] else r.get('error', 'no')} |")
    (args.out / "unroll.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
