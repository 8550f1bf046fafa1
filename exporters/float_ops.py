""""Every compute op is int8": the check each exported file must pass.

TFLite: an op computes in float when one of its tensors is float32.
ONNX (QDQ): the file is integer when every compute op reads only
DequantizeLinear outputs (or integer data) and feeds only QuantizeLinear
(data-movement ops in between keep the grid). Which of those ops ORT then
fuses into integer kernels is its business; ``ort_kernels`` reports it.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from compressor.errors import ExportError
from compressor.ops.registry import onnx_ops_with_role

# what each ONNX node type is to this check: the op registry's roles
ONNX_MOVE_OPS = onnx_ops_with_role("move")
ONNX_QDQ = onnx_ops_with_role("qdq")
ONNX_NON_COMPUTE = onnx_ops_with_role("meta")
ONNX_MASK_OPS = onnx_ops_with_role("mask")  # boolean masks (PReLU's x > 0): no float result, they feed Where
# fused into their producer or consumer by ORT's QDQ passes: Relu/Clip into the QuantizeLinear after them
# (zero-point at the range's bottom); Sqrt+Reciprocal is how torch.onnx writes one rsqrt
ONNX_FUSED_AFTER = onnx_ops_with_role("fused")


def tflite_ops(path: Path) -> dict[str, Any]:
    from exporters.tflite_export import op_report

    report = op_report(path)
    float_ops = [r["op"] for r in report if "float32" in r["inputs"] + r["outputs"]]
    return {"count": dict(Counter(r["op"] for r in report)), "float_ops": sorted(set(float_ops)),
            "float_op_count": len(float_ops)}


def onnx_ops(model: onnx.ModelProto) -> dict[str, Any]:
    graph = model.graph
    float_types = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    initializers = {t.name: t for t in graph.initializer}

    def from_dq(name: str) -> bool:
        node = producers.get(name)
        while node is not None and node.op_type in ONNX_MOVE_OPS:
            node = producers.get(node.input[0])
        if node is None:
            # an integer graph input or initializer, or a float constant operand (e.g. a clamp floor)
            return name in initializers or name not in {i.name for i in graph.input}
        return node.op_type in ("DequantizeLinear", "Constant") or node.op_type in ONNX_NON_COMPUTE | ONNX_MASK_OPS

    def to_q(name: str, depth: int = 0) -> bool:
        users = consumers.get(name, [])
        if not users:
            return False  # a float graph output
        for user in users:
            if user.op_type == "QuantizeLinear":
                continue
            if user.op_type in ONNX_MOVE_OPS | ONNX_FUSED_AFTER and depth < 8 \
                    and all(to_q(o, depth + 1) for o in user.output):
                continue
            if user.op_type in ONNX_NON_COMPUTE:
                continue
            return False
        return True

    islands = []
    for node in graph.node:
        if node.op_type in ONNX_QDQ | ONNX_MOVE_OPS | ONNX_NON_COMPUTE:
            continue
        if node.op_type in ONNX_FUSED_AFTER and all(to_q(o) for o in node.output):
            continue  # checked as part of the op that feeds it
        if node.op_type in ONNX_MASK_OPS and all(from_dq(i) for i in node.input if i):
            continue
        if not all(from_dq(i) for i in node.input if i) or not all(to_q(o) for o in node.output):
            islands.append(node.op_type)
    dtypes = {i.name: i.type.tensor_type.elem_type for i in list(graph.input) + list(graph.output)}
    float_io = sorted(n for n, t in dtypes.items() if t in float_types)
    return {"count": dict(Counter(n.op_type for n in graph.node)), "float_ops": sorted(set(islands)),
            "float_op_count": len(islands), "float_io": float_io}


def check(ops: dict[str, Any], allow_float: tuple[str, ...] | list[str], target: str) -> None:
    """Refuse a file with float compute ops that were not explicitly allowed."""
    allowed = {a.upper() for a in allow_float}
    bad = [op for op in ops["float_ops"] if op.upper() not in allowed]
    if ops.get("float_io"):
        bad.append(f"float input/output {', '.join(ops['float_io'])}")
    if bad:
        raise ExportError(
            f"the {target} file would compute in float: {', '.join(bad)}. Every op must be int8; "
            "export with --allow-float OPS to accept these (they are listed in the report)"
        )
