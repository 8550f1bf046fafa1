"""The op registry: every op the toolkit quantizes, lowers, exports, counts or refuses.

Everything that needs to know about an op reads it from here: quantize()
(compressor/quant/graph.py), the lowering, the ONNX float-op check, the
channels-last TFLite pass, the BOPs counter, the README's op tables and the
export parity grid. A new op is one ``OpRecord`` below plus a fixture in
compressor/ops/fixtures.py; tests/test_op_registry.py fails when either is
missing. Registration is this literal list, nothing registers by import.
"""
from __future__ import annotations

import dataclasses
import operator
from functools import cache
from typing import Any, Iterable

import torch

from compressor.ops import decompositions as dec
from compressor.ops.record import OpRecord, TargetOp
from compressor.recurrent.op import SCAN_OPS

aten = torch.ops.aten

SPECTRAL_HINT = ("complex tensors have no int8 form: compute the STFT before the model and the iSTFT after it "
                  "(feed real/imaginary or magnitude features, e.g. torch.view_as_real(spec), as a float input) "
                  "and quantize only the network between them")
_NORM_HINT = "write the norm as explicit ops (mean, sub, mul, mean, add eps, rsqrt, mul)"
_RNN_HINT = ("runs as one float kernel; quantize() swaps nn.GRU / nn.LSTM modules for int8 cells, but not a "
             "functional call (use the module) or with the 'recurrent' substitution switched off")


def _records() -> tuple[OpRecord, ...]:
    R = OpRecord
    return (
        # -- MAC layers ---------------------------------------------------------------------------
        R("conv1d", (aten.conv1d.default,), "weighted", ("CONV_2D", "DEPTHWISE_CONV_2D"), ("Conv",),
          macs="conv", fixture=("conv1d", "conv1d_depthwise", "conv1d_dilated", "weight_norm")),
        R("conv2d", (aten.conv2d.default,), "weighted", ("CONV_2D", "DEPTHWISE_CONV_2D"), ("Conv",),
          macs="conv", fixture=("conv2d",)),
        R("conv_transpose1d", (aten.conv_transpose1d.default,), "weighted",
          ("CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE", "TRANSPOSE", "SLICE"), ("Conv", "Reshape", "Transpose", "Slice"),
          weight_axis=1, macs="conv_transpose",
          fixture=("conv_transpose1d", "conv_transpose1d_grouped"),
          hint="lowered to a polyphase conv1d + reshape (nn.ConvTranspose1d itself runs float in both runtimes)"),
        R("conv_transpose2d", (aten.conv_transpose2d.input,), "weighted",
          ("CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE", "TRANSPOSE", "SLICE"),
          ("Conv", "Reshape", "Transpose", "Slice"), weight_axis=1, macs="conv_transpose",
          fixture=("conv_transpose2d", "conv_transpose2d_stride2", "conv_transpose2d_grouped",
                   "conv_transpose2d_depthwise"),
          hint="lowered to a polyphase conv2d + depth-to-space reshape/transpose (LiteRT's TRANSPOSE_CONV and "
               "ORT's ConvTranspose run float: benchmarks/results/ops/conv_transpose2d.md)"),
        R("linear", (aten.linear.default,), "weighted", ("FULLY_CONNECTED", "RESHAPE"), ("Gemm", "Reshape"),
          macs="linear", fixture=("linear",), hint="linear on N-d input -> 2-d linear"),
        R("matmul", (aten.matmul.default, aten.bmm.default, aten.mm.default), "compute",
          ("BATCH_MATMUL", "FULLY_CONNECTED"), ("MatMul",), macs="matmul", fixture=("matmul", "bmm")),
        # -- elementwise arithmetic ---------------------------------------------------------------
        R("add", (aten.add.Tensor, aten.add.Scalar), "compute", ("ADD",), ("Add",), fixture=("add",)),
        R("sub", (aten.sub.Tensor, aten.sub.Scalar, aten.rsub.Scalar), "compute", ("SUB",), ("Sub",),
          fixture=("sub", "rsub", "gln", "norm_twice"), hint="written twice on two grids: one SUB per grid"),
        R("mul", (aten.mul.Tensor, aten.mul.Scalar), "compute", ("MUL", "ABS"), ("Mul", "Abs"),
          fixture=("mul", "square_conv"), hint="x * x of a reshaped tensor (a Conv1d output) -> |x| * |x|"),
        R("div", (aten.div.Tensor, aten.div.Scalar), "compute", ("DIV", "MAXIMUM", "MUL"), ("Div", "Clip"),
          positive_input=1,
          fixture=("div", "div_scalar")),
        R("reciprocal", (aten.reciprocal.default,), "compute", ("DIV", "MAXIMUM"), ("Reciprocal", "Clip"),
          positive_input=0, fixture=("reciprocal",)),
        R("sqrt", (aten.sqrt.default,), "compute", ("SQRT", "MAXIMUM"), ("Sqrt", "Clip"), positive_input=0,
          fixture=("sqrt",)),
        R("rsqrt", (aten.rsqrt.default,), "compute", ("RSQRT", "MAXIMUM"), ("Sqrt", "Reciprocal", "Clip"),
          positive_input=0, fixture=("gln", "cln", "layernorm")),
        R("log", (aten.log.default,), "compute", ("LOG", "MAXIMUM"), ("Log", "Clip"), positive_input=0,
          fixture=("log",)),
        R("log10", (aten.log10.default,), "decomposed", ("LOG", "MAXIMUM", "MUL"), ("Log", "Clip", "Mul"),
          decompose=dec.log10, hint="log(x) / ln(10)", fixture=("log10",)),
        R("log1p", (aten.log1p.default,), "decomposed", ("ADD", "LOG", "MAXIMUM"), ("Add", "Log", "Clip"),
          decompose=dec.log1p, hint="log(x + 1)", fixture=("log1p",)),
        R("exp", (aten.exp.default,), "compute", ("EXP",), ("Exp",), fixture=("exp",)),
        R("abs", (aten.abs.default,), "compute", ("ABS",), ("Abs",), fixture=("abs",)),
        R("neg", (aten.neg.default,), "compute", ("NEG", "MUL"), ("Neg",), fixture=("neg",)),
        R("square", (aten.square.default, aten.pow.Tensor_Scalar), "compute", ("MUL", "SQUARE", "POW", "ABS"),
          ("Mul", "Pow", "Abs"), fixture=("square", "square_conv", "norm_twice"),
          hint="x ** 2 -> x * x; of a reshaped tensor (a Conv1d output) -> |x| * |x|"),
        R("clamp", (aten.clamp.default,), "compute", ("MAXIMUM", "MINIMUM", "RELU_N1_TO_1", "RELU6"), ("Clip",),
          fixture=("clamp",)),
        # -- activations --------------------------------------------------------------------------
        R("relu", (aten.relu.default, aten.relu_.default), "relu", ("RELU",), ("Relu",),
          fixture=("relu", "relu_after_reshape"), hint="fused into the conv/linear/add/mul before it"),
        R("hardtanh", (aten.hardtanh.default, aten.relu6.default), "relu", ("RELU6", "RELU_N1_TO_1", "MAXIMUM",
                                                                         "MINIMUM"), ("Clip",),
          fixture=("hardtanh", "relu6")),
        R("prelu", (aten.prelu.default,), "compute", ("GREATER", "MUL", "SELECT", "SELECT_V2", "LEAKY_RELU"),
          ("Greater", "Mul", "Where", "LeakyRelu"), fixture=("prelu", "prelu_shared"),
          hint="one slope -> leaky_relu; per-channel slopes -> where(x > 0, x, a * x)"),
        R("leaky_relu", (aten.leaky_relu.default,), "compute", ("LEAKY_RELU",), ("LeakyRelu",),
          fixture=("leaky_relu", "prelu_shared")),
        R("gelu", (aten.gelu.default,), "compute", ("GELU",), ("Gelu",), fixture=("gelu", "gelu_tanh")),
        R("silu", (aten.silu.default,), "decomposed", ("LOGISTIC", "MUL"), ("Sigmoid", "Mul"), decompose=dec.silu,
          hint="x * sigmoid(x), the sigmoid on its fixed grid", fixture=("silu",)),
        R("elu", (aten.elu.default,), "decomposed", ("GREATER", "SELECT", "SELECT_V2", "EXP", "SUB", "MUL"),
          ("Greater", "Where", "Exp", "Sub", "Mul"), decompose=dec.elu, hint="where(x > 0, x, exp(x) - 1)",
          fixture=("elu",)),
        R("hardswish", (aten.hardswish.default,), "compute", ("HARD_SWISH",), ("HardSwish",), fixture=("hardswish",)),
        R("sigmoid", (aten.sigmoid.default,), "fixed", ("LOGISTIC",), ("Sigmoid",), fixed="sigmoid",
          fixture=("sigmoid", "rsub", "silu")),
        R("tanh", (aten.tanh.default,), "fixed", ("TANH",), ("Sigmoid",), fixed="tanh", fixture=("tanh",),
          hint="ONNX: as sigmoid(2x) on the same codes (onnxruntime's QLinearSigmoid; it has no integer Tanh)"),
        R("softmax", (aten._softmax.default,), "fixed", ("SOFTMAX",), ("Softmax",), fixed="softmax",
          fixture=("softmax",)),
        R("softmax_any_axis", (aten.softmax.int,), "decomposed", ("SOFTMAX", "TRANSPOSE"), ("Softmax", "Transpose"),
          decompose=dec.softmax, hint="over the last axis (LiteRT's int8 SOFTMAX); another axis is moved there",
          fixture=("softmax_channels",)),
        R("log_softmax", (aten.log_softmax.int, aten._log_softmax.default), "decomposed",
          ("REDUCE_MAX", "SUB", "EXP", "SUM", "LOG", "MAXIMUM"),
          ("ReduceMax", "Sub", "Exp", "ReduceSum", "Log", "Clip"),
          decompose=dec.log_softmax, fixture=("log_softmax",),
          hint="x - max - log(sum(exp(x - max))), each step on its own grid (LiteRT's own lowering is float; "
               "log of softmax's 1/256 grid floors log-probabilities at -5.5)"),
        # -- reductions and pooling ---------------------------------------------------------------
        # a mean of an averaged square (a norm's variance) is lowered to its exact sum of squares: an int8
        # BATCH_MATMUL of the signal with itself, ReduceSumSquare in ONNX; in TFLite a mean over more than 256
        # values is an int8 BATCH_MATMUL / FULLY_CONNECTED with a broadcast column of ones; both then MUL by 1/N
        # (exporters/lowering.py)
        R("mean", (aten.mean.dim, aten.mean.default), "compute", ("MEAN", "BATCH_MATMUL", "FULLY_CONNECTED", "MUL"),
          ("ReduceMean", "ReduceSumSquare"), fixture=("mean", "gln")),
        R("sum", (aten.sum.dim_IntList, aten.sum.default), "compute", ("SUM",), ("ReduceSum",), fixture=("sum",)),
        R("var", (aten.var.dim, aten.var.correction), "decomposed", ("MEAN", "SUB", "MUL"),
          ("ReduceMean", "Sub", "Mul"), decompose=dec.var, fixture=("z_norm",),
          hint="mean, x - m, (x - m) * (x - m), mean; unbiased: times the constant n / (n - 1) (refused when n "
               "varies with the input length)"),
        R("std", (aten.std.dim, aten.std.correction), "decomposed", ("MEAN", "SUB", "MUL", "SQRT", "MAXIMUM"),
          ("ReduceMean", "Sub", "Mul", "Sqrt", "Clip"), decompose=dec.std, fixture=("z_norm",),
          hint="sqrt of var's form (its input floored at one LSB)"),
        R("avg_pool", (aten.avg_pool1d.default, aten.avg_pool2d.default), "same_grid",
          ("AVERAGE_POOL_2D", "PADV2", "PAD"), ("AveragePool", "Pad"),
          hint="output on its input's grid: LiteRT's int8 AVERAGE_POOL_2D keeps the input's qparams",
          fixture=("avg_pool",)),
        R("adaptive_avg_pool", (aten.adaptive_avg_pool1d.default, aten.adaptive_avg_pool2d.default), "compute",
          ("MEAN", "AVERAGE_POOL_2D"), ("GlobalAveragePool", "ReduceMean", "AveragePool"),
          fixture=("adaptive_avg_pool",)),
        R("max_pool", (aten.max_pool1d.default, aten.max_pool2d.default), "move", ("MAX_POOL_2D",), ("MaxPool",),
          fixture=("max_pool",)),
        R("amax", (aten.amax.default, aten.max.dim), "move", ("REDUCE_MAX",), ("ReduceMax",),
          fixture=("amax", "max_dim")),
        R("amin", (aten.amin.default, aten.min.dim), "move", ("REDUCE_MIN",), ("ReduceMin",), fixture=("amin",)),
        # -- constants: new tensors, quantized like computed ones; folded into the file -----------
        R("constant", (aten.zeros.default, aten.ones.default, aten.full.default, aten.zeros_like.default,
                       aten.ones_like.default, aten.full_like.default, aten.scalar_tensor.default), "compute",
          fixture=("constant",)),
        # -- data movement and exact no-ops -------------------------------------------------------
        R("reshape", (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
                      aten.unflatten.int, aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims,
                      aten.squeeze.default), "move", ("RESHAPE", "SQUEEZE", "EXPAND_DIMS"),
          ("Reshape", "Squeeze", "Unsqueeze", "Flatten"), fixture=("reshape_transpose",)),
        R("transpose", (aten.permute.default, aten.transpose.int, aten.t.default), "move", ("TRANSPOSE",),
          ("Transpose",), fixture=("reshape_transpose", "linear")),
        # kept in the graph as moves, not removed like "no_op" below: removing them would retrace every model
        # that has them, renaming its quantizers, and checkpoints saved before would no longer load
        R("identity", (aten.contiguous.default, aten.clone.default, aten.alias.default, aten.detach.default,
                       aten.dropout.default), "move", (), ("Identity",), hint="exact no-op in eval mode",
          fixture=("no_op",)),
        R("slice", (aten.slice.Tensor, aten.select.int, aten.narrow.default, aten.split.Tensor,
                    aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int, operator.getitem), "move",
          ("SLICE", "STRIDED_SLICE", "SPLIT", "SPLIT_V", "UNPACK", "RESHAPE"), ("Slice", "Split", "Squeeze"),
          fixture=("slice", "split")),
        R("pad", (aten.pad.default, aten.constant_pad_nd.default), "move", ("PAD", "PADV2"), ("Pad",),
          fixture=("pad",)),
        R("expand", (aten.expand.default, aten.repeat.default), "move", ("BROADCAST_TO", "TILE"),
          ("Expand", "Tile"), fixture=("expand",)),
        R("broadcast_to", (aten.broadcast_to.default,), "decomposed", ("BROADCAST_TO",), ("Expand",),
          decompose=dec.broadcast_to, hint="expand", fixture=("broadcast_to",)),
        R("upsample_nearest", (aten.upsample_nearest1d.vec, aten.upsample_nearest2d.vec), "decomposed",
          ("RESHAPE", "BROADCAST_TO", "EXPAND_DIMS"), ("Unsqueeze", "Expand", "Reshape"),
          decompose=dec.upsample_nearest,
          hint="each sample repeated (integer factors; data movement only)", fixture=("upsample_nearest",)),
        R("upsample_linear", (aten.upsample_linear1d.vec, aten.upsample_bilinear2d.vec), "decomposed",
          ("MUL", "ADD", "SLICE", "STRIDED_SLICE", "CONCATENATION", "RESHAPE"),
          ("Mul", "Add", "Slice", "Concat", "Unsqueeze", "Reshape"), decompose=dec.upsample_linear,
          hint="per output phase a 2-tap mix (1 - w) * x + w * neighbour, the edge sample repeated, phases "
               "interleaved; bilinear: along H, then W (integer factors, align_corners=False)",
          fixture=("upsample_linear", "upsample_bilinear")),
        R("unfold", (aten.im2col.default,), "decomposed",
          ("PAD", "SLICE", "STRIDED_SLICE", "CONCATENATION", "TRANSPOSE", "RESHAPE"),
          ("Pad", "Slice", "Unsqueeze", "Squeeze", "Concat", "Transpose", "Reshape"), decompose=dec.im2col,
          hint="framing as pad + strided slices + stack (kernel/gcd(kernel, stride) slices per axis) + reshape",
          fixture=("unfold_fold", "unfold_odd", "unfold_fold_2d")),
        R("fold", (aten.col2im.default,), "decomposed",
          ("PAD", "ADD", "SLICE", "STRIDED_SLICE", "TRANSPOSE", "RESHAPE"),
          ("Pad", "Add", "Slice", "Squeeze", "Unsqueeze", "Transpose", "Reshape"), decompose=dec.col2im,
          hint="overlap-add as pads + adds (kernel/gcd(kernel, stride) terms per axis), the padding cropped",
          fixture=("unfold_fold", "unfold_fold_2d")),
        R("no_op", (aten.lift_fresh_copy.default, aten.detach_.default, aten.feature_dropout.default,
                    aten.alpha_dropout.default, aten.feature_alpha_dropout.default), "decomposed",
          decompose=dec.same_tensor, hint="exact no-op in eval mode: removed", fixture=("no_op",)),
        R("cast", (aten.to.dtype,), "decomposed", decompose=dec.to_dtype,
          hint="a float cast to the same dtype is removed; other casts are refused", fixture=("no_op",)),
        R("flip", (aten.flip.default,), "move", ("REVERSE_V2",), ("Slice",), fixture=("flip",)),
        R("roll", (aten.roll.default,), "move", ("SLICE", "CONCATENATION"), ("Slice", "Concat"), fixture=("roll",)),
        R("index_select", (aten.index_select.default,), "move", ("GATHER", "GATHER_ND"), ("Gather",),
          fixture=("index_select",)),
        R("cat", (aten.cat.default,), "shared", ("CONCATENATION",), ("Concat",), fixture=("concat",)),
        R("stack", (aten.stack.default,), "shared", ("PACK", "CONCATENATION", "RESHAPE"),
          ("Unsqueeze", "Concat"), fixture=("stack",)),
        R("where", (aten.where.self,), "same_grid", ("SELECT", "SELECT_V2"), ("Where",), fixture=("where", "prelu")),
        # -- comparisons: boolean masks for where, nothing to quantize ----------------------------
        R("compare", (aten.gt.Scalar, aten.gt.Tensor, aten.ge.Scalar, aten.ge.Tensor, aten.lt.Scalar,
                      aten.lt.Tensor, aten.le.Scalar, aten.le.Tensor, aten.eq.Scalar, aten.eq.Tensor,
                      aten.ne.Scalar, aten.ne.Tensor), "mask",
          ("GREATER", "GREATER_EQUAL", "LESS", "LESS_EQUAL", "EQUAL", "NOT_EQUAL"),
          ("Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Equal", "Not"), fixture=("prelu", "where", "elu")),
        # -- recurrent layers: nn.GRU / nn.LSTM are substituted before tracing (compressor/recurrent) ----------
        R("recurrent", tuple(SCAN_OPS.values()), "recurrent",
          ("FULLY_CONNECTED", "ADD", "SUB", "MUL", "LOGISTIC", "TANH", "STRIDED_SLICE", "SLICE", "PACK",
           "RESHAPE", "CONCATENATION", "GATHER"),
          ("Gemm", "MatMul", "Add", "Sub", "Mul", "Sigmoid", "Tanh", "Slice", "Gather", "Unsqueeze", "Concat",
           "Reshape", "Squeeze"),
          macs="recurrent", hint="the cell unrolled over the file's chunk of frames",
          fixture=("gru", "lstm_bidirectional")),
        # -- substitutions of standard layers (QuantConfig.substitutions; refused with off_hint when off) --
        R("layer_norm", (aten.layer_norm.default,), "decomposed", ("MEAN", "SUB", "MUL", "ADD", "RSQRT", "MAXIMUM"),
          ("ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Reciprocal", "Clip"), decompose=dec.layer_norm,
          substitution="norm", off_hint=f"nn.LayerNorm / F.layer_norm: {_NORM_HINT}",
          hint="mean, x - m, (x - m) * (x - m), mean, + eps, rsqrt (input floored at one LSB), mul, then the "
               "affine mul/add", fixture=("layer_norm_btc", "layer_norm_plain")),
        R("group_norm", (aten.group_norm.default,), "decomposed", ("MEAN", "SUB", "MUL", "ADD", "RSQRT", "MAXIMUM",
                                                                  "RESHAPE"),
          ("ReduceMean", "Sub", "Mul", "Add", "Sqrt", "Reciprocal", "Clip", "Reshape"), decompose=dec.group_norm,
          substitution="norm", off_hint=f"nn.GroupNorm / F.group_norm: {_NORM_HINT}",
          hint="as layer_norm over each group (1 group: over channels and time, asteroid's gLN; other counts "
               "reshape to [N, G, C/G, ...] and back), then the per-channel affine mul/add",
          fixture=("group_norm_global", "group_norm_channels", "group_norm_groups")),
        R("batch_norm", (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default), "decomposed",
          ("MUL", "ADD"), ("Mul", "Add"), substitution="batchnorm",
          off_hint="fold BatchNorm into the preceding conv before quantizing",
          hint="eval mode: folded into the conv/linear before it when that layer's output has no other user "
               "(w * g / sqrt(v + eps), (b - m) * g / sqrt(v + eps) + beta), else a per-channel mul + add "
               "(compressor/quant/substitution.py)",
          fixture=("batchnorm_conv1d", "batchnorm_conv2d", "batchnorm_alone")),
        R("attention", (aten.scaled_dot_product_attention.default,), "decomposed",
          ("MUL", "BATCH_MATMUL", "FULLY_CONNECTED", "TRANSPOSE", "SOFTMAX", "ADD", "SUB", "REDUCE_MIN", "SELECT",
           "SELECT_V2", "LESS_EQUAL"),
          ("Mul", "MatMul", "Transpose", "Softmax", "Add", "Sub", "ReduceMin", "Where", "LessOrEqual"),
          decompose=dec.scaled_dot_product_attention, substitution="attention",
          off_hint="write attention out (matmul, softmax, matmul)",
          hint="softmax((q * scale) @ k^T [+ float mask]) @ v, softmax over the last axis; a boolean or causal "
               "mask sets masked scores 20 below their row's smallest (exp(-20): 0 in float and on the 1/256 "
               "grid); nn.MultiheadAttention runs through it", fixture=("mha", "mha_seq_first", "sdpa_causal")),
        # -- refused, with what to do instead -----------------------------------------------------
        R("gru", (aten.gru.input,), "refused", hint=f"nn.GRU {_RNN_HINT}"),
        R("lstm", (aten.lstm.input,), "refused", hint=f"nn.LSTM {_RNN_HINT}"),
        R("batch_norm_batch_stats", (aten._native_batch_norm_legit.default, aten._native_batch_norm_legit.no_stats),
          "refused", hint="BatchNorm that normalizes with the batch's statistics (track_running_stats=False) has no "
                          "int8 form; train it with running statistics or use GroupNorm"),
        R("upsample_nearest_fractional", (aten.upsample_nearest1d.default, aten.upsample_nearest2d.default),
          "refused", hint="nearest upsampling has an int8 form only for integer factors (scale_factor=2, or a size "
                          "that is an integer multiple of the input's for every input length); upsample by an "
                          "integer factor, then crop or pad"),
        R("upsample_linear_other", (aten.upsample_linear1d.default, aten.upsample_bilinear2d.default), "refused",
          hint="linear/bilinear upsampling has an int8 form only with align_corners=False and integer factors "
               "(scale_factor=2, or a size that is an integer multiple of the input's for every input length); "
               "upsample by an integer factor, then crop or pad, or use nearest upsampling followed by a "
               "convolution"),
        R("weight_norm", (aten._weight_norm.default, aten._weight_norm_interface.default), "refused",
          hint="apply nn.utils.parametrizations.weight_norm to a module (quantize() folds it into the weight)"),
        R("complex", (aten.stft.default, aten.stft.center, aten.istft.default, aten.view_as_real.default,
                      aten.view_as_complex.default, aten.complex.default, aten.real.default, aten.imag.default,
                      aten._fft_r2c.default, aten._fft_c2r.default, aten._fft_c2c.default, aten.angle.default,
                      aten.polar.default), "refused", hint=SPECTRAL_HINT),
    )


def _t(name: str, layout: str = "opaque", macs: str | None = None, moves: bool = False) -> TargetOp:
    return TargetOp("tflite", name, layout=layout, macs=macs, moves=moves)


def _o(name: str, role: str = "float", macs: str | None = None) -> TargetOp:
    return TargetOp("onnx", name, role=role, macs=macs)


def _target_ops() -> tuple[TargetOp, ...]:
    elementwise = ("ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "SQUARED_DIFFERENCE", "LEAKY_RELU", "PRELU",
                   "RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "LOGISTIC", "TANH", "RSQRT", "SQRT", "ABS", "NEG",
                   "EXP", "LOG", "HARD_SWISH", "GELU", "ELU", "QUANTIZE", "SELECT", "SELECT_V2", "GREATER",
                   "GREATER_EQUAL", "LESS", "LESS_EQUAL", "EQUAL", "NOT_EQUAL", "SQUARE", "POW")
    tflite = (
        _t("CONV_2D", "linear", "conv"), _t("DEPTHWISE_CONV_2D", "linear", "conv"),
        _t("FULLY_CONNECTED", "linear", "linear"), _t("BATCH_MATMUL", "linear", "matmul"),
        _t("TRANSPOSE_CONV", "linear", "conv_transpose"),
        *(_t(n, "elementwise") for n in elementwise),
        *(_t(n, "reducer") for n in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_PROD")),
        _t("PAD", "pad", moves=True), _t("PADV2", "pad", moves=True), _t("RESHAPE", "reshape", moves=True),
        _t("TRANSPOSE", "transpose", moves=True), _t("SLICE", "slice", moves=True),
        _t("CONCATENATION", "concat", moves=True),
        *(_t(n, moves=True) for n in ("STRIDED_SLICE", "SQUEEZE", "EXPAND_DIMS", "SPLIT", "SPLIT_V", "UNPACK",
                                      "PACK", "BROADCAST_TO", "TILE", "REVERSE_V2", "GATHER", "GATHER_ND",
                                      "MAX_POOL_2D",
                                      "DEQUANTIZE")),
        *(_t(n) for n in ("SOFTMAX", "LOG_SOFTMAX", "AVERAGE_POOL_2D", "CAST")),
    )
    tflite = tuple(_with_int16(op) for op in tflite)
    onnx = (
        _o("Conv", "integer", "conv"), _o("Gemm", "integer", "linear"), _o("MatMul", "integer", "matmul"),
        _o("ConvTranspose", "float", "conv_transpose"),
        # already fused integer kernels (ORT-optimised files): inputs (x, x_scale, x_zp, w, ...)
        _o("QLinearConv", "integer", "conv"), _o("QLinearMatMul", "integer", "matmul"),
        _o("ConvInteger", "integer", "conv"), _o("MatMulInteger", "integer", "matmul"),
        *(_o(n, "integer") for n in ("Add", "Mul", "LeakyRelu", "Sigmoid", "Where")),
        *(_o(n) for n in ("Sub", "Div", "Tanh", "ReduceMean", "ReduceSum", "ReduceSumSquare", "Sqrt", "Exp", "Log",
                          "Abs", "Neg", "Pow", "Erf", "Gelu", "Softmax", "LogSoftmax", "Elu", "HardSwish",
                          "AveragePool", "GlobalAveragePool", "PRelu", "Max", "Min")),
        *(_o(n, "move") for n in ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Pad", "Concat", "Split",
                                  "Flatten", "Identity", "Expand", "Gather", "MaxPool", "Tile",
                                  "ReduceMax", "ReduceMin")),  # a max/min selects one of its inputs: it keeps their grid
        *(_o(n, "fused") for n in ("Relu", "Clip", "Reciprocal")),
        *(_o(n, "mask") for n in ("Greater", "Less", "Equal", "GreaterOrEqual", "LessOrEqual", "Not", "And", "Or")),
        _o("QuantizeLinear", "qdq"), _o("DequantizeLinear", "qdq"),
        *(_o(n, "meta") for n in ("Constant", "Shape", "ConstantOfShape", "Cast", "Range", "Size")),
    )
    return tflite + onnx


# LiteRT kernels measured to run with int16 activations (int64 bias for the convolutions) within 1 LSB of the
# simulation in mixed int8/int16 graphs (tests/test_wide_precision.py and each export's op-by-op check);
# data movement runs in its output's dtype. Any other op at 16 bits is refused: unchecked, or for the reason given.
_TFLITE_INT16 = frozenset({
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL", "LOGISTIC", "TANH", "MEAN",
    "LEAKY_RELU", "RELU", "MAXIMUM", "MINIMUM", "GREATER", "SELECT", "QUANTIZE", "DEQUANTIZE",
    "PAD", "RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "SLICE", "STRIDED_SLICE", "MAX_POOL_2D",
    "CONCATENATION",
})
_TFLITE_INT16_NOTES = {
    "RSQRT": "LiteRT's int16 RSQRT is inaccurate for small inputs: 22 LSB off the simulation measured, ~600 in "
             "the worst case",
    "SQRT": "LiteRT has no int16 SQRT kernel",
    "REVERSE_V2": "the converter leaves REVERSE_V2 unquantized",
    "TANH": "LiteRT's int16 TANH table is up to 3 LSB of 1/32768 off tanh; keep the tanh output 8-bit "
            "(its input may stay 16-bit)",
}


def _with_int16(op: TargetOp) -> TargetOp:
    return dataclasses.replace(op, int16=op.name in _TFLITE_INT16, int16_output=op.name != "TANH",
                               int16_note=_TFLITE_INT16_NOTES.get(op.name, ""))


RECORDS: tuple[OpRecord, ...] = _records()
TARGET_OPS: tuple[TargetOp, ...] = _target_ops()


@cache
def _by_aten() -> dict[Any, OpRecord]:
    return {target: record for record in RECORDS for target in record.aten}


@cache
def _by_target() -> dict[tuple[str, str], TargetOp]:
    return {(op.target, op.name): op for op in TARGET_OPS}


def record_for(aten_target: Any) -> OpRecord | None:
    """The record of an ATen op (or operator.getitem), None when the toolkit does not know it."""
    return _by_aten().get(aten_target)


def target_op(target: str, name: str) -> TargetOp | None:
    return _by_target().get((target, name))


def onnx_ops_with_role(*roles: str) -> frozenset[str]:
    return frozenset(op.name for op in TARGET_OPS if op.target == "onnx" and op.role in roles)


def moving_ops() -> frozenset[str]:
    """Target ops (both formats) that only move int8 data."""
    return frozenset(op.name for op in TARGET_OPS if op.moves or op.role == "move")


def mac_ops(target: str) -> dict[str, str]:
    """{target op name: MAC formula} of one format."""
    return {op.name: op.macs for op in TARGET_OPS if op.target == target and op.macs}


def decomposition_table(substitutions: Iterable[str] | None = None) -> dict[Any, Any]:
    """{ATen op: exact rewrite} for torch.export's run_decompositions; ``substitutions``: the enabled
    QuantConfig.substitutions kinds (None: all), the others' ops stay in the graph and are refused."""
    return {target: r.decompose for r in RECORDS if r.decompose is not None
            and (r.substitution is None or substitutions is None or r.substitution in substitutions)
            for target in r.aten}


def substitution_refusal(record: OpRecord, enabled: bool) -> str:
    """Why quantize() refuses an op of a substitution left in the graph: its kind is off, or this form of it has
    no substitute (e.g. a BatchNorm that uses batch statistics)."""
    if not enabled:
        return (f"{record.off_hint} (the {record.substitution!r} substitution is off: add it to "
                "QuantConfig.substitutions)")
    return f"this form has no int8 substitute ({record.hint}); {record.off_hint}"


def op_name(target: Any) -> str:
    """'aten.conv1d.default' for ATen ops, the function name otherwise."""
    return str(target) if isinstance(target, torch._ops.OpOverload) else getattr(target, "__name__", str(target))


__all__ = ["RECORDS", "SPECTRAL_HINT", "TARGET_OPS", "decomposition_table", "mac_ops", "moving_ops",
           "onnx_ops_with_role", "op_name",
           "record_for", "substitution_refusal", "target_op"]
