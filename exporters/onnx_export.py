"""QDQ-ONNX from a lowered int8 graph.

``torch.onnx.export`` turns the lowered graph's quantize/dequantize ops into
QuantizeLinear/DequantizeLinear with our exact scales and zero-points. Four
rewrites then make it the file onnxruntime runs as integer kernels:
- weights: QuantizeLinear(+Clip) of a float initializer becomes an int8
  initializer (4x smaller file, nothing left to quantize at load time);
- biases of Conv/Gemm: a float initializer on its grid becomes int32 codes
  plus DequantizeLinear with scale s_in * s_w, the pattern ORT fuses into
  QLinearConv / QGemm;
- activations optionally move to uint8 (zero-point + 128, the same grid):
  ORT fuses Add/Mul into QLinearAdd/QLinearMul only for uint8 (DESIGN.md);
- the metadata JSON goes into ``metadata_props``.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from compressor.errors import ExportError
from exporters.lowering import LoweredModel
from exporters.metadata import METADATA_KEY, DeployMetadata
from exporters.sessions import ort_session_options

log = logging.getLogger(__name__)
OPSET = 20
WIDE_OPSET = 21  # the first opset whose QuantizeLinear/DequantizeLinear take int16 (ORT refuses it at 20)
_BIASED_OPS = {"Conv": 2, "Gemm": 2, "ConvTranspose": 2}


def torch_to_onnx(lowered: LoweredModel, example: torch.Tensor, path: Path) -> onnx.ModelProto:
    """The raw QDQ graph torch.onnx writes for the lowered module (int8 in, int8 out)."""
    with warnings.catch_warnings(), _quiet_torch_onnx():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(lowered.module, (example,), dynamo=True, opset_version=_opset(lowered),
                                        input_names=["audio_q"], verbose=False, optimize=False)
            _optimize(program)
            program.save(str(path))
        except Exception as exc:  # torch.onnx raises many types
            raise ExportError(f"torch.onnx.export failed: {str(exc).strip().splitlines()[0]}") from exc
    return onnx.load(str(path))


def _optimize(program: Any) -> None:
    """torch.onnx's optimization (onnxscript's ``optimize_ir``: constant folding, rewrite rules, clean-up)
    without its one rule that matches several output nodes, ``SlicesSplit``: it tries every pair of Slice
    nodes of the graph, and an unrolled recurrence has thousands (4 gate slices per frame), so it took most
    of an export (DPTNet at 0.5 s: ~20 of 23 min). Slices of one tensor stay Slices, which ORT runs as
    moves between QDQ pairs; every other rule and pass runs as torch.onnx runs it."""
    try:
        import onnx_ir as ir
        import onnx_ir.passes.common as common_passes
        from onnxscript import rewriter
        from onnxscript.optimizer import _constant_folding
        rules = tuple(r for r in rewriter._DEFAULT_REWRITE_RULES if r._target_pattern.has_single_output_node)
    except (ImportError, AttributeError):  # another onnxscript: its own optimizer, whatever it costs
        log.debug("onnxscript internals not found; running torch.onnx's optimizer")
        program.optimize()
        return
    ir.passes.Sequential(
        common_passes.InlinePass(),
        ir.passes.PassManager(
            [
                _constant_folding.FoldConstantsPass(
                    shape_inference=True, input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                    output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
                    should_fold=lambda node: None),
                rewriter.RewritePass(rules),
                common_passes.RemoveUnusedNodesPass(),
                common_passes.RemoveUnusedFunctionsPass(),
                common_passes.RemoveUnusedOpsetsPass(),
            ],
            steps=2, early_stop=True),
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.LiftSubgraphInitializersToMainGraphPass(),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    )(program.model)


def _opset(lowered: LoweredModel) -> int:
    wide = any(n.op == "call_function" and torch.int16 in n.args for n in lowered.module.graph.nodes)
    return WIDE_OPSET if wide else OPSET


class _quiet_torch_onnx:
    """torch.onnx (and onnxscript's passes: a line per deduplicated initializer) log every step at INFO and
    print progress; keep the CLI readable."""

    _LOGGERS = ("torch.onnx", "onnx_ir", "onnxscript")

    def __enter__(self) -> None:
        self._levels = {name: logging.getLogger(name).level for name in self._LOGGERS}
        for name in self._LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


class _Graph:
    """Index over an ONNX graph for the rewrites."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.inits = {t.name: t for t in self.graph.initializer}
        self._counter = 0
        self._constants: dict[str, onnx.NodeProto] | None = None  # output -> Constant node (rewrites add none)
        self._by_content: dict[tuple, str] = {}  # initializers by dtype, shape and bytes (add_init)

    def producers(self) -> dict[str, onnx.NodeProto]:
        return {out: n for n in self.graph.node for out in n.output}

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        found: dict[str, list[onnx.NodeProto]] = {}
        for n in self.graph.node:
            for i in n.input:
                found.setdefault(i, []).append(n)
        return found

    def const(self, name: str) -> np.ndarray | None:
        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        if self._constants is None:  # built once: a lookup per node made the rewrites quadratic
            self._constants = {o: n for n in self.graph.node if n.op_type == "Constant" for o in n.output}
        node = self._constants.get(name)
        if node is not None and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def add_init(self, array: np.ndarray, hint: str) -> str:
        """An initializer holding ``array``; one already added with the same content is reused (an unrolled
        recurrence asks for the same zero-points, scales and bias codes once per frame)."""
        array = np.asarray(array)
        key = (array.dtype.str, array.shape, array.tobytes())
        if not self._by_content:  # torch.onnx's own initializers too (the sigmoid grid's 1/256, a shared scale)
            for t in self.graph.initializer:
                value = numpy_helper.to_array(t)
                self._by_content.setdefault((value.dtype.str, value.shape, value.tobytes()), t.name)
        name = self._by_content.get(key)
        if name is not None and name in self.inits:
            return name
        self._counter += 1
        name = f"{hint}_{self._counter}"
        tensor = numpy_helper.from_array(array, name)
        self.graph.initializer.append(tensor)
        self.inits[name] = self.graph.initializer[-1]
        self._by_content[key] = name
        return name

    def prune(self) -> None:
        """Drop nodes and initializers nothing reads any more."""
        needed = {o.name for o in self.graph.output}
        keep: list[onnx.NodeProto] = []
        for node in reversed(list(self.graph.node)):
            if any(o in needed for o in node.output):
                keep.append(node)
                needed.update(i for i in node.input if i)
        if len(keep) != len(self.graph.node):
            del self.graph.node[:]
            self.graph.node.extend(reversed(keep))
            self._constants = None
        if any(t.name not in needed for t in self.graph.initializer):
            # rebuilt in one pass (removing one by one is quadratic in the number of initializers)
            kept = [t for t in self.graph.initializer if t.name in needed]
            del self.graph.initializer[:]
            self.graph.initializer.extend(kept)
            self.inits = {t.name: t for t in self.graph.initializer}


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fold_constant_quantization(g: _Graph) -> int:
    """QuantizeLinear(+Clip) of a float constant -> an int8 initializer."""
    folded = 0
    consumers = g.consumers()
    for node in list(g.graph.node):
        if node.op_type != "QuantizeLinear":
            continue
        weight = g.const(node.input[0])
        scale = g.const(node.input[1])
        zp = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if weight is None or scale is None:
            continue
        axis = _attr(node, "axis", 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * weight.ndim
            shape[axis] = -1
            scale_b, zp_b = scale.reshape(shape), (zp.reshape(shape) if zp is not None else 0)
        else:
            scale_b, zp_b = scale, (zp if zp is not None else 0)
        dtype = zp.dtype if zp is not None else np.uint8
        info = np.iinfo(dtype)
        codes = np.clip(np.round(weight / scale_b) + zp_b, info.min, info.max)
        out_name = node.input[0] + "_q"
        follow = consumers.get(node.output[0], [])
        last = node.output[0]
        # torch.onnx writes a Clip after QuantizeLinear for narrow ranges ([-127, 127])
        if len(follow) == 1 and follow[0].op_type == "Clip":
            lo, hi = g.const(follow[0].input[1]), g.const(follow[0].input[2])
            codes = np.clip(codes, lo, hi)
            last = follow[0].output[0]
        name = g.add_init(codes.astype(dtype), out_name)
        for user in consumers.get(last, []):
            for k, inp in enumerate(user.input):
                if inp == last:
                    user.input[k] = name
        folded += 1
    g.prune()
    return folded


def int32_biases(g: _Graph) -> int:
    """Float bias of Conv/Gemm -> int32 codes + DequantizeLinear(s_in * s_w)."""
    producers = g.producers()
    rewritten = 0
    before: dict[int, list[onnx.NodeProto]] = {}
    for node in list(g.graph.node):
        slot = _BIASED_OPS.get(node.op_type)
        if slot is None or len(node.input) <= slot or not node.input[slot]:
            continue
        bias = g.const(node.input[slot])
        x_dq, w_dq = producers.get(node.input[0]), producers.get(node.input[1])
        while w_dq is not None and w_dq.op_type == "Transpose":  # Gemm may read W^T
            w_dq = producers.get(w_dq.input[0])
        if bias is None or bias.dtype != np.float32 or x_dq is None or w_dq is None:
            continue
        if x_dq.op_type != "DequantizeLinear" or w_dq.op_type != "DequantizeLinear":
            continue
        x_zp = g.const(x_dq.input[2]) if len(x_dq.input) > 2 and x_dq.input[2] else None
        if x_zp is not None and x_zp.dtype == np.int16:
            continue  # ORT runs a 16-bit input's op in float: the bias stays a float on its (int64) grid
        s_x, s_w = g.const(x_dq.input[1]), g.const(w_dq.input[1])
        if s_x is None or s_w is None:
            continue
        scale = (np.float32(s_x) * s_w.astype(np.float32)).astype(np.float32).reshape(-1)
        if scale.size == 1:
            scale = np.full(bias.shape, scale[0], np.float32)
        codes = np.clip(np.round(bias.astype(np.float64) / scale), -(2**31), 2**31 - 1).astype(np.int32)
        q_name = g.add_init(codes, node.name + "_bias_q")
        s_name = g.add_init(scale, node.name + "_bias_scale")
        z_name = g.add_init(np.zeros(scale.shape, np.int32), node.name + "_bias_zp")
        out = node.name + "_bias_dq"
        before.setdefault(id(node), []).append(
            helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out], axis=0, name=out))
        node.input[slot] = out
        rewritten += 1
    if before:  # each DequantizeLinear right before its op, the node list rebuilt once
        nodes = list(g.graph.node)
        del g.graph.node[:]
        for node in nodes:
            g.graph.node.extend(before.get(id(node), []))
            g.graph.node.append(node)
        g._constants = None
    g.prune()
    return rewritten


_MOVES = ("Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Gather")  # one output each


def tanh_as_sigmoid(g: _Graph) -> int:
    """DQ(x, s) -> Tanh -> Q(1/128, 0)  =>  DQ(x, 2s) -> Sigmoid -> Q(1/256, -128): the same codes.

    onnxruntime has no integer Tanh (it runs it in float between DQ and Q);
    it fuses the sigmoid form into QLinearSigmoid. Reading the codes of x as
    2x and tanh(x) = 2 sigmoid(2x) - 1 give round(256 sigmoid(2x)) - 128 =
    round(128 tanh(x)): consumers keep dequantizing with (1/128, 0).
    """
    rewritten = 0
    producers, consumers = g.producers(), g.consumers()
    for node in list(g.graph.node):
        if node.op_type != "Tanh":
            continue
        # the DequantizeLinear feeding it, possibly through data movement (an LSTM's gate slice)
        chain: list[onnx.NodeProto] = []
        dq = producers.get(node.input[0])
        while dq is not None and dq.op_type in _MOVES and len(consumers.get(dq.output[0], [])) == 1:
            chain.append(dq)
            dq = producers.get(dq.input[0])
        users = consumers.get(node.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(users) != 1 or users[0].op_type != "QuantizeLinear":
            continue
        q = users[0]
        in_scale, out_scale, out_zp = g.const(dq.input[1]), g.const(q.input[1]), g.const(q.input[2])
        if in_scale is None or out_scale is None or out_zp is None or in_scale.size != 1 or out_zp.dtype != np.int8:
            continue
        if not (np.isclose(float(out_scale), 1 / 128) and int(out_zp) == 0):
            continue
        # a copy of the DequantizeLinear (others may read the original) that reads the codes as 2x
        value = f"{node.output[0]}_doubled_input"
        g.graph.node.append(helper.make_node(
            "DequantizeLinear", [dq.input[0], g.add_init((2 * in_scale).astype(in_scale.dtype), "tanh_in_scale"),
                                 *dq.input[2:]], [value], name=f"{node.name}_dq2"))
        if chain:  # the moves now read the doubled values; they feed only this tanh
            chain[-1].input[0] = value
        else:
            node.input[0] = value
        node.op_type = "Sigmoid"
        q.input[1] = g.add_init(np.asarray(1 / 256, dtype=out_scale.dtype), "sigmoid_scale")
        q.input[2] = g.add_init(np.asarray(-128, dtype=np.int8), "sigmoid_zp")
        rewritten += 1
    if rewritten:
        _topological_sort(g.graph)
        g.prune()
    return rewritten


def sums_of_squares_as_reduce(g: _Graph) -> int:
    """MatMul(x as rows [M, 1, K], x as columns [M, K, 1]) -> ReduceSumSquare(x as rows, last axis, keepdims).

    The lowering sums a norm's squares as an int8 matmul of the signal with itself (exporters/lowering.py).
    onnxruntime fuses that to QLinearMatMul, whose MLAS kernel takes 1.5 ms for one 256,000-long dot product
    (1 thread): 25 gLNs doubled the demo model's time. ReduceSumSquare between the same DequantizeLinear and
    QuantizeLinear runs in float like ORT's ReduceMean (the QDQ contract), 0.2 ms, and its float32 sum of the
    exact squares rounds to the same codes (each file's op-by-op check).
    """
    producers = g.producers()
    opset = next((o.version for o in g.model.opset_import if o.domain in ("", "ai.onnx")), 0)
    count = 0
    for node in list(g.graph.node):
        if node.op_type != "MatMul":
            continue
        rows, columns = (producers.get(i) for i in node.input)
        if not (rows is not None and columns is not None and rows.op_type == columns.op_type == "Reshape"
                and rows.input[0] == columns.input[0]):
            continue
        row_shape, column_shape = g.const(rows.input[1]), g.const(columns.input[1])
        if row_shape is None or column_shape is None or len(row_shape) != 3 or len(column_shape) != 3 \
                or row_shape[1] != 1 or column_shape[2] != 1 or row_shape[2] != column_shape[1]:
            continue
        if opset >= 18:
            axes = g.add_init(np.asarray([-1], dtype=np.int64), "sum_axes")
            reduce = helper.make_node("ReduceSumSquare", [rows.output[0], axes], list(node.output),
                                      name=f"{node.name}_sum_of_squares", keepdims=1)
        else:
            reduce = helper.make_node("ReduceSumSquare", [rows.output[0]], list(node.output),
                                      name=f"{node.name}_sum_of_squares", axes=[-1], keepdims=1)
        index = list(g.graph.node).index(node)
        g.graph.node.remove(node)
        g.graph.node.insert(index, reduce)
        count += 1
    if count:
        g.prune()
    return count


def _topological_sort(graph: onnx.GraphProto) -> None:
    produced_by = {o: n for n in graph.node for o in n.output}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []

    def visit(node: onnx.NodeProto) -> None:
        stack = [(node, False)]
        while stack:
            current, expanded = stack.pop()
            if id(current) in done:
                continue
            if expanded:
                done.add(id(current))
                order.append(current)
                continue
            stack.append((current, True))
            for i in current.input:
                producer = produced_by.get(i)
                if producer is not None and id(producer) not in done:
                    stack.append((producer, False))

    for node in list(graph.node):
        visit(node)
    del graph.node[:]
    graph.node.extend(order)


def activations_to_uint8(g: _Graph) -> int:
    """int8 activations -> uint8 on the same grid (zero-point + 128), input and output included."""
    moved = 0
    graph_inputs = {i.name: i for i in g.graph.input}
    graph_outputs = {o.name: o for o in g.graph.output}
    for node in g.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        data = node.input[0]
        if node.op_type == "DequantizeLinear" and data in g.inits:
            continue  # a weight or bias initializer
        zp = g.const(node.input[2])
        if zp is None or zp.dtype != np.int8:
            continue
        node.input[2] = g.add_init((zp.astype(np.int16) + 128).astype(np.uint8), "zp_u8")
        moved += 1
        if node.op_type == "DequantizeLinear" and data in graph_inputs:
            graph_inputs[data].type.tensor_type.elem_type = onnx.TensorProto.UINT8
        if node.op_type == "QuantizeLinear" and node.output[0] in graph_outputs:
            graph_outputs[node.output[0]].type.tensor_type.elem_type = onnx.TensorProto.UINT8
    g.prune()
    return moved


def build_onnx(lowered: LoweredModel, example: torch.Tensor, metadata: DeployMetadata, scratch: Path,
               uint8_activations: bool = True) -> tuple[onnx.ModelProto, dict[str, int]]:
    """The finished QDQ model (not yet written to its final path)."""
    model = torch_to_onnx(lowered, example, scratch)
    g = _Graph(model)
    stats = {
        "weights_folded_to_int8": fold_constant_quantization(g),
        "biases_to_int32": int32_biases(g),
        "tanh_as_sigmoid": tanh_as_sigmoid(g),
        "sums_of_squares_as_reduce": sums_of_squares_as_reduce(g),
        "activations_to_uint8": activations_to_uint8(g) if uint8_activations else 0,
    }
    # value_info still holds the pre-rewrite (int8) types; ORT re-infers what it needs
    del model.graph.value_info[:]
    # torch.onnx annotates every node with its Python stack and FX names: 3/4 of the file
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the rewritten ONNX graph is invalid: {str(exc).splitlines()[0]}") from exc
    return model, stats


_TENSOR_SESSION: dict[tuple, tuple[object, dict[str, str]]] = {}  # the last file's session (one entry)


def onnx_tensor_names(lowered: LoweredModel) -> dict[str, str]:
    """Each per-tensor quantize node of the lowered graph -> the name of its tensor in the ONNX file.

    torch.onnx re-traces the lowered graph and names its quantize ops afresh in graph order
    (``quantize_per_tensor``, ``quantize_per_tensor_1``, ...), whatever order the lowering created them in.
    """
    nodes = [n.name for n in lowered.module.graph.nodes
             if n.op == "call_function" and n.target == torch.ops.quantized_decomposed.quantize_per_tensor.default]
    return {name: "quantize_per_tensor" + (f"_{i}" if i else "") for i, name in enumerate(nodes)}


def intermediate_tensors(path: Path, onnx_names: dict[str, str], codes: np.ndarray) -> dict[str, np.ndarray]:
    """The file's tensors for the lowered graph's quantize nodes (``onnx_tensor_names``), for one input.

    The tensors become extra graph outputs. The session is kept for the next input of the same file (the
    verification asks once per chunk; building it is most of the time for a large unrolled graph).
    """
    import onnxruntime as ort

    stat = Path(path).stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size, tuple(onnx_names.items()))
    if key not in _TENSOR_SESSION:
        _TENSOR_SESSION.clear()
        model = onnx.load(str(path))
        produced = {o for n in model.graph.node for o in n.output}
        wanted = {name: value for name, value in onnx_names.items() if value in produced}
        existing = {o.name for o in model.graph.output}
        for value in wanted.values():
            if value not in existing:
                model.graph.output.append(helper.make_empty_tensor_value_info(value))
        options, _ = ort_session_options(model, name=str(path))  # the kernels the file's own session runs
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        _TENSOR_SESSION[key] = (session, wanted)
    session, wanted = _TENSOR_SESSION[key]
    values = session.run(list(wanted.values()), {session.get_inputs()[0].name: codes})
    return dict(zip(wanted, values))
