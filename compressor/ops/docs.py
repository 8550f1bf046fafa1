"""The README's "Supported ops" section, written from the op registry.

    python -m exporters.op_table --readme README.md   # rewrites it with the measured op table
"""
from __future__ import annotations

from compressor.ops.record import OpRecord
from compressor.ops.registry import RECORDS, op_name, target_op

START, END = "<!-- supported-ops:start -->", "<!-- supported-ops:end -->"

_KIND_TEXT = {
    "weighted": "int8 per-channel weights, int32 bias, int8 output",
    "compute": "int8 output",
    "fixed": "int8 output, fixed qparams",
    "relu": "fused into the op before it",
    "move": "keeps its input's qparams",
    "shared": "inputs and output share one scale",
    "same_grid": "int8 output on its input's grid",
    "mask": "boolean, not quantized",
    "decomposed": "rewritten after tracing",
    "recurrent": "nn.GRU/nn.LSTM substituted; int8 weights, gates and states, unrolled per frame in files",
}


def _aten(record: OpRecord) -> str:
    return ", ".join(f"`{op_name(t).removeprefix('aten.')}`" for t in record.aten)


def _ort(record: OpRecord) -> str:
    float_ops = [n for n in record.onnx if (op := target_op("onnx", n)) is not None and op.role == "float"]
    if not record.onnx:
        return "folded away"
    return "integer" if not float_ops else f"{', '.join(float_ops)} float between DQ/Q"


def _tflite_16bit(record: OpRecord) -> str:
    ops = [target_op("tflite", n) for n in record.tflite]
    if not ops:
        return "-"
    if all(op is not None and op.int16 and op.int16_output for op in ops):
        return "yes"
    if all(op is not None and op.int16 for op in ops):
        return "input only"
    return "no"


def supported_ops_markdown() -> str:
    quantized = [r for r in RECORDS if r.quantizable]
    refused = [r for r in RECORDS if not r.quantizable]
    lines = [
        f"{len(quantized)} ops ({sum(len(r.aten) for r in quantized)} ATen targets) are quantized; "
        f"{len(refused)} are refused with a hint. TFLite runs every listed op with an int8 kernel; onnxruntime "
        "fuses some into integer kernels and runs the rest in float between DequantizeLinear and QuantizeLinear "
        "(the QDQ contract). '16-bit in TFLite': LiteRT's int16 kernels were checked against the simulation "
        "for a precision override (onnxruntime runs any op at 16 bits, in float between int16 Q/DQ). The measured "
        "op table below shows what each fixture's files contain.",
        "",
        "| op | ATen targets | quantized as | TFLite ops | 16-bit in TFLite | ONNX ops | onnxruntime | "
        "parity fixtures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in quantized:
        kind = _KIND_TEXT[r.kind] + (f": {r.hint}" if r.kind == "decomposed" else "")
        lines.append(f"| {r.name} | {_aten(r)} | {kind} | {', '.join(r.tflite) or '-'} | {_tflite_16bit(r)} | "
                     f"{', '.join(r.onnx) or '-'} | {_ort(r)} | {', '.join(r.fixture) or '-'} |")
    lines += ["", "Refused (a float island is never left in a file):", ""]
    lines += [f"- {r.name} ({_aten(r)}): {r.hint}" for r in refused]
    return "\n".join(lines) + "\n"


__all__ = ["END", "START", "supported_ops_markdown"]
