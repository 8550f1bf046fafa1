"""Lowering of a QuantizedModel into the graph the int8 runtimes execute.

The result is an FX graph over int8 tensors in the PT2E "reference" form both
converters understand: every quantizer becomes explicit
``quantized_decomposed`` quantize/dequantize ops with our exact scales and
zero-points, weights become int8 constants, biases float constants on their
int32 grid s_in * s_w (each converter stores them as int32), the
input is an int8 tensor and every output an int8 tensor.

Ops with no int8 kernel in a runtime are rewritten into ops that have one,
computing the same integers (DESIGN.md, "int8 forms of audio ops"):
- ``prelu(x, a)`` with one slope (Conv-TasNet's) -> ``leaky_relu(x, a)`` with
  the trained, quantized slope: one int8 op in both runtimes, which XNNPACK
  keeps inside its partition;
- ``prelu(x, a)`` with per-channel slopes -> ``where(x > 0, x, a * x)``;
  ``a * x`` takes the PReLU output's qparams, so both branches land on the
  grid QAT trained (GREATER + SELECT: int8, but XNNPACK leaves them to the
  builtin kernels);
- ``conv_transpose1d`` (kernel a multiple of the stride) -> a polyphase
  ``conv1d`` with ``stride`` times the output channels, then a reshape.
  Each output sample sums exactly the same int8 products, so it is exact.

Anything else that has no int8 form was already refused by ``quantize()``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed
from torch import fx, nn

from compressor.errors import ExportError
from compressor.quant.graph import QUANTIZER_ROOT, get_attr_value, quantizer_at, source_location
from compressor.quant.model import QuantizedModel
from compressor.ops.registry import record_for
from compressor.quant.quantizers import (WIDE_BITS, ActivationQuantizer, BiasQuantizer, FixedQParamsQuantizer,
                                         WeightQuantizer, bias_code_range)

aten = torch.ops.aten
qd = torch.ops.quantized_decomposed


@dataclass(frozen=True)
class TensorQParams:
    """How one int8 tensor of the deployed graph maps to real values."""

    scale: float
    zero_point: int
    qmin: int = -128
    qmax: int = 127

    @property
    def dtype(self) -> torch.dtype:
        return torch.int8 if self.qmax <= 127 else torch.int16

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point, "qmin": self.qmin, "qmax": self.qmax}


@dataclass
class LoweredModel:
    """The int8 graph plus what a runtime needs to feed and read it."""

    module: fx.GraphModule
    inputs: list[TensorQParams]
    outputs: list[TensorQParams]
    rewrites: dict[str, int] = field(default_factory=dict)


def _activation_qparams(q: nn.Module) -> TensorQParams:
    scale, zero_point = q.qparams()
    if q.bits not in (8, WIDE_BITS):
        raise ExportError(
            f"activation quantizer with {q.bits} bits: the runtimes carry activations in 8-bit tensors "
            f"(or {WIDE_BITS}-bit where a precision override asks for it); retrain with activation_bits=8"
        )
    return TensorQParams(float(scale), int(zero_point), q.qmin, q.qmax)


def _io_qparams(q: nn.Module, node: fx.Node, what: str) -> TensorQParams:
    p = _activation_qparams(q)
    if p.dtype != torch.int8:
        raise ExportError(f"model {what} {node.name!r} is quantized to {q.bits} bits; inputs and outputs of a file "
                          "are 8-bit: remove the precision override that matches it")
    return p


class _Lowerer:
    def __init__(self, qmodel: QuantizedModel, int8_io: bool) -> None:
        self.int8_io = int8_io
        self.gm = copy.deepcopy(qmodel.graph_module)
        self.graph = self.gm.graph
        self.rewrites: dict[str, int] = {}
        self._buffers = 0

    # -- helpers ---------------------------------------------------------
    def quantizer(self, node: fx.Node) -> nn.Module | None:
        return quantizer_at(self.gm, node)

    def constant(self, tensor: torch.Tensor, hint: str) -> fx.Node:
        name = f"_deploy_{hint}_{self._buffers}"
        self._buffers += 1
        self.gm.register_buffer(name, tensor.detach().clone())
        return self.graph.get_attr(name)

    def quantized_constant(self, codes: torch.Tensor, scales: torch.Tensor | float, axis: int | None,
                           qmin: int, qmax: int, dtype: torch.dtype, hint: str) -> fx.Node:
        """A constant on its integer grid, written as quantize -> dequantize of its float value.

        The converters fold exactly this pattern into an int8 (int32 for
        biases) constant; a bare integer constant they do not accept.
        """
        if axis is None:
            scale = float(scales)
            const = self.constant((codes.double() * scale).float(), hint)
            quant = self.graph.call_function(qd.quantize_per_tensor.default, (const, scale, 0, qmin, qmax, dtype))
            return self.graph.call_function(qd.dequantize_per_tensor.default, (quant, scale, 0, qmin, qmax, dtype))
        scales = torch.as_tensor(scales).float().contiguous()
        view = [-1 if d == axis else 1 for d in range(codes.dim())]
        const = self.constant((codes.double() * scales.double().view(view)).float(), hint)
        s_node = self.constant(scales, f"{hint}_scale")
        z_node = self.constant(torch.zeros(scales.numel(), dtype=torch.int64), f"{hint}_zp")
        quant = self.graph.call_function(qd.quantize_per_channel.default, (const, s_node, z_node, axis, qmin, qmax, dtype))
        return self.graph.call_function(qd.dequantize_per_channel.default, (quant, s_node, z_node, axis, qmin, qmax, dtype))

    def count(self, what: str) -> None:
        self.rewrites[what] = self.rewrites.get(what, 0) + 1

    # -- passes ------------------------------------------------------------
    def run(self) -> LoweredModel:
        self.drop_guards()
        self.lower_prelu()
        self.lower_batched_linear()
        self.lower_conv_transpose()
        self.lower_weights_and_biases()
        inputs = self.lower_inputs() if self.int8_io else self.input_qparams()
        self.lower_activations()
        outputs = self.lower_outputs()
        self.graph.eliminate_dead_code()
        self.graph.lint()
        # The quantizer modules are no longer called; keep the file small and
        # make sure nothing float-trained sneaks back in through them.
        delattr(self.gm, QUANTIZER_ROOT)
        self.gm.recompile()
        return LoweredModel(self.gm, inputs, outputs, self.rewrites)

    def drop_guards(self) -> None:
        # torch.export's input guards check float inputs; the deployed graph takes int8.
        for node in list(self.graph.nodes):
            if node.op == "call_module" and "guards" in str(node.target) and not node.users:
                self.graph.erase_node(node)

    def lower_prelu(self) -> None:
        for node in list(self.graph.nodes):
            if node.op != "call_function" or node.target != aten.prelu.default:
                continue
            users = list(node.users)
            out_q = self.quantizer(users[0]) if len(users) == 1 else None
            if not isinstance(out_q, ActivationQuantizer):
                raise ExportError(f"PReLU {node.name} at {source_location(node)} has no output quantizer of its own")
            x, slope = node.args
            rank = node.meta["val"].dim()
            alpha = self.scalar_slope(slope)
            if alpha is not None:
                with self.graph.inserting_before(node):
                    leaky = self.graph.call_function(aten.leaky_relu.default, (x, alpha))
                leaky.meta = dict(node.meta)
                node.replace_all_uses_with(leaky)
                self.graph.erase_node(node)
                self._erase_dead(slope)
                self.count("prelu (one slope) -> leaky_relu")
                continue
            with self.graph.inserting_before(node):
                positive = self.graph.call_function(aten.gt.Scalar, (x, 0.0))
                # the slope broadcasts over the channel axis (1) like PReLU's
                shape = [-1] + [1] * (rank - 2) if rank > 1 else [-1]
                slope_b = self.graph.call_function(aten.reshape.default, (slope, shape))
                scaled = self.graph.call_function(aten.mul.Tensor, (x, slope_b))
                # a*x lands on the PReLU output's grid: the same quantizer module
                scaled_q = self.graph.call_module(users[0].target, (scaled,))
                select = self.graph.call_function(aten.where.self, (positive, x, scaled_q))
            select.meta = dict(node.meta)
            node.replace_all_uses_with(select)
            self.graph.erase_node(node)
            self.count("prelu -> where(x > 0, x, a * x)")

    def scalar_slope(self, slope: fx.Node) -> float | None:
        """The trained (quantized) slope of a one-parameter PReLU, or None for per-channel slopes.

        One slope is a LEAKY_RELU, which XNNPACK and ORT run as one int8 op;
        ``where(x > 0, ...)`` takes GREATER + SELECT, which XNNPACK does not
        delegate, splitting the graph at every PReLU.
        """
        q = self.quantizer(slope)
        source = slope.args[0] if q is not None else slope
        if not isinstance(source, fx.Node) or source.op != "get_attr":
            return None
        value = get_attr_value(self.gm, source.target).detach()
        if value.numel() != 1:
            return None
        with torch.no_grad():
            value = q(value) if q is not None else value
        return float(value.reshape(-1)[0])

    def _erase_dead(self, node: fx.Node) -> None:
        while isinstance(node, fx.Node) and not node.users:
            inputs = [a for a in node.all_input_nodes]
            self.graph.erase_node(node)
            node = inputs[0] if len(inputs) == 1 else None

    def lower_batched_linear(self) -> None:
        """linear on (..., in) -> reshape to (N, in), linear, reshape back.

        A 2-D linear is one fully-connected op with its bias in both formats
        (ONNX Gemm, which ORT fuses to QGemm; TFLite FULLY_CONNECTED); on 3-D
        input torch.onnx writes MatMul + a float Add instead.
        """
        for node in list(self.graph.nodes):
            if node.op != "call_function" or node.target != aten.linear.default:
                continue
            x = node.args[0]
            val, weight_val = _meta_val(x), _meta_val(node.args[1])
            if val is None or val.dim() <= 2 or weight_val is None:
                continue
            out_features = int(weight_val.shape[0])
            with self.graph.inserting_before(node):
                lead = [self.graph.call_function(aten.sym_size.int, (x, d)) for d in range(val.dim() - 1)]
                flat = self.graph.call_function(aten.reshape.default, (x, [-1, int(val.shape[-1])]))
                fc = self.graph.call_function(aten.linear.default, (flat, *node.args[1:]), dict(node.kwargs))
                out = self.graph.call_function(aten.reshape.default, (fc, [*lead, out_features]))
            out.meta = dict(node.meta)
            node.replace_all_uses_with(out)
            self.graph.erase_node(node)
            self.count("linear on N-d input -> 2-d linear")

    def lower_conv_transpose(self) -> None:
        for node in list(self.graph.nodes):
            if node.op != "call_function" or node.target != aten.conv_transpose1d.default:
                continue
            args = list(node.args) + [None] * (8 - len(node.args))
            x, w_node, b_node, stride, padding, output_padding, groups, dilation = args
            stride = _single(stride, 1)
            padding = _single(padding, 0)
            output_padding = _single(output_padding, 0)
            groups = groups or 1
            dilation = _single(dilation, 1)
            w_q = self.quantizer(w_node) if isinstance(w_node, fx.Node) else None
            where = f"ConvTranspose1d {node.name} at {source_location(node)}"
            if not isinstance(w_q, WeightQuantizer) or w_node.args[0].op != "get_attr":
                raise ExportError(f"{where}: its weight is not a quantized constant")
            weight = get_attr_value(self.gm, w_node.args[0].target).detach()
            c_in, c_out, kernel = weight.shape
            if groups != 1 or dilation != 1 or output_padding != 0 or kernel % stride:
                raise ExportError(
                    f"{where}: only groups=1, dilation=1, output_padding=0 and a kernel that is a multiple of "
                    f"the stride lower to int8 (got groups={groups}, dilation={dilation}, "
                    f"output_padding={output_padding}, kernel={kernel}, stride={stride})"
                )
            taps = kernel // stride
            scales = w_q.qparams()
            if scales.numel() == 1:
                scales = scales.expand(c_out)
            codes = torch.clamp(torch.round(weight / scales.view(1, -1, 1)), w_q.qmin, w_q.qmax)
            # W'[o*S + p, c, k] = w[c, o, p + (taps - 1 - k) * S]
            poly = codes.reshape(c_in, c_out, taps, stride).flip(2).permute(1, 3, 0, 2).reshape(c_out * stride, c_in, taps)
            poly_scales = scales.repeat_interleave(stride)
            with self.graph.inserting_before(node):
                w_deq = self.quantized_constant(poly, poly_scales, 0, w_q.qmin, w_q.qmax, torch.int8, "polyphase_w")
                bias = None
                if isinstance(b_node, fx.Node):
                    b_q = self.quantizer(b_node)
                    if not isinstance(b_q, BiasQuantizer):
                        raise ExportError(f"{where}: its bias is not quantized")
                    b_value = get_attr_value(self.gm, b_node.args[0].target).detach()
                    bias = self.bias_constant(b_value.repeat_interleave(stride), b_q, poly_scales)
                conv = self.graph.call_function(aten.conv1d.default, (x, w_deq, bias, [1], [taps - 1]))
                # (B, C_out*S, T') -> (B, C_out, S, T') -> (B, C_out, T', S) -> (B, C_out, T'*S)
                split = self.graph.call_function(aten.unflatten.int, (conv, 1, [c_out, stride]))
                interleaved = self.graph.call_function(aten.permute.default, (split, [0, 1, 3, 2]))
                out = self.graph.call_function(aten.flatten.using_ints, (interleaved, 2, 3))
                if padding:
                    out = self.graph.call_function(aten.slice.Tensor, (out, 2, padding, -padding))
            out.meta = dict(node.meta)
            node.replace_all_uses_with(out)
            self.graph.erase_node(node)
            self.count("conv_transpose1d -> polyphase conv1d + reshape")

    def lower_weights_and_biases(self) -> None:
        for node in list(self.graph.nodes):
            q = self.quantizer(node)
            if isinstance(q, WeightQuantizer) and node.args[0].op == "get_attr":
                self.lower_weight(node, q)
        for node in list(self.graph.nodes):
            q = self.quantizer(node)
            if isinstance(q, BiasQuantizer):
                self.lower_bias(node, q)

    def lower_weight(self, node: fx.Node, q: WeightQuantizer) -> None:
        tensor = get_attr_value(self.gm, node.args[0].target).detach()
        scales = q.qparams()
        with self.graph.inserting_before(node):
            if q.axis is None:
                scale = float(scales.reshape(-1)[0])
                codes = torch.clamp(torch.round(tensor / scale), q.qmin, q.qmax)
                deq = self.quantized_constant(codes, scale, None, q.qmin, q.qmax, torch.int8, "w")
            else:
                view = [-1 if d == q.axis else 1 for d in range(tensor.dim())]
                codes = torch.clamp(torch.round(tensor / scales.view(view)), q.qmin, q.qmax)
                deq = self.quantized_constant(codes, scales, q.axis, q.qmin, q.qmax, torch.int8, "w")
        node.replace_all_uses_with(deq)
        self.graph.erase_node(node)

    def lower_bias(self, node: fx.Node, q: BiasQuantizer) -> None:
        bias = get_attr_value(self.gm, node.args[0].target).detach()
        with self.graph.inserting_before(node):
            deq = self.bias_constant(bias, q, q._weight_q.scale.detach().abs())
        node.replace_all_uses_with(deq)
        self.graph.erase_node(node)

    def bias_constant(self, bias: torch.Tensor, q: BiasQuantizer, weight_scales: torch.Tensor) -> fx.Node:
        """The bias rounded to the int32 grid s_in * s_w on which the runtimes store it."""
        s_in = float(q._input_q.scale.detach().abs())
        scales = (s_in * weight_scales).float()
        if scales.numel() == 1:
            scales = scales.expand(bias.numel())
        scales = scales.contiguous()
        codes = torch.clamp(torch.round(bias / scales), *bias_code_range(q._input_q.bits))
        # A float constant already on its int32 grid: the TFLite converter
        # quantizes it to int32 itself (it rejects an explicit int32 Q/DQ
        # pair), and the ONNX exporter rewrites it to int32 + DequantizeLinear.
        return self.constant((codes.double() * scales.double()).float(), "b")

    def lower_inputs(self) -> list[TensorQParams]:
        qparams = []
        for node in [n for n in self.graph.nodes if n.op == "placeholder"]:
            quantizers = [u for u in node.users if self.quantizer(u) is not None]
            if len(quantizers) != 1:
                raise ExportError(f"model input {node.name!r} has no input quantizer; quantize() the model first")
            q_node = quantizers[0]
            p = _io_qparams(self.quantizer(q_node), node, "input")
            with self.graph.inserting_after(node):
                deq = self.graph.call_function(qd.dequantize_per_tensor.default,
                                               (node, p.scale, p.zero_point, p.qmin, p.qmax, p.dtype))
            q_node.replace_all_uses_with(deq)
            self.graph.erase_node(q_node)
            qparams.append(p)
        return qparams

    def input_qparams(self) -> list[TensorQParams]:
        out = []
        for node in [n for n in self.graph.nodes if n.op == "placeholder"]:
            quantizers = [u for u in node.users if self.quantizer(u) is not None]
            if len(quantizers) != 1:
                raise ExportError(f"model input {node.name!r} has no input quantizer; quantize() the model first")
            out.append(_io_qparams(self.quantizer(quantizers[0]), node, "input"))
        return out

    def lower_activations(self) -> None:
        for node in list(self.graph.nodes):
            q = self.quantizer(node)
            if q is None:
                continue
            if not isinstance(q, (ActivationQuantizer, FixedQParamsQuantizer)):
                raise ExportError(f"unexpected quantizer {type(q).__name__} at {node.name}")
            p = _activation_qparams(q)
            with self.graph.inserting_before(node):
                quant = self.graph.call_function(qd.quantize_per_tensor.default,
                                                 (node.args[0], p.scale, p.zero_point, p.qmin, p.qmax, p.dtype))
                deq = self.graph.call_function(qd.dequantize_per_tensor.default,
                                               (quant, p.scale, p.zero_point, p.qmin, p.qmax, p.dtype))
                if getattr(q, "positive", False):
                    # the floor at one LSB: MAXIMUM with a representable constant, on the same grid
                    floor = self.graph.call_function(aten.clamp_min.default, (deq, p.scale))
                    quant = self.graph.call_function(qd.quantize_per_tensor.default,
                                                     (floor, p.scale, p.zero_point, p.qmin, p.qmax, p.dtype))
                    deq = self.graph.call_function(qd.dequantize_per_tensor.default,
                                                   (quant, p.scale, p.zero_point, p.qmin, p.qmax, p.dtype))
            deq.meta = dict(node.meta)
            node.replace_all_uses_with(deq)
            self.graph.erase_node(node)

    def lower_outputs(self) -> list[TensorQParams]:
        """Every output ends in its own quantize op: int8 out, or quantize -> dequantize for float out.

        An output computed by data movement after the last quantizer (a crop,
        a concat) is on that quantizer's grid, so re-quantizing it is exact.
        """
        output = next(n for n in self.graph.nodes if n.op == "output")
        qparams: list[TensorQParams] = []

        def finish(arg: Any) -> Any:
            if isinstance(arg, (list, tuple)):
                return type(arg)(finish(a) for a in arg)
            if not isinstance(arg, fx.Node):
                return arg
            p = self.grid_of(arg)
            if p.dtype != torch.int8:
                raise ExportError(f"model output {arg.name!r} is on a {WIDE_BITS}-bit grid; inputs and outputs of a "
                                  "file are 8-bit: remove the precision override that matches it")
            qparams.append(p)
            if arg.target == qd.dequantize_per_tensor.default and self.int8_io:
                return arg.args[0]
            if arg.target == qd.dequantize_per_tensor.default:
                return arg
            with self.graph.inserting_before(output):
                quant = self.graph.call_function(qd.quantize_per_tensor.default,
                                                 (arg, p.scale, p.zero_point, p.qmin, p.qmax, p.dtype))
                if self.int8_io:
                    return quant
                return self.graph.call_function(qd.dequantize_per_tensor.default,
                                                (quant, p.scale, p.zero_point, p.qmin, p.qmax, p.dtype))

        output.args = (finish(output.args[0]),)
        return qparams

    def grid_of(self, node: fx.Node) -> TensorQParams:
        """The qparams of a tensor: its dequantize op's, through data-movement and shared ops."""
        if node.target == qd.dequantize_per_tensor.default:
            _, scale, zero_point, qmin, qmax, _ = node.args
            return TensorQParams(scale, zero_point, qmin, qmax)
        rule = record_for(node.target) if node.op == "call_function" else None
        if rule is not None and rule.kind in ("move", "shared"):
            sources = node.args[0] if isinstance(node.args[0], (list, tuple)) else [node.args[0]]
            for source in sources:
                if isinstance(source, fx.Node):
                    return self.grid_of(source)
        raise ExportError(f"model output {node.name!r} is not quantized; every output needs a quantizer")


def _meta_val(node: Any) -> Any:
    """The traced value of ``node``, looking through inserted quantizer calls (which have none)."""
    while isinstance(node, fx.Node):
        if "val" in node.meta:
            return node.meta["val"]
        if node.op == "get_attr":
            return get_attr_value(node.graph.owning_module, node.target)
        node = node.args[0] if node.args else None
    return None


def _single(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        return int(value[0])
    return int(value)


def lower(qmodel: QuantizedModel, int8_io: bool = True) -> LoweredModel:
    """The int8 graph of ``qmodel`` (a copy; ``qmodel`` is not changed).

    ``int8_io``: the graph takes and returns int8 tensors. Without it the
    input and output stay float around their quantize/dequantize pairs
    (the form the TFLite converter turns into int8 input and output).
    """
    if not isinstance(qmodel, QuantizedModel):
        raise ExportError(f"expected a QuantizedModel, got {type(qmodel).__name__}; quantize it first")
    return _Lowerer(qmodel, int8_io).run()


__all__ = ["LoweredModel", "TensorQParams", "lower"]
