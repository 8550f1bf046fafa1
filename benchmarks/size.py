"""Model size: file bytes and the stored parameters counted by bit width.

``param_count_by_bits`` maps a bit width ("8", "32", ...) to how many
parameter values are stored at it: for a deployed file, the elements of its
constant tensors by dtype (int8 weights, int32 biases, float32 scales...);
for a checkpoint, the weights at their quantizer's bit width and every
other parameter (biases, norm gains, PReLU slopes) at 32. ``param_bytes``
is the sum of count x bits / 8: the model's payload without file overhead.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from compressor.errors import RuntimeLoadError

# bits of an element of each TFLite TensorType (schema enum values)
_TFLITE_BITS = {0: 32, 1: 16, 2: 32, 3: 8, 4: 64, 6: 8, 7: 16, 9: 8, 10: 64, 12: 64, 15: 32, 16: 16,
                17: 4, 18: 16, 19: 2, 20: 4, 21: 8, 22: 8}


def _result(path: Path, counts: Counter) -> dict:
    by_bits = {str(bits): int(n) for bits, n in sorted(counts.items())}
    return {"size_bytes": path.stat().st_size, "param_count_by_bits": by_bits,
            "param_bytes": int(sum(bits * n for bits, n in counts.items()) // 8)}


def tflite_params(path: Path) -> Counter:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    counts: Counter = Counter()
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for t in range(graph.TensorsLength()):
            tensor = graph.Tensors(t)
            buffer = model.Buffers(tensor.Buffer())
            if buffer is None or (buffer.DataLength() == 0 and buffer.Size() == 0):
                continue  # an activation, not a constant
            count = 1
            for dim in tensor.ShapeAsNumpy() if tensor.ShapeLength() else []:
                count *= int(dim)
            counts[_TFLITE_BITS.get(tensor.Type(), 32)] += count
    return counts


def onnx_params(path: Path) -> Counter:
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    counts: Counter = Counter()
    tensors = list(model.graph.initializer)
    tensors += [a.t for node in model.graph.node if node.op_type == "Constant" for a in node.attribute if a.name == "value"]
    for tensor in tensors:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type))
        counts[dtype.itemsize * 8] += int(numpy_helper.to_array(tensor).size)
    return counts


def checkpoint_params(path: Path) -> Counter:
    from compressor.checkpoint import load_model

    model = load_model(path).model
    counts: Counter = Counter()
    if hasattr(model, "weight_tensors"):  # a QuantizedModel
        quantized = model.weight_tensors()
        seen = {id(w) for _, w in quantized.values()}
        for quantizer, weight in quantized.values():
            counts[int(quantizer.bits)] += weight.numel()
        for p in model.model_parameters():
            if id(p) not in seen:
                counts[32] += p.numel()
    else:
        counts[32] += sum(p.numel() for p in model.parameters())
    return counts


def model_size(path: str | Path) -> dict:
    """{size_bytes, param_count_by_bits, param_bytes} of a .tflite, .onnx or checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise RuntimeLoadError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".tflite":
        return _result(path, tflite_params(path))
    if suffix == ".onnx":
        return _result(path, onnx_params(path))
    return _result(path, checkpoint_params(path))
