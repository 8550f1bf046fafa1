"""A 16-bit override measured end to end on the demo Conv-TasNet: sensitivity -> PTQ with the top tensors at 16 bits
-> both files -> deployed quality, size and latency against the all-int8 PTQ files.

    python -m benchmarks.precision16 [--top 8] [--work DIR] [--out benchmarks/results/precision]

Each step is a `compress` command (printed before it runs) and is skipped when
its output exists, so an interrupted run resumes. The tensors kept at 16 bits
are the ``--top`` most sensitive ones in ``compress eval --sensitivity`` (8
items, 2 s each) that a file can hold at 16 bits: not the model's own input or
output, and only ops LiteRT runs at 16 bits (the exporter refuses the others).
Writes sensitivity.md/json, eval.md/json (simulated, with an SNR sweep to
18 dB) and bench.md/json (deployed .tflite and .onnx files) to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from compressor.ops.registry import RECORDS, target_op

FLOAT = Path("examples/checkpoints/conv_tasnet_demo.pt")


def _run(args: list[str], output: Path) -> None:
    if output.exists():
        print(f"skip (exists): {output}")
        return
    print("$ " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(args, check=True)


def _wide_ok(op: str) -> bool:
    """The op registry knows a LiteRT int16 kernel for this op (by record name) and no reason against one."""
    record = next((r for r in RECORDS if r.name == op), None)
    ops = [target_op("tflite", name) for name in record.tflite] if record is not None else []
    known = [o for o in ops if o is not None]
    return any(o.int16 and o.int16_output for o in known) and not any(o.int16_note for o in known)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--top", type=int, default=8, help="Tensors kept at 16 bits.")
    parser.add_argument("--work", type=Path, default=Path("precision16_work"), help="Checkpoints and files.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/precision"))
    args = parser.parse_args()
    work, out = args.work, args.out
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    compress = [sys.executable, "-m", "compressor.cli.main"]
    ptq, ptq16 = work / "ptq.pt", work / "ptq16.pt"
    _run([*compress, "ptq", str(FLOAT), "--data", "demo", "--out", str(ptq)], ptq)
    _run([*compress, "eval", str(ptq), "--data", "demo", "--sensitivity", "--max-items", "8",
          "--json", str(out / "sensitivity.json"), "--md", str(out / "sensitivity.md")], out / "sensitivity.json")
    rows = json.loads((out / "sensitivity.json").read_text())["sensitivity"]["ptq"]["rows"]
    chosen = [r["quantizer"] for r in rows if not r.get("role") and _wide_ok(r["op"])][: args.top]
    print(f"16-bit tensors: {', '.join(chosen)}")
    rules = [a for name in chosen for a in ("--precision", f"#{name}=a16")]
    _run([*compress, "ptq", str(FLOAT), "--data", "demo", "--out", str(ptq16), *rules], ptq16)
    files = []
    for stem in ("ptq", "ptq16"):
        for target in ("tflite", "onnx"):
            path = work / f"{stem}.{target}"
            _run([*compress, "export", str(work / f"{stem}.pt"), "--target", target], path)
            files.append(str(path))
    _run([*compress, "eval", str(FLOAT), str(ptq), str(ptq16), "--data", "demo", "--snr-sweep", "--sweep-range",
          "0", "18", "6", "--json", str(out / "eval.json"), "--md", str(out / "eval.md")], out / "eval.json")
    _run([*compress, "bench", *files, "--reference", str(FLOAT), "--runs", "10", "--threads", "2",
          "--json", str(out / "bench.json"), "--md", str(out / "bench.md")], out / "bench.json")
    (out / "chosen.json").write_text(json.dumps({"top": args.top, "tensors": chosen}, indent=2) + "\n")
    print(f"results in {out}")


if __name__ == "__main__":
    main()
