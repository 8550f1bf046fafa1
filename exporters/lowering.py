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
- ``conv_transpose1d`` / ``conv_transpose2d`` -> a polyphase ``conv1d`` /
  ``conv2d`` with prod(stride) times the output channels (same groups),
  then a depth-to-space reshape/transpose and a crop for padding and
  output_padding; the kernel is zero-padded to a multiple of the stride.
  Each output sample sums exactly the same int8 products, so it is exact
  (both runtimes run ConvTranspose/TRANSPOSE_CONV itself in float:
  benchmarks/results/ops/conv_transpose2d.md).
- ``mean(x * x)`` of a square with no quantizer (precision.ACCUMULATOR_BITS,
  a norm's variance by default) -> one int8 matmul of x with itself: each
  mean is a row times a column of x, so the int32 accumulator holds the sum
  of the exact squares; its output is quantized on N x the mean's scale
  (the same codes as the mean's) and a multiply by 1/N (code 1 on scale 1/N,
  an exact requantization) puts them on the mean's grid. One rounding, where
  the simulation rounds the exact mean (ties aside). The sum overflows int32
  only for a variance far beyond its grid: refused unless it is at least
  ``ACCUMULATOR_HEADROOM`` x the grid's top. (LiteRT runs it as an int8
  BATCH_MATMUL; the ONNX exporter writes ReduceSumSquare between the same
  DQ and Q, which ORT runs 7x faster than its QLinearMatMul,
  ``onnx_export.sums_of_squares_as_reduce``.)
- TFLite only: ``mean(x)`` over more than ``MEAN_IN_MATMUL_ABOVE`` values (a
  gLN's mean over channels and time) -> the same matmul with a broadcast
  column of ones (``lower_long_means``): XNNPACK's int8 MEAN saturates on
  long reductions on x86 without AVX-512.
- an elementwise op written twice on the same inputs but quantized on two
  grids (``x - m`` twice in a hand-written norm) -> the second on views with
  a leading unit dim, and ``x * x`` of a tensor the converter writes as a
  RESHAPE (a Conv1d output) -> ``|x| * |x|``: litert-torch's CSE and its
  reshape reordering would otherwise leave a float SUB or fail to convert
  (``keep_ops_apart``).

Anything else that has no int8 form was already refused by ``quantize()``.
"""
from __future__ import annotations

import copy
import math
import operator
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed
from torch import fx, nn

from compressor.errors import ExportError
from compressor.quant.graph import (QUANTIZER_ROOT, averaged_square, get_attr_value, grid_source, quantizer_at,
                                    source_location)
from compressor.quant.model import QuantizedModel
from compressor.ops.registry import record_for, target_op
from compressor.recurrent.cells import gru_step, lstm_step
from compressor.recurrent.quantized import RECURRENCE_ROOT, QuantizedRecurrence
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
        raise ExportError(f"model {what} {node.name!r} is quantized to {q.bits} bits; a file's inputs are 8-bit "
                          "(its outputs may be 16-bit): remove the precision override that matches it")
    return p


# TFLite: a mean over more values than this is summed in an int8 matmul (``lower_long_means``). Measured on AVX2:
# XNNPACK's MEAN of ReLU codes exact over 3,184 and 9,600 values, saturated from 12,736; its kernel was not read, so
# the bound keeps a wide margin (it would also hold for 16-bit lanes of 256 codes: 256 x 128 <= 2**15).
MEAN_IN_MATMUL_ABOVE = 256

# An int32 sum of squares may only overflow for a variance this many times the top of the mean's grid.
ACCUMULATOR_HEADROOM = 2.0


class _Lowerer:
    def __init__(self, qmodel: QuantizedModel, int8_io: bool, input_shape: Sequence[int] | None = None,
                 target: str | None = None) -> None:
        self.int8_io = int8_io
        self.target = target
        self.source = qmodel.graph_module
        self.input_shape = input_shape
        self.shapes: dict[str, tuple[int, ...]] | None = None  # node name -> shape for input_shape, when needed
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
        self.unroll_recurrences()
        self.lower_prelu()
        self.lower_batched_linear()
        self.lower_conv_transpose()
        self.lower_weights_and_biases()
        self.lower_accumulated_squares()
        if self.target == "tflite":
            self.lower_long_means()
        inputs = self.lower_inputs() if self.int8_io else self.input_qparams()
        self.keep_ops_apart()
        self.lower_activations()
        outputs = self.lower_outputs()
        self.graph.eliminate_dead_code()
        self.graph.lint()
        # The quantizer modules are no longer called; keep the file small and
        # make sure nothing float-trained sneaks back in through them.
        delattr(self.gm, QUANTIZER_ROOT)
        self.gm.recompile()
        return LoweredModel(self.gm, inputs, outputs, self.rewrites)

    def unroll_recurrences(self) -> None:
        """Each scan (nn.GRU / nn.LSTM) as its cell once per frame of the file's chunk, the same step the
        simulation loops over (compressor/recurrent/cells.py), so every cell tensor is an int8 tensor."""
        for node in list(self.graph.nodes):
            if node.op != "call_module" or not str(node.target).startswith(f"{RECURRENCE_ROOT}."):
                continue
            module = self.gm.get_submodule(str(node.target))
            where = f"{module.cell.upper()} {node.name} at {source_location(node)}"
            if module.frames is None:
                raise ExportError(f"{where}: the number of frames to unroll is unknown (lower() needs input_shape)")
            if module.cell == "lstm":
                gi, h0, c0, w, b, reverse = node.args
            else:
                (gi, h0, w, b, reverse), c0 = node.args, None
            hidden = int(get_attr_value(self.gm, _strip_quantizer(w).target).shape[1])
            # TFLite: one sigmoid over the gates (fewer ops, the same integers). Not ONNX: there the gates would
            # reach their Muls through a Split, which onnxruntime's QDQ fusion does not look through (the Muls ran
            # in float instead of QLinearMul), so the per-gate form stays
            qparams_of = (lambda name, names=module.quantizer_names: _activation_qparams(
                self.gm.get_submodule(f"{QUANTIZER_ROOT}.{names[name]}"))) if self.target == "tflite" else None
            ops = _GraphOps(self.graph, module.quantizer_names, qparams_of)
            with self.graph.inserting_before(node):
                zeros = self.constant(torch.zeros(module.batch, hidden), "state0")
                zeros.meta["val"] = torch.empty(module.batch, hidden, device="meta")
                h = ops.q("state", h0 if h0 is not None else zeros)
                c = ops.q("cell", c0 if c0 is not None else zeros) if module.cell == "lstm" else None
                outputs: list[Any] = [None] * module.frames
                order = range(module.frames - 1, -1, -1) if reverse else range(module.frames)
                for t in order:
                    gi_t = ops.select(gi, t)
                    if module.cell == "gru":
                        h = gru_step(ops, gi_t, h, w, b, hidden)
                    else:
                        h, c = lstm_step(ops, gi_t, h, c, w, b, hidden)
                    outputs[t] = h
                y = self.graph.call_function(aten.stack.default, (outputs, 1))
                y.meta["val"] = torch.empty(module.batch, module.frames, hidden, device="meta")
            results = {0: y, 1: h, 2: c}
            for user in list(node.users):
                user.replace_all_uses_with(results[int(user.args[1])])
                self.graph.erase_node(user)
            self.graph.erase_node(node)
            self.count(f"{module.cell} unrolled over {module.frames} frames")

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

    def shape_of(self, node: fx.Node, user: fx.Node) -> list[int]:
        """``node``'s shape for the file's input (``user``: the op that needs it, named in the error)."""
        val = _meta_val(node)
        if val is not None and all(isinstance(d, int) for d in val.shape):
            return [int(d) for d in val.shape]
        if self.shapes is None and self.input_shape is not None:
            self.shapes = _shapes_for(self.source, self.input_shape)
        if node.name in (self.shapes or {}):
            return list(self.shapes[node.name])
        raise ExportError(f"{user.name} at {source_location(user)}: its int8 form depends on the input's length; "
                          "lower() needs input_shape")

    def lower_accumulated_squares(self) -> None:
        """mean(x * x) with no quantizer on the square -> bmm(x as rows, x as columns) / N (module docstring)."""
        for square in list(self.graph.nodes):
            if not averaged_square(square) or any(self.quantizer(u) is not None for u in square.users):
                continue
            x = square.args[0]
            source = grid_source(self.gm, x)
            if source is None or _activation_qparams(self.quantizer(source)).dtype != torch.int8:
                raise ExportError(f"{square.name} at {source_location(square)}: the squares summed in a matmul "
                                  "need an 8-bit input; quantize with --precision '*:variance=a16' instead")
            p_x = _activation_qparams(self.quantizer(source))
            shape = self.shape_of(x, square)
            for mean in list(square.users):
                self.mean_as_matmul(mean, x, shape, p_x)
            self.graph.erase_node(square)

    def lower_long_means(self) -> None:
        """A mean over more than ``MEAN_IN_MATMUL_ABOVE`` int8 values -> bmm(x as rows, a column of ones) / N.

        XNNPACK's int8 MEAN (LiteRT's default path) saturates on long reductions on x86 CPUs without AVX-512:
        a gLN's mean over 64 channels x 2000 frames gave code 127 where the exact mean is 13 (AVX2, LiteRT
        2.x; exact on AVX-512 VNNI and on the builtin kernel; its SUM does the same). The same sum in an int8
        matmul with a broadcast column of ones (BATCH_MATMUL or FULLY_CONNECTED, LiteRT's builtin kernels) is
        exact everywhere (module docstring); short means (a LayerNorm over its features) stay MEANs. It costs
        time: the demo Conv-TasNet's 25 gLN means took LiteRT from 31 to 51 ms per 1 s chunk on that machine
        (benchmarks/results/tflite_long_means/).
        """
        for mean in list(self.graph.nodes):
            if mean.op != "call_function" or mean.target not in (aten.mean.dim, aten.mean.default):
                continue
            x = mean.args[0]
            source = grid_source(self.gm, x) if isinstance(x, fx.Node) else None
            if source is None or _activation_qparams(self.quantizer(source)).dtype != torch.int8:
                continue
            shape = self.shape_of(x, mean)
            dims = mean.args[1] if len(mean.args) > 1 and mean.args[1] is not None else range(len(shape))
            if math.prod(shape[int(d) % len(shape)] for d in set(dims)) > MEAN_IN_MATMUL_ABOVE:
                self.mean_as_matmul(mean, x, shape, _activation_qparams(self.quantizer(source)), ones=True)

    def mean_as_matmul(self, mean: fx.Node, x: fx.Node, shape: list[int], p_x: TensorQParams,
                       ones: bool = False) -> None:
        """mean(x * x) (or, with ``ones``, mean(x)) as an int8 bmm summing in int32, then / N."""
        rank = len(shape)
        dims = mean.args[1] if len(mean.args) > 1 and mean.args[1] is not None else list(range(rank))
        keepdim = bool(mean.args[2] if len(mean.args) > 2 else mean.kwargs.get("keepdim", False))
        reduced = sorted({int(d) % rank for d in dims})
        kept = [d for d in range(rank) if d not in reduced]
        rows, count = math.prod(shape[d] for d in kept), math.prod(shape[d] for d in reduced)
        p_mean = _output_grid(self.gm, mean)
        where = f"{mean.name} at {source_location(mean)}"
        if p_mean is None or p_mean.dtype != torch.int8:
            if ones:
                return  # a 16-bit mean stays a MEAN (LiteRT's builtin int16 kernel)
            raise ExportError(f"{where}: a mean of squares summed in a matmul needs an 8-bit output grid; "
                              "quantize with --precision '*:variance=a16' instead")
        worst = max(p_x.qmax - p_x.zero_point, p_x.zero_point - p_x.qmin) ** (1 if ones else 2) * count
        if worst > 2 ** 31 - 1 and ones:
            return  # over 16M codes could wrap int32: stays a MEAN
        if worst > 2 ** 31 - 1:
            overflow_at = (2 ** 31 - 1) * p_x.scale ** 2 / count  # the mean whose int32 sum no longer fits
            top = p_mean.scale * (p_mean.qmax - p_mean.zero_point)
            if overflow_at < ACCUMULATOR_HEADROOM * top:
                raise ExportError(f"{where}: the int32 sum of {count} squares overflows at a mean of "
                                  f"{overflow_at:.4g}, within {ACCUMULATOR_HEADROOM:g}x its grid's top {top:.4g}; "
                                  "quantize with --precision '*:variance=a16' instead")
        out_shape = [shape[d] if d in kept else 1 for d in range(rank)] if keepdim else [shape[d] for d in kept]
        g = self.graph
        with g.inserting_before(mean):
            flat = x if kept + reduced == list(range(rank)) else g.call_function(aten.permute.default,
                                                                                 (x, kept + reduced))
            as_rows = g.call_function(aten.reshape.default, (flat, [rows, 1, count]))
            if ones:
                one = self.quantized_constant(torch.ones(1, 1, 1), 1.0, None, -128, 127, torch.int8, "ones")
                as_columns = g.call_function(aten.expand.default, (one, [rows, count, 1]))
            else:
                as_columns = g.call_function(aten.reshape.default, (flat, [rows, count, 1]))
            sums = g.call_function(aten.reshape.default, (g.call_function(aten.bmm.default, (as_rows, as_columns)),
                                                          out_shape))
            # the sums on N x the mean's scale: the codes the mean's grid gives their mean
            sum_grid = (float(torch.tensor(p_mean.scale * count, dtype=torch.float32)),  # as files store scales
                        p_mean.zero_point, p_mean.qmin, p_mean.qmax, p_mean.dtype)
            sums = g.call_function(qd.dequantize_per_tensor.default,
                                   (g.call_function(qd.quantize_per_tensor.default, (sums, *sum_grid)), *sum_grid))
            inverse = self.quantized_constant(torch.ones(1), 1.0 / count, None, -128, 127, torch.int8, "inv_count")
            out = g.call_function(aten.mul.Tensor, (sums, inverse))
        out.meta = dict(mean.meta)
        mean.replace_all_uses_with(out)
        g.erase_node(mean)
        self.count("mean(x) over many values -> int8 matmul with ones (int32 sums)" if ones
                   else "mean(x * x) -> int8 matmul of x with itself (int32 sums)")

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
        """conv_transpose{1,2}d -> a polyphase conv{1,2}d with prod(stride) x the output channels + depth-to-space.

        Output sample t = q*S + p along a strided axis sums x[q - m] * w[p + m*S]
        over the taps m: phase p is an ordinary convolution with the
        flipped taps w[p::S], so one conv with C_out*S channels computes
        every phase, and reshapes/transposes interleave them. The kernel is
        zero-padded to a multiple of the stride (a dilation written into it
        as zero taps); padding and output_padding crop the full output. A
        stride-1 axis stays a (dilated) conv whose padding does the crop.
        Groups stay groups of the conv. Each output sums exactly the int8
        products of the transposed conv.
        """
        dims_of = {aten.conv_transpose1d.default: 1, aten.conv_transpose2d.input: 2}
        names = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
        for node in list(self.graph.nodes):
            if node.op != "call_function" or node.target not in dims_of:
                continue
            dims = dims_of[node.target]
            args = list(node.args) + [node.kwargs.get(n) for n in names[len(node.args):]]
            x, w_node, b_node = args[:3]
            stride, padding, output_padding, dilation = (_ints(args[i], dims, default)
                                                         for i, default in ((3, 1), (4, 0), (5, 0), (7, 1)))
            groups = int(args[6] or 1)
            w_q = self.quantizer(w_node) if isinstance(w_node, fx.Node) else None
            where = f"ConvTranspose{dims}d {node.name} at {source_location(node)}"
            if not isinstance(w_q, WeightQuantizer) or w_node.args[0].op != "get_attr":
                raise ExportError(f"{where}: its weight is not a quantized constant")
            weight = get_attr_value(self.gm, w_node.args[0].target).detach()
            c_in, c_out_g, kernel = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
            c_out = c_out_g * groups
            scales = w_q.qparams().reshape(-1)
            per_channel = scales.numel() > 1
            # per output channel: axis 1 (groups=1) or, depthwise ([C, 1, k...], groups=C), axis 0
            depthwise = c_out_g == 1 and c_in == groups
            if per_channel and not ((w_q.axis == 1 and groups == 1) or (w_q.axis == 0 and depthwise)):
                raise ExportError(f"{where}: weight scales along axis {w_q.axis} with groups={groups} are not per "
                                  "output channel; only per-tensor scales lower to int8 here")
            view = [1] * (2 + dims)
            if per_channel:
                view[w_q.axis] = -1
            codes = torch.clamp(torch.round(weight / scales.view(view)), w_q.qmin, w_q.qmax)
            out_scales = scales if per_channel else scales.expand(c_out)
            # per axis: the conv's dilation, padding and taps, the phases S and the crop (start, end) after it
            conv_dilation, conv_padding, taps, phases, crops = [], [], [], [], []
            for d in range(dims):
                k, s, p, op, dil = kernel[d], stride[d], padding[d], output_padding[d], dilation[d]
                span = (k - 1) * dil + 1
                if s == 1 and op == 0 and p <= span - 1:  # a dilated conv with the padding reduced by p
                    conv_dilation.append(dil)
                    conv_padding.append(span - 1 - p)
                    taps.append(k)
                    phases.append(1)
                    crops.append((0, 0))
                    continue
                if dil > 1:  # the dilated kernel, its gaps written as zero taps
                    spread = codes.new_zeros(*codes.shape[:2 + d], span, *codes.shape[3 + d:])
                    spread[(slice(None),) * (2 + d) + (slice(None, None, dil),)] = codes
                    codes = spread
                t = -(-max(span, span + op - p) // s)  # ceil: the kernel padded to whole taps
                pad = [0, 0] * dims
                pad[2 * (dims - 1 - d) + 1] = t * s - span
                codes = torch.nn.functional.pad(codes, pad)
                conv_dilation.append(1)
                conv_padding.append(t - 1)
                taps.append(t)
                phases.append(s)
                crops.append((p, t * s - span - op + p))
            # within each group j the conv's channels are phase-major for 2-D (channel (j*S + p)*C_out/g + o, the
            # NHWC order in which depth-to-space is one reshape) and output-major for 1-D (channel (j*C_out/g + o)*S
            # + p, as ConvTranspose1d has always been lowered);
            # W'[channel, c, m0, m1] = w[c, o, p0 + (t0-1-m0)*S0, p1 + (t1-1-m1)*S1], p = p0*S1 + p1
            split = [groups, c_in // groups, c_out_g] + [n for t, s in zip(taps, phases) for n in (t, s)]
            tap_dims = [3 + 2 * d for d in range(dims)]
            phase_dims = [4 + 2 * d for d in range(dims)]
            order = [0] + (phase_dims + [2] if dims == 2 else [2] + phase_dims) + [1] + tap_dims
            poly = codes.reshape(split).flip(tap_dims).permute(order)
            n_phases = math.prod(phases)
            poly = poly.reshape(c_out * n_phases, c_in // groups, *taps)

            def per_conv_channel(v: torch.Tensor) -> torch.Tensor:  # one value per output channel -> per conv channel
                v = v.reshape(groups, 1, c_out_g) if dims == 2 else v.reshape(groups, c_out_g, 1)
                return v.expand(groups, n_phases, c_out_g).reshape(-1) if dims == 2 else \
                    v.expand(groups, c_out_g, n_phases).reshape(-1)

            poly_scales = per_conv_channel(out_scales)
            conv_op = aten.conv1d.default if dims == 1 else aten.conv2d.default
            with self.graph.inserting_before(node):
                # per channel even for one scale (repeated): a quantize_per_tensor made here, before the
                # activations', would shift the names the ONNX verification matches tensors by
                w_deq = self.quantized_constant(poly, poly_scales, 0, w_q.qmin, w_q.qmax, torch.int8, "polyphase_w")
                bias = None
                if isinstance(b_node, fx.Node):
                    b_q = self.quantizer(b_node)
                    if not isinstance(b_q, BiasQuantizer):
                        raise ExportError(f"{where}: its bias is not quantized")
                    b_value = get_attr_value(self.gm, b_node.args[0].target).detach()
                    bias = self.bias_constant(per_conv_channel(b_value), b_q, poly_scales)
                out = self.graph.call_function(conv_op, (x, w_deq, bias, [1] * dims, conv_padding, conv_dilation,
                                                         groups))
                if dims == 1 and n_phases > 1:
                    # (B, C_out*S, T') -> (B, C_out, S, T') -> (B, C_out, T', S) -> (B, C_out, T'*S)
                    out = self.graph.call_function(aten.unflatten.int, (out, 1, [c_out, n_phases]))
                    out = self.graph.call_function(aten.permute.default, (out, [0, 1, 3, 2]))
                    out = self.graph.call_function(aten.flatten.using_ints, (out, 2, 3))
                elif dims == 2 and n_phases > 1:
                    users = list(node.users)
                    if len(users) == 1 and isinstance(self.quantizer(users[0]), ActivationQuantizer):
                        # the output's grid right after the conv (exact: the rest only moves values), so the
                        # conv is one int8 op however long the depth-to-space chain is
                        out = self.graph.call_module(users[0].target, (out,))
                    out, crops = self.depth_to_space(out, groups, phases, c_out, crops), []
                for d, (start, end) in enumerate(crops):
                    if start or end:
                        out = self.graph.call_function(aten.slice.Tensor,
                                                       (out, 2 + d, start, -end if end else sys.maxsize))
            out.meta = dict(node.meta)
            node.replace_all_uses_with(out)
            self.graph.erase_node(node)
            # the original weight and bias quantizers: lowered later they would take the first quantize node
            # names, which the ONNX verification matches by graph order
            for old in (w_node, b_node):
                if isinstance(old, fx.Node):
                    self._erase_dead(old)
            self.count(f"conv_transpose{dims}d -> polyphase conv{dims}d + reshape")

    def depth_to_space(self, y: fx.Node, groups: int, phases: list[int], c_out: int,
                       crops: list[tuple[int, int]]) -> fx.Node:
        """(B, C_out*SH*SW, H, W), channel (j*SH*SW + pH*SW + pW)*C_out/g + o -> (B, C_out, H*SH, W*SW), cropped.

        Written channels-last, as the TFLite file computes it: the first
        permute cancels the converter's transpose after its NHWC conv and the
        last one the transpose before the next NHWC op. With groups=1 and a
        stride along W only (CRN/GTCRN decoders) depth-to-space is then one
        RESHAPE; otherwise one or two 4-D TRANSPOSEs. No tensor is over 4-D:
        litert-torch's layout pass fails on 5-D reshapes between 4-D convs.
        """
        graph = self.graph
        s_h, s_w = phases
        t = graph.call_function(aten.permute.default, (y, [0, 2, 3, 1]))  # (B, H, W, channels)
        lead = [graph.call_function(aten.sym_size.int, (t, d)) for d in range(3)]
        if groups > 1:  # (BHW, g, S, C/g) -> (BHW, S, g, C/g): phase-major over all channels
            t = graph.call_function(aten.reshape.default, (t, [-1, groups, s_h * s_w, c_out // groups]))
            t = graph.call_function(aten.permute.default, (t, [0, 2, 1, 3]))
            t = graph.call_function(aten.reshape.default, (t, [*lead, -1]))
        if s_h > 1:  # (BH, W, SH, SW*C) -> (BH, SH, W, SW*C)
            t = graph.call_function(aten.reshape.default, (t, [-1, lead[2], s_h, s_w * c_out]))
            t = graph.call_function(aten.permute.default, (t, [0, 2, 1, 3]))
        width = graph.call_function(operator.mul, (lead[2], s_w)) if s_w > 1 else lead[2]
        t = graph.call_function(aten.reshape.default, (t, [lead[0], -1, width, c_out]))  # (B, H*SH, W*SW, C)
        for axis, (start, end) in zip((1, 2), crops):
            if start or end:
                t = graph.call_function(aten.slice.Tensor, (t, axis, start, -end if end else sys.maxsize))
        return graph.call_function(aten.permute.default, (t, [0, 3, 1, 2]))

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

    def keep_ops_apart(self) -> None:
        """Int8 ops that litert-torch's converter would merge or reorder into float (or invalid) ones.

        Two rewrites in its MLIR pipeline lose an int8 op (the parity grid's
        fixtures ``norm_twice`` and ``square_conv`` fail without this pass):

        - CSE merges identical float ops before it quantizes them: ``x - m``
          written twice, each with its own quantizer (trained steps, or MSE
          ranges from different calibration samples), becomes one SUB
          feeding QUANTIZE ops on two grids, which stays float (DEQUANTIZE ->
          SUB -> QUANTIZE). Each grid after the first computes its op on
          views of the inputs with k leading unit dims (unsqueeze, the op,
          squeeze: data movement, the same integers; RESHAPEs in the file),
          which no CSE merges with the original.
        - After quantizing, ``MoveBinaryOpBeforeReshape`` turns
          mul(reshape(t), reshape(t)) into reshape(mul(t, t)) and gives the
          RESHAPE the product's grid ("same scale constraint"): ``x * x``
          (``x ** 2``, ``square``) of a tensor the converter writes as a
          RESHAPE, e.g. a Conv1d output (CONV_2D -> TRANSPOSE -> RESHAPE).
          It becomes |x| * |x|, |x| on x's scale with zero-point qmin (exact:
          |q - z| <= qmax - qmin; one int8 ABS). Operands computed by
          elementwise ops (a norm's ``x - mean``) never come out of a
          RESHAPE and are left as they are.

        Runs on the quantizer calls, before ``lower_activations`` writes
        them out, so the new tensors are quantized (and named) like the rest.
        """
        extra: dict[fx.Node, int] = {}
        rep = _value_numbers(self.gm)
        for members in _equal_nodes(rep):
            grids = [_output_grid(self.gm, m) for m in members]
            if None in grids or len(set(grids)) == 1 or not _elementwise(members[0]):
                continue
            order = list(dict.fromkeys(grids))  # the first grid keeps its op as it is
            for m, g in zip(members, grids):
                if order.index(g):
                    extra[m] = order.index(g)
        for node in list(self.graph.nodes):
            x = self.squared_reshape(node, rep)
            if x is None:
                continue
            with self.graph.inserting_before(node):
                mag = self.graph.call_function(aten.abs.default, (x,))
                mag_q = self.graph.call_module(self.magnitude_quantizer(x), (mag,))
                mul = self.graph.call_function(aten.mul.Tensor, (mag_q, mag_q))
            mag.meta = {k: v for k, v in node.meta.items() if k != "val"}
            mul.meta = dict(node.meta)
            node.replace_all_uses_with(mul)
            if node in extra:
                extra[mul] = extra.pop(node)
            self.graph.erase_node(node)
            self.count("x * x of a reshaped tensor -> |x| * |x|")
        for node, k in extra.items():
            self.on_unit_dims(node, k)

    def squared_reshape(self, node: fx.Node, rep: dict[fx.Node, fx.Node]) -> fx.Node | None:
        """x of ``x * x`` / ``x ** 2`` / ``square(x)`` when the converter may write x as a RESHAPE, else None."""
        if node.op != "call_function" or _output_grid(self.gm, node) is None:
            return None
        if node.target == aten.mul.Tensor and rep.get(node.args[0], 0) is rep.get(node.args[1], 1):
            x = node.args[0]
        elif node.target in (aten.pow.Tensor_Scalar, aten.square.default) and node.args[1:] in ((), (2,), (2.0,)):
            x = node.args[0]
        else:
            return None
        source = grid_source(self.gm, x) if isinstance(x, fx.Node) else None
        q = self.quantizer(source) if source is not None else None
        if not isinstance(q, ActivationQuantizer) or q.bits != 8 or _from_elementwise(self.gm, x):
            return None
        return x

    def magnitude_quantizer(self, x: fx.Node) -> str:
        """A quantizer for |x|: x's scale, zero-point qmin (every |q - z| fits), registered next to the others."""
        source = self.quantizer(grid_source(self.gm, x))
        q = ActivationQuantizer(bits=source.bits)
        with torch.no_grad():
            q.scale.copy_(source.scale.detach().abs())
            q.zero_point.copy_(torch.tensor(float(q.qmin)))
        name = f"magnitude_{self._buffers}"
        self._buffers += 1
        getattr(self.gm, QUANTIZER_ROOT).add_module(name, q)
        return f"{QUANTIZER_ROOT}.{name}"

    def on_unit_dims(self, node: fx.Node, k: int) -> None:
        """``node`` computed on its inputs with ``k`` leading unit dims, its quantized output squeezed back."""
        args = list(node.args)
        with self.graph.inserting_before(node):
            for i, arg in enumerate(node.args):
                if not isinstance(arg, fx.Node):
                    continue
                view = arg
                for _ in range(k):
                    view = self.graph.call_function(aten.unsqueeze.default, (view, 0))
                source = grid_source(self.gm, arg)
                if source is not None:
                    # quantized again on its own grid (exact): the op's operand is then a dequantize, not a
                    # float reshape the converter would move past the op (and merge again)
                    view = self.graph.call_module(source.target, (view,))
                args[i] = view
            new = self.graph.call_function(node.target, tuple(args), dict(node.kwargs))
        new.meta = {key: v for key, v in node.meta.items() if key != "val"}
        for quant in list(node.users):
            with self.graph.inserting_before(quant):
                back = self.graph.call_module(quant.target, (new,))
                back = self.graph.call_function(aten.squeeze.dims, (back, list(range(k))))
                back = self.graph.call_module(quant.target, (back,))
            quant.replace_all_uses_with(back)
            self.graph.erase_node(quant)
        self.graph.erase_node(node)
        self.count("op on unit-dim views (an equal op on another grid: kept apart in the converter)")

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
            p = self.grid_of(arg)  # a 16-bit output (a precision rule) leaves the file as int16
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


def _frozen(value: Any, rep: dict[fx.Node, Any]) -> Any:
    if isinstance(value, fx.Node):
        return rep.get(value, value)
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v, rep) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v, rep)) for k, v in value.items()))
    return value


def _value_numbers(gm: fx.GraphModule) -> dict[fx.Node, fx.Node]:
    """Each node -> the first node computing the same tensor (one op on equal inputs, one grid), as CSE sees them."""
    rep: dict[fx.Node, Any] = {}
    first: dict[Any, fx.Node] = {}
    for node in gm.graph.nodes:
        q = quantizer_at(gm, node)
        if isinstance(q, (ActivationQuantizer, FixedQParamsQuantizer)):
            key = ("quantize", _activation_qparams(q), getattr(q, "positive", False), _frozen(node.args, rep))
        elif node.op == "call_function":
            key = (node.target, _frozen(node.args, rep), _frozen(node.kwargs, rep))
        elif node.op == "get_attr":
            key = ("get_attr", node.target)
        else:
            key = None
        try:
            rep[node] = first.setdefault(key, node) if key is not None else node
        except TypeError:  # an unhashable argument: never merged here
            rep[node] = node
    return rep


def _equal_nodes(rep: dict[fx.Node, fx.Node]) -> list[list[fx.Node]]:
    """Classes of call_function nodes with equal value numbers (``_value_numbers``)."""
    classes: dict[fx.Node, list[fx.Node]] = {}
    for node, first in rep.items():
        classes.setdefault(first, []).append(node)
    return [members for members in classes.values() if len(members) > 1 and members[0].op == "call_function"]


def _output_grid(gm: fx.GraphModule, node: fx.Node) -> TensorQParams | None:
    """The qparams ``node``'s output is quantized to, when its users are its activation quantizer(s)."""
    users = list(node.users)
    quantizers = [quantizer_at(gm, u) for u in users]
    if not users or not all(isinstance(q, (ActivationQuantizer, FixedQParamsQuantizer)) for q in quantizers):
        return None
    grids = {_activation_qparams(q) for q in quantizers}
    return grids.pop() if len(grids) == 1 else None


def _elementwise(node: fx.Node) -> bool:
    """An op the registry maps only to elementwise TFLite ops (leading unit dims change nothing)."""
    record = record_for(node.target) if node.op == "call_function" else None
    if record is None or not record.tflite:
        return False
    return all(getattr(target_op("tflite", name), "layout", None) == "elementwise" for name in record.tflite)


def _from_elementwise(gm: fx.GraphModule, node: fx.Node) -> bool:
    """``node`` is the quantized output of an elementwise op (which the converter never writes as a RESHAPE)."""
    return quantizer_at(gm, node) is not None and isinstance(node.args[0], fx.Node) and _elementwise(node.args[0])


def _meta_val(node: Any) -> Any:
    """The traced value of ``node``, looking through inserted quantizer calls (which have none)."""
    while isinstance(node, fx.Node):
        if "val" in node.meta:
            return node.meta["val"]
        if node.op == "get_attr":
            return get_attr_value(node.graph.owning_module, node.target)
        node = node.args[0] if node.args else None
    return None


def _ints(value: Any, dims: int, default: int) -> list[int]:
    """A conv argument (int or per-axis list) as one int per spatial axis."""
    if value is None:
        return [default] * dims
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value] if len(value) == dims else [int(value[0])] * dims
    return [int(value)] * dims


def lower(qmodel: QuantizedModel, int8_io: bool = True, input_shape: Sequence[int] | None = None,
          target: str | None = None) -> LoweredModel:
    """The int8 graph of ``qmodel`` (a copy; ``qmodel`` is not changed).

    ``int8_io``: the graph takes and returns int8 tensors. Without it the
    input and output stay float around their quantize/dequantize pairs
    (the form the TFLite converter turns into int8 input and output).
    ``input_shape``: the file's input; a model with recurrent layers is
    unrolled for the frames this input gives them.
    ``target``: "tflite" adds the rewrites only LiteRT needs (long means as matmuls).
    """
    if not isinstance(qmodel, QuantizedModel):
        raise ExportError(f"expected a QuantizedModel, got {type(qmodel).__name__}; quantize it first")
    recurrences = [m for m in qmodel.modules() if isinstance(m, QuantizedRecurrence)]
    if recurrences and input_shape is not None:
        with torch.no_grad():
            qmodel(torch.zeros(list(input_shape)))  # each recurrence notes its frames and batch
    return _Lowerer(qmodel, int8_io, input_shape, target).run()


def _shapes_for(gm: fx.GraphModule, input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Each node's shape for the file's input (a model with one input; else none)."""
    if sum(n.op == "placeholder" for n in gm.graph.nodes) != 1:
        return {}
    shapes: dict[str, tuple[int, ...]] = {}

    class _Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            if isinstance(value, torch.Tensor):
                shapes[n.name] = tuple(value.shape)
            return value

    with torch.no_grad():
        _Recorder(gm).run(torch.zeros(list(input_shape)))
    return shapes


def _strip_quantizer(node: fx.Node) -> fx.Node:
    while node.op == "call_module" and str(node.target).startswith(f"{QUANTIZER_ROOT}."):
        node = node.args[0]
    return node


class _GraphOps:
    """compressor/recurrent/cells.py's ops interface, writing nodes into a graph.

    Every node gets a shape-only ``val`` so later passes see [batch, features] tensors."""

    def __init__(self, graph: fx.Graph, quantizer_names: dict[str, str],
                 qparams_of: Any = None) -> None:
        self.graph = graph
        self.names = quantizer_names
        self.qparams_of = qparams_of  # cell quantizer name -> TensorQParams

    @staticmethod
    def _shaped(node: fx.Node, shape: Sequence[int]) -> fx.Node:
        node.meta["val"] = torch.empty(list(shape), device="meta")
        return node

    def q(self, name: str, x: fx.Node) -> fx.Node:
        return self._shaped(self.graph.call_module(f"{QUANTIZER_ROOT}.{self.names[name]}", (x,)), _meta_val(x).shape)

    def _call(self, op: Any, *args: Any) -> fx.Node:
        return self._shaped(self.graph.call_function(op, args), _meta_val(args[0]).shape)

    def linear(self, x, w, b):
        rows = _meta_val(w).shape[0]
        return self._shaped(self.graph.call_function(aten.linear.default, (x, w, b)),
                            [_meta_val(x).shape[0], rows])

    def add(self, a, b):
        return self._call(aten.add.Tensor, a, b)

    def sub(self, a, b):
        return self._call(aten.sub.Tensor, a, b)

    def mul(self, a, b):
        return self._call(aten.mul.Tensor, a, b)

    def sigmoid(self, x):
        return self._call(aten.sigmoid.default, x)

    def tanh(self, x):
        return self._call(aten.tanh.default, x)

    def select(self, x, t: int):
        shape = _meta_val(x).shape
        return self._shaped(self.graph.call_function(aten.select.int, (x, 1, t)), [shape[0], *shape[2:]])

    def gate(self, x, index: int, size: int):
        node = self.graph.call_function(aten.slice.Tensor, (x, 1, index * size, (index + 1) * size))
        return self._shaped(node, [_meta_val(x).shape[0], size])

    def split(self, x, size: int) -> list[fx.Node]:
        """``x`` [B, n * size] as n gates (LiteRT's converter writes a SLICE each)."""
        batch, total = _meta_val(x).shape[0], _meta_val(x).shape[1]
        node = self.graph.call_function(aten.split.Tensor, (x, size, 1))
        node.meta["val"] = [torch.empty(batch, size, device="meta") for _ in range(total // size)]
        return [self._shaped(self.graph.call_function(operator.getitem, (node, k)), [batch, size])
                for k in range(total // size)]

    def sigmoid_gates(self, x, indices: tuple[int, ...], names: tuple[str, ...], size: int) -> list:
        """One sigmoid over all of ``x`` where the gates' quantizers are one grid (the sigmoid's fixed grid
        unless a precision rule made them differ): the same integers elementwise, one op instead of three."""
        grids = {self.qparams_of(name) for name in names} if self.qparams_of is not None else set()
        if len(grids) != 1:
            return [self.q(name, self.sigmoid(self.gate(x, index, size))) for index, name in zip(indices, names)]
        # an unrolled cell is hundreds of small ops, and their count decides much of its time
        parts = self.split(self.q(names[0], self.sigmoid(x)), size)
        return [parts[index] for index in indices]


__all__ = ["LoweredModel", "TensorQParams", "lower"]
