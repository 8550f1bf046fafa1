"""Bit-operations: per layer MACs x weight bits x activation bits, summed.

Counted layers are the ones that multiply-accumulate against weights or
another tensor: convolutions (plain, depthwise, transposed), fully connected
layers and matrix products. Elementwise ops (norms, PReLU, the mask
product) are not counted, as in the FQSE paper's GBOP column. Bit widths:
- deployed files: the dtype of the weight tensor and of the layer's input
  (int8/uint8 -> 8, float32 -> 32), read from the file;
- checkpoints: the bit width of the quantizer feeding each input of the
  layer (a 1-bit activation counts 1 bit), 32 where no quantizer feeds it
  (a float model: 32 x 32).
The count is for one run of ``audio_seconds`` of audio (a deployed file: its
fixed chunk).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from compressor.errors import RuntimeLoadError
from compressor.ops.macs import mac_row, mac_rows, traced
from compressor.ops.record import macs
from compressor.ops.registry import mac_ops, onnx_ops_with_role


_PASS_THROUGH_HOPS = 6  # data-movement nodes to look through for what feeds a layer


def summarize(rows: list[dict], audio_seconds: float, per_layer: bool) -> dict:
    total = sum(r["bops"] for r in rows)
    out = {"gbops": round(total / 1e9, 4), "macs": int(sum(r["macs"] for r in rows)),
           "audio_seconds": audio_seconds, "layers": len(rows)}
    if per_layer:
        out["per_layer"] = rows
    return out


# -- .tflite ------------------------------------------------------------------------------------
_TFLITE_MACS = mac_ops("tflite")


def _torch_weight_shape(op: str, shape: list[int]) -> list[int]:
    """A TFLite filter shape in PyTorch's order, which the registry's MAC formulas take."""
    if op == "DEPTHWISE_CONV_2D":  # [1, kh, kw, C] -> [C, 1, kh, kw]
        return [shape[3], 1, *shape[1:3]]
    if op == "CONV_2D":  # [Cout, kh, kw, Cin] -> [Cout, Cin, kh, kw]
        return [shape[0], shape[3], *shape[1:3]]
    if op == "TRANSPOSE_CONV":  # [Cout, kh, kw, Cin] -> [Cin, Cout, kh, kw]
        return [shape[3], shape[0], *shape[1:3]]
    return shape  # FULLY_CONNECTED [out, in]; BATCH_MATMUL's second operand


def _bits(dtype: object) -> int:
    return int(np.dtype(dtype).itemsize * 8)


def tflite_rows(path: Path) -> tuple[list[dict], int]:
    """Rows of every MAC layer of a .tflite and its input length (builtin kernels, no delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path),
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    rows = []
    for op in interp._get_ops_details():  # noqa: SLF001 - the interpreter's only op listing
        name = op["op_name"]
        formula = _TFLITE_MACS.get(name)
        if formula is None:
            continue
        ins = [tensors[i] for i in op["inputs"] if i >= 0]
        out = tensors[op["outputs"][0]]
        x, w = (ins[2], ins[1]) if name == "TRANSPOSE_CONV" else (ins[0], ins[1])  # TRANSPOSE_CONV: (shape, w, x)
        count = macs(formula, list(x["shape"]), _torch_weight_shape(name, list(w["shape"])), list(out["shape"]))
        rows.append(mac_row(out["name"] or f"op{op['index']}", name, count, _bits(w["dtype"]), _bits(x["dtype"])))
    first = interp.get_input_details()[0]["shape"]
    return rows, int(first[-1])


# -- .onnx --------------------------------------------------------------------------------------
_ONNX_MACS = mac_ops("onnx")


# ops that move int8 data without changing it (a QDQ file may put them between DequantizeLinear and a Conv)
_ONNX_DATA_MOVEMENT = onnx_ops_with_role("move")


def _onnx_runtime_shapes(model: object, names: list[str]) -> dict[str, list[int]]:
    """Shapes of ``names`` from one onnxruntime run on zeros.

    Static shape inference cannot follow the pad sizes the TorchScript
    exporter computes at run time, so the tensors are made graph outputs and
    the file runs once.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in existing)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    first = model.graph.input[0]
    dims = [d.dim_value or 1 for d in first.type.tensor_type.shape.dim]
    feed = {first.name: np.zeros(dims, helper.tensor_dtype_to_np_dtype(first.type.tensor_type.elem_type))}
    values = session.run([o.name for o in model.graph.output], feed)
    return {o.name: list(v.shape) for o, v in zip(model.graph.output, values)}


def onnx_rows(path: Path) -> tuple[list[dict], int]:
    """Rows of every MAC layer of an .onnx (shapes from one run, bits from the stored dtypes)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    dtypes = {i.name: i.data_type for i in graph.initializer}
    for info in list(graph.input) + list(graph.value_info):
        dtypes[info.name] = info.type.tensor_type.elem_type
    shapes = _onnx_runtime_shapes(model, [n for node in graph.node if node.op_type in _ONNX_MACS
                                          for n in (*node.input[:2], node.output[0])])
    shapes.update({i.name: list(i.dims) for i in graph.initializer})
    producer = {out: node for node in graph.node for out in node.output}

    def stored_bits(name: str) -> int:
        """Bits of the tensor as stored: looks through data movement and DequantizeLinear (QDQ) to the integers."""
        node = producer.get(name)
        for _ in range(_PASS_THROUGH_HOPS):
            if node is None or node.op_type not in _ONNX_DATA_MOVEMENT:
                break
            name = node.input[0]
            node = producer.get(name)
        if node is None or node.op_type != "DequantizeLinear":
            return _bits(helper.tensor_dtype_to_np_dtype(dtypes[name])) if name in dtypes else 32
        integer = node.input[0]
        if integer not in dtypes:  # an activation: QuantizeLinear's zero-point has its dtype (default uint8)
            quant = producer.get(integer)
            zero_point = quant.input[2] if quant is not None and len(quant.input) > 2 else None
            return _bits(helper.tensor_dtype_to_np_dtype(dtypes[zero_point])) if zero_point in dtypes else 8
        return _bits(helper.tensor_dtype_to_np_dtype(dtypes[integer]))

    rows = []
    for node in graph.node:
        if node.op_type not in _ONNX_MACS:
            continue
        quantized_op = node.op_type.startswith("QLinear")
        x, w = (node.input[0], node.input[3]) if quantized_op else (node.input[0], node.input[1])
        out_shape, w_shape, x_shape = shapes.get(node.output[0]), shapes.get(w), shapes.get(x)
        if not out_shape or not w_shape or 0 in out_shape:
            raise RuntimeLoadError(f"{path}: shape inference left {node.op_type} {node.name!r} without shapes")
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute):
            w_shape = list(reversed(w_shape))  # Gemm's B is [in, out] unless transB
        count = macs(_ONNX_MACS[node.op_type], x_shape or [], w_shape, out_shape)
        rows.append(mac_row(node.name or node.output[0], node.op_type, count, stored_bits(w), stored_bits(x)))
    first = graph.input[0].type.tensor_type.shape.dim
    return rows, int(first[len(first) - 1].dim_value)


# -- checkpoints --------------------------------------------------------------------------------
def checkpoint_rows(path: Path, chunk_samples: int) -> list[dict]:
    """Rows of a checkpoint run once on ``chunk_samples`` of audio (split FQSE input included)."""
    from compressor.checkpoint import load_model

    model = load_model(path).model
    if hasattr(model, "graph_module"):  # a QuantizedModel: its traced graph holds the quantizers
        shape = list(model.example_shapes[0])
        shape[0], shape[-1] = 1, chunk_samples
        graph_module, example = model.graph_module, torch.zeros(shape)
    else:
        example = torch.zeros(1, chunk_samples)
        graph_module = traced(model, example)
    return mac_rows(graph_module, example)


def model_bops(path: str | Path, chunk_samples: int | None = None, sample_rate: int = 16000,
               per_layer: bool = False) -> dict:
    """{gbops, macs, audio_seconds, layers[, per_layer]} of one run of the model.

    A deployed file runs on its own chunk; a checkpoint on ``chunk_samples``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        rows, chunk = tflite_rows(path)
    elif suffix == ".onnx":
        rows, chunk = onnx_rows(path)
    else:
        if not chunk_samples:
            raise RuntimeLoadError(f"{path}: a checkpoint's BOPs need an audio length (chunk_samples)")
        rows, chunk = checkpoint_rows(path, chunk_samples), chunk_samples
    return summarize(rows, round(chunk / sample_rate, 4), per_layer)
