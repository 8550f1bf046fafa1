"""The README's op table, measured: every op fixture exported to both targets.

    python -m exporters.op_table [--readme README.md]

For each op it lists the TFLite ops of the int8 file, the ONNX ops of the
QDQ file and the kernels onnxruntime runs after its QDQ fusion (QLinear*/QGemm
are integer; any other op runs in float between DequantizeLinear and
QuantizeLinear, the QDQ contract), plus how the exporter lowered it. With
``--readme`` the table between the op-table markers is replaced, and the
supported-ops list (written from the op registry) between its markers.
"""
from __future__ import annotations

import argparse
import re
import tempfile
from pathlib import Path

import onnx

from exporters.api import ExportConfig, export
from compressor.ops.docs import END as SUPPORTED_END, START as SUPPORTED_START, supported_ops_markdown
from compressor.ops.fixtures import FIXTURES, calibration_chunks, quantized_fixture
from compressor.ops.registry import moving_ops, onnx_ops_with_role

START, END = "<!-- op-table:start -->", "<!-- op-table:end -->"
_BOUNDARY = onnx_ops_with_role("qdq", "meta") | {"QUANTIZE", "DEQUANTIZE"}
_MOVE = moving_ops()


def _ort_kernels(path: Path, workdir: Path) -> list[str]:
    import onnxruntime as ort

    optimized = workdir / f"{path.stem}.ort-opt.onnx"
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(optimized)).graph.node]


def _compute(ops: list[str]) -> list[str]:
    return list(dict.fromkeys(op for op in ops if op not in _BOUNDARY and op not in _MOVE))


def _ort_cell(kernels: list[str]) -> str:
    cells = []
    for op in _compute(kernels):
        integer = op.startswith(("QLinear", "QGemm", "ConvInteger", "MatMulInteger", "QAttention"))
        cells.append(op if integer else f"{op} (float between DQ/Q)")
    return ", ".join(cells) or "data movement only"


def measure(workdir: Path) -> list[dict[str, str]]:
    rows = []
    for name in FIXTURES:
        qmodel = quantized_fixture(name)
        row = {"op": name}
        for target in ("tflite", "onnx"):
            path = workdir / f"{name}.{target}"
            result = export(qmodel, target, path, config=ExportConfig(target=target, verify_chunks=2),
                            calibration=calibration_chunks(2))
            ops = list(result.ops["count"])
            row[f"{target}_ops"] = ", ".join(_compute(ops)) or "data movement only"
            row[f"{target}_lsb"] = str(result.verification.max_lsb if result.verification else "-")
            row[f"{target}_float"] = str(result.ops["float_op_count"])
            if target == "onnx":
                row["ort"] = _ort_cell(_ort_kernels(path, workdir))
            row["lowering"] = "; ".join(result.rewrites) or "as traced"
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, str]]) -> str:
    head = ("| op | TFLite int8 ops | max LSB | ONNX QDQ compute ops | ORT kernels after fusion | max LSB | "
            "float ops (tflite/onnx) | lowering |\n|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['op']} | {r['tflite_ops']} | {r['tflite_lsb']} | {r['onnx_ops']} | {r['ort']} | {r['onnx_lsb']} | "
        f"{r['tflite_float']}/{r['onnx_float']} | {r['lowering']} |\n" for r in rows)
    return head + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", type=Path, help="Replace the table between the op-table markers in this file.")
    parser.add_argument("--registry-only", action="store_true",
                        help="Only rewrite the supported-ops list (no exports).")
    args = parser.parse_args()
    sections = {(SUPPORTED_START, SUPPORTED_END): supported_ops_markdown()}
    if not args.registry_only:
        with tempfile.TemporaryDirectory() as tmp:
            sections[(START, END)] = markdown(measure(Path(tmp)))
    if args.readme:
        text = args.readme.read_text()
        for (start, end), body in sections.items():
            if start not in text or end not in text:
                raise SystemExit(f"{args.readme} has no {start} ... {end} markers")
            text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: f"{start}\n{body}{end}", text,
                          flags=re.S)
        args.readme.write_text(text)
    print("\n".join(sections.values()))


if __name__ == "__main__":
    main()
