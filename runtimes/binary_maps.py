"""Read the binary activation maps out of an exported int8 file (checks that they hold only 0 and 1).

A bam model's maps are the int8 tensors on the grid scale 1, zero-point
-128 (uint8 in ONNX: zero-point 0): their codes must be zp or zp + 1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

BINARY_SCALE = 1.0


def onnx_binary_maps(path: str | Path, codes: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of every QuantizeLinear with scale 1 (the maps), each as real values (codes - zp)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
              if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"}
    inits.update(consts)
    wanted: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in inits:
            scale = inits[node.input[1]]
            zp = inits.get(node.input[2]) if len(node.input) > 2 else np.zeros((), np.uint8)
            if scale.size == 1 and float(scale) == BINARY_SCALE:
                wanted[node.output[0]] = int(zp)
    existing = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in existing:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(list(wanted), {session.get_inputs()[0].name: codes})
    return {name: v.astype(np.int32) - wanted[name] for name, v in zip(wanted, values)}


def tflite_binary_maps(path: str | Path, codes: np.ndarray) -> dict[str, np.ndarray]:
    """Every int8 tensor with scale 1 after one run (builtin kernels, all tensors kept), as codes - zp."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], codes)
    interp.invoke()
    found = {}
    for t in interp.get_tensor_details():
        scale, zp = t["quantization"]
        if t["dtype"] == np.int8 and scale == BINARY_SCALE and len(t["shape"]) == 4:
            # names are dropped at export (keep_tensor_names): key by index
            found[t["name"] or f"tensor {t['index']}"] = interp.get_tensor(t["index"]).astype(np.int32) - zp
    return found
