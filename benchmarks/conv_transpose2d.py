"""nn.ConvTranspose2d in the int8 files: the native op against the polyphase conv2d + depth-to-space form.

    python -m benchmarks.conv_transpose2d [--runs 300] [--warmup 30] [--out benchmarks/results/ops]

Four decoder layers of CRN/GTCRN shape, 8 -> 4 channels, each quantized and
calibrated like the parity fixtures (compressor/ops/fixtures.py):

- ``freq``: kernel (1, 4), stride (1, 2), padding (0, 1) on 64 frames x 128 bins;
- ``stride2``: kernel (3, 3), stride (2, 2) on 64 x 64;
- ``stride2_same``: the same with padding 1, output_padding 1 (the output exactly twice the input);
- ``grouped``: kernel (2, 3), stride (1, 2), padding (0, 1), groups 2 (GTCRN's decoder) on 64 x 128.

Each is exported to both targets in two forms:

- ``native``: the transposed conv as traced (the exporter's polyphase rewrite,
  ``exporters.lowering._Lowerer.lower_conv_transpose``, switched off, the
  float-op check and the verification skipped): what litert-torch and
  torch.onnx make of ConvTranspose2d between quantize/dequantize ops;
- ``polyphase``: what ``export()`` writes (a conv2d with prod(stride) x the
  output channels, then reshape/transpose/slice), verified within 1 LSB.

For each file it reports the compute ops and whether they run on integers
(TFLite: the op's tensors, ``tflite_export.op_report``; ONNX: onnxruntime's
kernels after its QDQ fusion, ``op_table._ort_kernels``: QLinear* are
integer, any other op runs in float between DequantizeLinear and
QuantizeLinear), XNNPACK's coverage of the .tflite, the largest output
difference to the simulation in LSBs of the output scale (3 random inputs,
as tests/test_export_parity.py measures it), and the median and p90
latency of one ``run_codes`` call on 1 thread over ``--runs`` runs (LiteRT
with XNNPACK and without it, onnxruntime CPU; ``device_runner.time_runs``).
Writes conv_transpose2d.json and conv_transpose2d.md to ``--out``.
Latencies are of this machine (shared cores): compare forms, not machines.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

from benchmarks.device_runner import time_runs
from compressor.ops.macs import mac_rows
from exporters import ExportConfig, export, lowering
from exporters.op_table import _ort_kernels
from exporters.sessions import open_session
from exporters.tflite_export import op_report, xnnpack_coverage

OUT = Path(__file__).resolve().parent / "results" / "ops"
CASES = {
    "freq": dict(frames=64, bins=128, layer=lambda: nn.ConvTranspose2d(8, 4, (1, 4), stride=(1, 2), padding=(0, 1)),
                 text="8->4, k(1,4), s(1,2), p(0,1); 64x128 in"),
    "stride2": dict(frames=64, bins=64, layer=lambda: nn.ConvTranspose2d(8, 4, 3, stride=2),
                    text="8->4, k(3,3), s(2,2); 64x64 in"),
    "stride2_same": dict(frames=64, bins=64, layer=lambda: nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1,
                                                                              output_padding=1),
                         text="8->4, k(3,3), s(2,2), p1, op1; 64x64 in"),
    "grouped": dict(frames=64, bins=128, layer=lambda: nn.ConvTranspose2d(8, 4, (2, 3), stride=(1, 2), padding=(0, 1),
                                                                          groups=2),
                    text="8->4, k(2,3), s(1,2), p(0,1), groups 2; 64x128 in"),
}
_ORT_INTEGER = ("QLinear", "QGemm", "ConvInteger", "MatMulInteger")
_BOUNDARY = {"QUANTIZE", "DEQUANTIZE", "QuantizeLinear", "DequantizeLinear"}


class Decoder(nn.Module):
    """One transposed conv on (batch, 8, frames * bins) audio features, reshaped to (batch, 8, frames, bins)."""

    def __init__(self, case: str) -> None:
        super().__init__()
        self.frames, self.conv = CASES[case]["frames"], CASES[case]["layer"]()

    def forward(self, x):
        return self.conv(x.reshape(x.shape[0], 8, self.frames, -1))


def quantized(case: str):
    from compressor.quant import QuantConfig, calibrate, quantize

    torch.manual_seed(0)
    shape = (8, CASES[case]["frames"] * CASES[case]["bins"])
    qmodel = quantize(Decoder(case).eval(), torch.randn(2, *shape), QuantConfig())
    calibrate(qmodel, [torch.randn(2, *shape) for _ in range(4)])
    return qmodel.eval(), shape


def export_form(qmodel, target: str, path: Path, form: str):
    """The file of one form; native: no polyphase rewrite, no float-op check, no verification."""
    cfg = ExportConfig(target=target, tolerance_lsb=1, verify_chunks=3, verify=(form == "polyphase"))
    if form == "polyphase":
        return export(qmodel, target, path, config=cfg)
    with mock.patch.object(lowering._Lowerer, "lower_conv_transpose", lambda self: None), \
            mock.patch("exporters.api.float_ops.check", lambda *a, **k: None):
        return export(qmodel, target, path, config=cfg)


def max_lsb(qmodel, path: Path, shape: tuple[int, ...]) -> int:
    session = open_session(path)
    spec_in, spec_out = session.metadata.inputs[0], session.metadata.outputs[0]
    gen = torch.Generator().manual_seed(1)
    worst = 0
    for _ in range(3):
        codes = spec_in.quantize(torch.randn(1, *shape, generator=gen).numpy().reshape(spec_in.shape))
        with torch.no_grad():
            sim = qmodel(torch.from_numpy(spec_in.dequantize(codes)))
        want = spec_out.quantize(sim.numpy()).astype(np.int32)
        got = session.run_codes(codes)[0].astype(np.int32)
        worst = max(worst, int(np.abs(got.reshape(-1) - want.reshape(-1)).max()))
    return worst


def latency_ms(path: Path, runs: int, warmup: int, **options) -> dict:
    session = open_session(path, threads=1, **options)
    spec = session.metadata.inputs[0]
    codes = spec.quantize(np.random.default_rng(0).standard_normal(spec.shape).astype(np.float32))
    times = time_runs(lambda: session.run_codes(codes), runs, warmup)
    return {"median": round(float(np.median(times)), 4), "p90": round(float(np.percentile(times, 90)), 4)}


def _counted(op: str, counts: Counter) -> str:
    return f"{op} x{counts[op]}" if counts[op] > 1 else op


def file_ops(path: Path, target: str, workdir: Path) -> dict:
    if target == "tflite":
        report = op_report(path)
        compute = [r for r in report if r["op"] not in _BOUNDARY]
        float_ops = sorted({r["op"] for r in compute if "float32" in r["inputs"] + r["outputs"]})
        counts = Counter(r["op"] for r in compute)
        ops = [f"{_counted(r['op'], counts)} ({'/'.join(sorted(set(r['inputs'] + r['outputs'])))})" for r in compute]
        coverage = xnnpack_coverage(path)
        return {"ops": list(dict.fromkeys(ops)), "float_ops": float_ops, "integer_only": not float_ops,
                "boundary": sorted({r["op"] for r in report if r["op"] in _BOUNDARY}),
                "xnnpack_undelegated": coverage["undelegated"], "xnnpack_partitions": coverage["partitions"]}
    kernels = [k for k in _ort_kernels(path, workdir) if k not in _BOUNDARY]
    counts = Counter(kernels)
    float_ops = sorted({k for k in kernels if k in ("ConvTranspose", "Conv", "MatMul", "Gemm")})
    ops = [_counted(k, counts) for k in dict.fromkeys(kernels)]
    return {"ops": ops, "float_ops": float_ops, "integer_only": not float_ops,
            "integer_kernels": sorted({k for k in kernels if k.startswith(_ORT_INTEGER)})}


def macs(qmodel, form: str, shape: tuple[int, ...]) -> int:
    """MACs of the transposed conv (the model's count) or of the deployed polyphase conv (zero taps included)."""
    x = torch.randn(1, *shape)
    if form == "native":
        return sum(r["macs"] for r in mac_rows(qmodel.graph_module, x))
    return sum(r["macs"] for r in mac_rows(lowering.lower(qmodel, int8_io=False).module, x))


def measure(case: str, form: str, target: str, workdir: Path, runs: int, warmup: int) -> dict:
    qmodel, shape = quantized(case)
    path = workdir / f"{case}_{form}.{target}"
    row = {"case": case, "layer": CASES[case]["text"], "form": form, "target": target,
           "macs": macs(qmodel, form, shape)}
    try:
        result = export_form(qmodel, target, path, form)
    except Exception as exc:  # the native form may not convert at all: that is a result
        return {**row, "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"}
    row["bytes"] = path.stat().st_size
    row["rewrites"] = result.rewrites
    try:  # the native file may convert and still not run (XNNPACK refusing it)
        row.update(file_ops(path, target, workdir))
        row["max_lsb"] = max_lsb(qmodel, path, shape)
        row["latency_ms"] = latency_ms(path, runs, warmup)
        if target == "tflite":
            row["latency_ms_builtin"] = latency_ms(path, runs, warmup, xnnpack=False)
    except Exception as exc:
        row["error"] = f"converts, does not run: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
    return row


def markdown(rows: list[dict], runs: int) -> str:
    lines = ["# ConvTranspose2d: native op vs polyphase conv2d + depth-to-space\n",
             f"`python -m benchmarks.conv_transpose2d --runs {runs}` (1 thread, median of {runs} runs; "
             f"{platform.machine()}, shared CPU: compare rows, not machines).\n",
             "| layer | form | target | compute ops in the file / ORT kernels | integer-only | max LSB vs sim | "
             "MACs | latency ms (p90) | LiteRT builtin ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            error = r["error"] if r["error"].startswith("converts") else \
                f"does not convert: {r['error'].split('error: ')[-1][:90]}"
            lines.append(f"| {r['layer']} | {r['form']} | {r['target']} | {error} | - | - | "
                         f"{r['macs']} | - | - |")
            continue
        lat = f"{r['latency_ms']['median']:.3f} ({r['latency_ms']['p90']:.3f})"
        builtin = (f"{r['latency_ms_builtin']['median']:.3f}" if "latency_ms_builtin" in r else "-")
        integer = "yes" if r["integer_only"] else f"no: {', '.join(r['float_ops'])} float"
        lines.append(f"| {r['layer']} | {r['form']} | {r['target']} | {', '.join(r['ops'])} | {integer} | "
                     f"{r['max_lsb']} | {r['macs']} | {lat} | {builtin} |")
    lines.append("")
    for form in ("native", "polyphase"):
        mine = [r for r in rows if r["form"] == form]
        ran = [r for r in mine if "error" not in r]
        lines.append(f"- {form}: {sum(r['integer_only'] for r in ran)} of {len(mine)} files integer-only, "
                     f"{len(mine) - len(ran)} do not convert or run, max {max((r['max_lsb'] for r in ran), default=0)} "
                     "LSB off the simulation where they run.")
    lines.append("- MACs: the transposed conv's own count (every input element times C_out/g x kernel); the polyphase "
                 "conv computes the kernel zero-padded to a multiple of the stride (3 -> 4 taps: 16/9 x) plus the "
                 "border phases that padding crops.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            for form in ("native", "polyphase"):
                for target in ("tflite", "onnx"):
                    rows.append(measure(case, form, target, Path(tmp), args.runs, args.warmup))
                    print(json.dumps(rows[-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"runs": args.runs, "warmup": args.warmup, "threads": 1, "machine": platform.machine(),
            "torch": torch.__version__}
    (args.out / "conv_transpose2d.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "conv_transpose2d.md").write_text(markdown(rows, args.runs))
    print(markdown(rows, args.runs))


if __name__ == "__main__":
    main()
