"""16-bit activations in an int8 TFLite file: TFLite's "16x8" scheme (int16 activations, int8 weights, int64 biases).

A precision override (compressor/quant/precision.py) keeps a few activation
tensors at 16 bits: symmetric, zero-point 0, codes -32768..32767. The
lowering writes them as int16 quantize/dequantize pairs. litert-torch (0.10)
cannot take those pairs as they are in a mixed graph: an op whose input and
output quantizers differ in width either fails to convert (LOGISTIC: "x and y
must have same element type") or converts to an op LiteRT refuses at load
(CONV_2D with an int8 input and an int16 output), and the converter never
writes a QUANTIZE op for a DQ -> Q requantization. So the export goes in two steps:

1. ``int8_view``: before the conversion every int16 quantize/dequantize pair of
   the lowered graph is shown to the converter as an int8 pair *on the same
   scale* (zero-point 0). The converter sees a plain int8 graph, keeps every
   scale as it is, and quantizes the biases after a 16-bit tensor on the
   16-bit grid s_in16 * s_w (int32 codes; checked to fit beforehand).
2. ``widen``: after the conversion (and the channels-last pass) every tensor
   on a 16-bit scale is retyped int16, and each op is made to run with the
   dtypes its LiteRT kernel needs. The rule: an op with any int16 input or
   output runs entirely in int16.

   * An int8 activation input (scale s, zero-point z) gets a QUANTIZE onto an
     int16 tensor at s / 2^k, zero-point 0, with k = 8 when z = 0 and k = 7
     otherwise: codes (q - z) * 2^k, exact for every int8 code (|q - z| <= 255).
     An int8 constant operand (a clamp floor, a multiplier) is rewritten the
     same way, exactly, in the file. Weights stay int8 (16x8).
   * A CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED whose input is now int16
     gets an int64 bias: the same codes when its input was 16-bit in the
     simulation (the grid the simulation rounded the bias to), codes * 2^k on
     s_in * s_w / 2^k when the input was requantized from int8 (exact).
   * An int8 output is computed into an int16 temporary at s / 2^k (1/32768 for
     LOGISTIC and TANH, what their int16 kernels produce), then QUANTIZEd onto
     the int8 tensor: round twice (fine grid, then int8), which can differ from
     the simulation's single rounding by 1 LSB on a tie, within the export's
     tolerance.
   * Data-movement ops (RESHAPE, TRANSPOSE, PAD, CONCATENATION, MAX_POOL_2D...)
     and MAXIMUM / MINIMUM / SELECT only copy codes, so each input that is not
     on the output's grid is QUANTIZEd onto it (the rounding the simulation's
     output quantizer does) and the op runs in the output's dtype.

   The file's tensors are matched to the lowered graph's by scale: an 8-bit
   tensor with zero-point 0 on exactly a 16-bit tensor's scale is refused
   up front (it would be retyped too).

   Ops without an int16 kernel in LiteRT, or with an inaccurate one, are
   refused with an ``ExportError`` naming the layer and the op, rather than
   written into a file that the verification would then reject.

XNNPACK delegates no int16 op: a file with 16-bit tensors runs those ops (and
the QUANTIZE ops around them) on LiteRT's builtin reference kernels, in a
second partition. Measured (1 thread, Xeon): a 64-channel conv -> conv ->
sigmoid * x -> conv over 4000 frames takes 0.37 ms all-int8 and 9.6 ms with
the middle conv's output at 16 bits (that conv and LOGISTIC leave XNNPACK).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from compressor.errors import ExportError
from compressor.ops.registry import target_op
from exporters.lowering import LoweredModel
from exporters.verify import describe_tensors

qd = torch.ops.quantized_decomposed
_QDQ = (qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default)

_BIAS_SLOT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2}
_WEIGHT_SLOT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1}
_SAME_GRID = frozenset({"MAXIMUM", "MINIMUM", "SELECT"})  # no requantization in the kernel: inputs on the output's grid
_FIXED_OUTPUT = {"LOGISTIC": 1.0 / 32768, "TANH": 1.0 / 32768}  # int16 kernels: output scale 1/32768, zp 0
_INT32_MAX = 2**31 - 1


@dataclass
class WideTensors:
    """The 16-bit tensors of a lowered graph, as ``widen`` finds them in the converted file.

    scales: float32 scale -> the quantize node it belongs to (zero-point 0 implied);
    layers: (float32 scale, zero-point) of every activation quantize node -> "layer (op)" for messages.
    """

    scales: dict[float, str] = field(default_factory=dict)
    layers: dict[tuple[float, int], str] = field(default_factory=dict)

    def describe(self, scale: float, zero_point: int) -> str | None:
        return self.layers.get((_f32(scale), int(zero_point)))


def _f32(value: float) -> float:
    return float(np.float32(value))


def _describe(lowered: LoweredModel) -> dict[str, str]:
    return {name: f"layer {d['layer']!r} ({d['op']}, tensor {name})" for name, d in describe_tensors(lowered).items()}


@contextmanager
def int8_view(lowered: LoweredModel) -> Iterator[WideTensors | None]:
    """Show every int16 quantize/dequantize pair of ``lowered`` to the converter as int8 on the same scale.

    Yields what ``widen`` needs to find those tensors again in the converted
    file (None when the graph has no 16-bit tensor); the graph is restored on exit.
    """
    graph = lowered.module.graph
    wide_nodes = [n for n in graph.nodes if n.op == "call_function" and n.target in _QDQ
                  and n.args[5] == torch.int16]
    if not wide_nodes:
        yield None
        return
    wide = WideTensors()
    names = _describe(lowered)
    narrow_scales: dict[float, str] = {}
    for node in graph.nodes:
        if node.op != "call_function" or node.target != qd.quantize_per_tensor.default:
            continue
        scale, zero_point, dtype = float(node.args[1]), int(node.args[2]), node.args[5]
        where = names.get(node.name, f"tensor {node.name!r}")
        key = (_f32(scale), zero_point)
        if key not in wide.layers or "'(top level)'" in wide.layers[key]:  # a module's name says more
            wide.layers[key] = where
        if dtype == torch.int16:
            wide.scales[_f32(scale)] = where
        elif zero_point == 0:
            narrow_scales[_f32(scale)] = where
    for scale, where in wide.scales.items():
        if scale in narrow_scales:
            raise ExportError(
                f"{where} is 16-bit and {narrow_scales[scale]} 8-bit on exactly the same scale ({scale:g}, zero-point "
                "0): the TFLite exporter cannot tell them apart in the converted file; nudge one of the two "
                "ranges or keep both at the same width")
    _check_bias_range(lowered, names)
    saved = {n: n.args for n in wide_nodes}
    try:
        for node in wide_nodes:
            args = list(node.args)
            args[3], args[4], args[5] = -128, 127, torch.int8
            node.args = tuple(args)
        lowered.module.recompile()
        yield wide
    finally:
        for node, args in saved.items():
            node.args = args
        lowered.module.recompile()


def _check_bias_range(lowered: LoweredModel, names: dict[str, str]) -> None:
    """The converter stores biases as int32: after a 16-bit input (~128x finer grid) they must still fit."""
    gm = lowered.module
    aten = torch.ops.aten
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in (aten.conv1d.default, aten.conv2d.default,
                                                             aten.linear.default):
            continue
        if len(node.args) < 3 or not all(hasattr(a, "op") for a in node.args[:3]):
            continue
        x, w, b = node.args[:3]
        if x.target != qd.dequantize_per_tensor.default or x.args[5] != torch.int16 or b.op != "get_attr":
            continue
        try:
            bias = getattr(gm, b.target).detach().double().reshape(-1)
            if w.target == qd.dequantize_per_channel.default:
                w_scales = getattr(gm, w.args[1].target).detach().double().reshape(-1)
            else:
                w_scales = torch.tensor([float(w.args[1])], dtype=torch.float64)
        except (AttributeError, TypeError, IndexError, ValueError):
            continue
        codes = (bias / (float(x.args[1]) * w_scales)).abs().max()
        if float(codes) > _INT32_MAX:
            user = next(iter(node.users), None)
            where = names.get(user.name, f"op {node.name!r}") if user is not None else f"op {node.name!r}"
            raise ExportError(
                f"{where}: its bias after a 16-bit input needs {float(codes):.3g} codes on the int16 x int8 grid, "
                "more than the int32 the TFLite converter stores; this op cannot run at 16 bits in LiteRT "
                "(keep its input 8-bit)")


# -- the post-pass --------------------------------------------------------------------------------------------

def widen(model: Any, schema: Any, wide: WideTensors | None) -> dict[str, int]:
    """Retype the 16-bit tensors of a converted ``ModelT`` to int16 and make each op's dtypes consistent."""
    stats = {"int16_tensors": 0, "int16_ops": 0, "quantize_ops": 0, "int64_biases": 0}
    if not wide or not wide.scales:
        return stats
    for subgraph in model.subgraphs:
        _Widener(model, subgraph, schema, wide, stats).run()
    return stats


class _Widener:
    def __init__(self, model: Any, subgraph: Any, schema: Any, wide: WideTensors, stats: dict[str, int]) -> None:
        self.model, self.sg, self.schema, self.wide, self.stats = model, subgraph, schema, wide, stats
        self.tt = schema.TensorType
        codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.op_names = [codes.get(max(int(c.builtinCode), int(c.deprecatedBuiltinCode)), "?")
                         for c in model.operatorCodes]
        self._quantize_code: int | None = None
        self._requantized: dict[tuple, int] = {}  # (source tensor, dtype, scale, zp) -> int16/int8 copy

    # -- tensors -------------------------------------------------------------------
    def qparams(self, t: int) -> tuple[float, int] | None:
        q = self.sg.tensors[t].quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            return None
        zero_point = int(q.zeroPoint[0]) if q.zeroPoint is not None and len(q.zeroPoint) else 0
        return float(q.scale[0]), zero_point

    def is_constant(self, t: int) -> bool:
        tensor = self.sg.tensors[t]
        buffer = self.model.buffers[tensor.buffer] if tensor.buffer < len(self.model.buffers) else None
        return buffer is not None and ((buffer.data is not None and len(buffer.data) > 0) or bool(buffer.offset))

    def values(self, t: int, dtype: Any) -> np.ndarray:
        raw = np.asarray(self.model.buffers[self.sg.tensors[t].buffer].data, dtype=np.uint8).tobytes()
        return np.frombuffer(raw, dtype=dtype).copy()

    def new_buffer(self, values: np.ndarray) -> int:
        buffer = self.schema.BufferT()
        buffer.data = np.frombuffer(np.ascontiguousarray(values).tobytes(), dtype=np.uint8).copy()
        self.model.buffers.append(buffer)
        return len(self.model.buffers) - 1

    def new_tensor(self, like: int, tensor_type: int, scale: Any, zero_point: Any, buffer: int = 0,
                   suffix: str = "_int16") -> int:
        old = self.sg.tensors[like]
        tensor = self.schema.TensorT()
        tensor.shape = None if old.shape is None else np.asarray(old.shape, dtype=np.int32).copy()
        tensor.shapeSignature = None if old.shapeSignature is None else np.asarray(old.shapeSignature).copy()
        tensor.type = tensor_type
        tensor.buffer = buffer if buffer else self.new_buffer(np.zeros(0, np.uint8))
        name = old.name.decode() if isinstance(old.name, bytes) else (old.name or "")
        tensor.name = name + suffix
        quant = self.schema.QuantizationParametersT()
        quant.scale = np.asarray(scale, dtype=np.float32).reshape(-1)
        quant.zeroPoint = np.asarray(zero_point, dtype=np.int64).reshape(-1)
        old_q = old.quantization
        quant.quantizedDimension = int(old_q.quantizedDimension) if old_q is not None else 0
        tensor.quantization = quant
        self.sg.tensors.append(tensor)
        return len(self.sg.tensors) - 1

    def quantize_op(self, src: int, dst: int) -> Any:
        if self._quantize_code is None:
            for i, name in enumerate(self.op_names):
                if name == "QUANTIZE":
                    self._quantize_code = i
                    break
            else:
                code = self.schema.OperatorCodeT()
                code.builtinCode = code.deprecatedBuiltinCode = self.schema.BuiltinOperator.QUANTIZE
                code.version = 1
                self.model.operatorCodes.append(code)
                self.op_names.append("QUANTIZE")
                self._quantize_code = len(self.model.operatorCodes) - 1
        op = self.schema.OperatorT()
        op.opcodeIndex = self._quantize_code
        op.inputs = np.asarray([src], dtype=np.int32)
        op.outputs = np.asarray([dst], dtype=np.int32)
        self.stats["quantize_ops"] += 1
        return op

    def where(self, op: Any) -> str:
        """The layer an op belongs to, for messages: its output's (else an input's) quantize node."""
        tensors = [int(t) for t in list(op.outputs) + list(op.inputs) if t >= 0]
        for t in tensors:
            p = self.qparams(t)
            found = p and self.wide.describe(*p)
            if found:
                return f"{found}, file tensor {self.tensor_name(t)!r}"
        return f"file tensor {self.tensor_name(tensors[0])!r}" if tensors else "an op"

    def tensor_name(self, t: int) -> str:
        name = self.sg.tensors[t].name
        return name.decode() if isinstance(name, bytes) else (name or f"#{t}")

    # -- the pass ------------------------------------------------------------------
    def run(self) -> None:
        self.retype()
        ops = []
        for op in self.sg.operators:
            name = self.op_names[op.opcodeIndex]
            if name in ("QUANTIZE", "DEQUANTIZE") or not self.touches_int16(op):
                ops.append(op)
                continue
            self.check_kernel(op, name)
            self.stats["int16_ops"] += 1
            layout = target_op("tflite", name)  # moves=True: copies codes (the registry's data-movement ops)
            if name in _SAME_GRID or (layout is not None and layout.moves):
                ops.extend(self.movement(op, name))
            else:
                ops.extend(self.compute(op, name))
        self.sg.operators = ops

    def retype(self) -> None:
        """Every int8 tensor on a 16-bit scale (zero-point 0) becomes int16 (constants: same codes)."""
        for t, tensor in enumerate(self.sg.tensors):
            p = self.qparams(t)
            if tensor.type != self.tt.INT8 or p is None or p[1] != 0 or _f32(p[0]) not in self.wide.scales:
                continue
            if self.is_constant(t):
                tensor.buffer = self.new_buffer(self.values(t, np.int8).astype(np.int16))
            tensor.type = self.tt.INT16
            self.stats["int16_tensors"] += 1

    def touches_int16(self, op: Any) -> bool:
        return any(t >= 0 and self.sg.tensors[int(t)].type == self.tt.INT16 for t in list(op.inputs) + list(op.outputs))

    def check_kernel(self, op: Any, name: str) -> None:
        wide_output = any(self.sg.tensors[int(t)].type == self.tt.INT16 for t in op.outputs if t >= 0)
        kernel = target_op("tflite", name)
        if kernel is not None and kernel.int16 and (kernel.int16_output or not wide_output):
            return
        why = (kernel.int16_note if kernel is not None else "") or \
            f"no int16 {name} kernel checked against the simulation"
        raise ExportError(
            f"{self.where(op)}: TFLite op {name} cannot run at 16 bits in LiteRT ({why}). Remove the precision "
            "override that makes its input or output 16-bit, or export to ONNX, which runs it at 16 bits")

    def activation(self, t: int) -> bool:
        return t >= 0 and self.sg.tensors[t].type in (self.tt.INT8, self.tt.INT16)

    @staticmethod
    def fine_grid(scale: float, zero_point: int) -> tuple[float, int]:
        """The int16 grid that holds every int8 code of (scale, zero_point) exactly: s / 2^k, k = 8 or 7."""
        k = 8 if zero_point == 0 else 7
        return scale / 2**k, 2**k

    def to_int16(self, t: int, pre: list) -> tuple[int, int]:
        """An int16 copy of int8 tensor ``t`` on its fine grid, and the factor its codes were multiplied by."""
        scale, zero_point = self.qparams(t)
        fine, factor = self.fine_grid(scale, zero_point)
        key = (t, self.tt.INT16, _f32(fine), 0)
        if key in self._requantized:
            return self._requantized[key], factor
        if self.is_constant(t):
            codes = (self.values(t, np.int8).astype(np.int32) - zero_point) * factor
            new = self.new_tensor(t, self.tt.INT16, fine, 0, self.new_buffer(codes.astype(np.int16)))
        else:
            new = self.new_tensor(t, self.tt.INT16, fine, 0)
            pre.append(self.quantize_op(t, new))
        self._requantized[key] = new
        return new, factor

    def requantized(self, t: int, like: int, pre: list) -> int:
        """``t`` on the grid and dtype of tensor ``like`` (a QUANTIZE op, or a rewritten constant)."""
        target = self.sg.tensors[like]
        scale, zero_point = self.qparams(like)
        key = (t, target.type, _f32(scale), zero_point)
        if key in self._requantized:
            return self._requantized[key]
        suffix = "_int16" if target.type == self.tt.INT16 else "_int8"
        if self.is_constant(t):
            s, z = self.qparams(t)
            src_type = np.int16 if self.sg.tensors[t].type == self.tt.INT16 else np.int8
            out_type = np.int16 if target.type == self.tt.INT16 else np.int8
            info = np.iinfo(out_type)
            real = (self.values(t, src_type).astype(np.float64) - z) * s
            codes = np.clip(np.round(real / scale) + zero_point, info.min, info.max).astype(out_type)
            new = self.new_tensor(t, target.type, scale, zero_point, self.new_buffer(codes), suffix)
        else:
            new = self.new_tensor(t, target.type, scale, zero_point, suffix=suffix)
            pre.append(self.quantize_op(t, new))
        self._requantized[key] = new
        return new

    def movement(self, op: Any, name: str) -> list:
        """A data-movement op runs in its output's dtype; inputs off that grid are QUANTIZEd onto it."""
        outs = [int(t) for t in op.outputs if self.activation(int(t))]
        if not outs:
            return [op]
        grids = {(self.sg.tensors[t].type, self.qparams(t)) for t in outs}
        if len(grids) != 1 or self.qparams(outs[0]) is None:
            raise ExportError(f"{self.where(op)}: TFLite op {name} has outputs on different grids; it cannot run "
                              "at 16 bits in LiteRT")
        like = outs[0]
        target = (self.sg.tensors[like].type, self.qparams(like))
        pre: list = []
        inputs = [int(t) for t in op.inputs]
        for k, t in enumerate(inputs):
            if not self.activation(t) or (self.sg.tensors[t].type, self.qparams(t)) == target:
                continue
            op.inputs[k] = self.requantized(t, like, pre)
        return pre + [op]

    def compute(self, op: Any, name: str) -> list:
        """An arithmetic op runs entirely in int16: int8 inputs QUANTIZEd up, int8 outputs QUANTIZEd down."""
        pre, post = [], []
        weight_slot, bias_slot = _WEIGHT_SLOT.get(name), _BIAS_SLOT.get(name)
        factor = 1
        for k, t in enumerate(int(i) for i in op.inputs):
            if k in (weight_slot, bias_slot) or not self.activation(t):
                continue
            if self.sg.tensors[t].type == self.tt.INT8:
                if self.qparams(t) is None:
                    raise ExportError(f"{self.where(op)}: TFLite op {name} has a per-axis int8 operand; it cannot "
                                      "run at 16 bits in LiteRT")
                op.inputs[k], f = self.to_int16(t, pre)
                factor = f if k == 0 else factor
        if bias_slot is not None and len(op.inputs) > bias_slot and op.inputs[bias_slot] >= 0:
            op.inputs[bias_slot] = self.int64_bias(int(op.inputs[bias_slot]), factor)
        for k, t in enumerate(int(i) for i in op.outputs):
            if not self.activation(t) or self.sg.tensors[t].type != self.tt.INT8:
                continue
            scale, zero_point = self.qparams(t)
            fine = _FIXED_OUTPUT.get(name) or self.fine_grid(scale, zero_point)[0]
            temp = self.new_tensor(t, self.tt.INT16, fine, 0)
            op.outputs[k] = temp
            post.append(self.quantize_op(temp, t))
        return pre + [op] + post

    def int64_bias(self, t: int, factor: int) -> int:
        """The bias of an op with an int16 input: int64 codes (x ``factor`` when the input was requantized)."""
        tensor = self.sg.tensors[t]
        if tensor.type == self.tt.INT64 and factor == 1:
            return t
        src = np.int32 if tensor.type == self.tt.INT32 else np.int64
        codes = self.values(t, src).astype(np.int64) * factor
        q = tensor.quantization
        scale = np.asarray(q.scale, dtype=np.float64) / factor
        zero_point = np.zeros(len(scale), dtype=np.int64)
        new = self.new_tensor(t, self.tt.INT64, scale, zero_point, self.new_buffer(codes), suffix="")
        self.stats["int64_biases"] += 1
        return new


__all__ = ["WideTensors", "int8_view", "widen"]
