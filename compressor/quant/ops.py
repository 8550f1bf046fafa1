"""What ``quantize()`` does with each ATen op: the supported-op table as code.

Kinds:
- ``weighted``: a linear op with a weight (and maybe bias) argument; the
  weight gets a per-output-channel quantizer, the bias an int32 quantizer,
  the output an activation quantizer;
- ``compute``: any other op that makes new values; its output gets an
  activation quantizer, and float constants it reads get a per-tensor one;
- ``fixed``: sigmoid/tanh/softmax, whose output qparams are fixed;
- ``move``: data movement; the output keeps its input's qparams;
- ``shared``: concat/stack/where; all inputs and the output share one scale;
- ``positive_input``: that input is floored at one LSB of its quantizer, so
  a variance that rounds to 0 cannot make rsqrt infinite;
- ``relu``: a compute op that absorbs the quantizer of the op feeding it
  (the runtimes fuse conv/linear/add + ReLU into one op with one output scale).
Ops missing from the table are refused with ``UnsupportedOpError``.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

aten = torch.ops.aten

@dataclass(frozen=True)
class OpRule:
    kind: str
    weight_axis: int | None = 0  # weighted ops: the weight's output-channel axis
    fixed: str | None = None  # fixed ops: which qparams
    positive_input: int | None = None  # this input must stay > 0 (floored at one LSB)
    note: str = ""


def _rules() -> dict[object, OpRule]:
    weighted = {
        aten.conv1d.default: OpRule("weighted"),
        aten.conv2d.default: OpRule("weighted"),
        aten.linear.default: OpRule("weighted"),
        aten.conv_transpose1d.default: OpRule("weighted", weight_axis=1),
        aten.conv_transpose2d.input: OpRule("weighted", weight_axis=1),
    }
    compute = [
        aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor,
        aten.rsub.Scalar, aten.add.Scalar, aten.sub.Scalar, aten.mul.Scalar, aten.div.Scalar,
        aten.matmul.default, aten.bmm.default, aten.mm.default,
        aten.mean.dim, aten.mean.default, aten.sum.dim_IntList, aten.sum.default,
        aten.prelu.default, aten.leaky_relu.default, aten.gelu.default, aten.silu.default,
        aten.elu.default, aten.abs.default, aten.neg.default, aten.exp.default,
        aten.log.default, aten.sqrt.default, aten.rsqrt.default, aten.square.default,
        aten.pow.Tensor_Scalar, aten.clamp.default, aten.reciprocal.default,
        aten.avg_pool1d.default, aten.avg_pool2d.default, aten.adaptive_avg_pool1d.default,
        aten.adaptive_avg_pool2d.default, aten.hardswish.default, aten.log_softmax.int,
        # constant factories: a new tensor, quantized like any computed one
        aten.zeros.default, aten.ones.default, aten.full.default, aten.zeros_like.default,
        aten.ones_like.default, aten.full_like.default, aten.scalar_tensor.default,
    ]
    relu = [aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.relu6.default]
    fixed = {
        aten.sigmoid.default: "sigmoid",
        aten.tanh.default: "tanh",
        aten.softmax.int: "softmax",
        aten._softmax.default: "softmax",
    }
    move = [
        aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.permute.default,
        aten.transpose.int, aten.t.default, aten.unsqueeze.default, aten.squeeze.dim,
        aten.squeeze.dims, aten.squeeze.default, aten.flatten.using_ints, aten.unflatten.int,
        aten.contiguous.default, aten.clone.default, aten.alias.default, aten.detach.default,
        aten.dropout.default, aten.slice.Tensor, aten.select.int, aten.narrow.default,
        aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int,
        aten.pad.default, aten.constant_pad_nd.default, aten.expand.default, aten.flip.default,
        aten.max_pool1d.default, aten.max_pool2d.default, aten.repeat.default,
        aten.amax.default, aten.max.dim, aten.roll.default, aten.index_select.default,
        operator.getitem,
    ]
    shared = [aten.cat.default, aten.stack.default, aten.where.self]
    table: dict[object, OpRule] = dict(weighted)
    table.update({op: OpRule("compute") for op in compute})
    for op in (aten.rsqrt.default, aten.sqrt.default, aten.log.default, aten.reciprocal.default):
        table[op] = OpRule("compute", positive_input=0)
    table[aten.div.Tensor] = OpRule("compute", positive_input=1)
    table.update({op: OpRule("relu") for op in relu})
    table.update({op: OpRule("fixed", fixed=name) for op, name in fixed.items()})
    table.update({op: OpRule("move") for op in move})
    table.update({op: OpRule("shared") for op in shared})
    return table


OP_RULES: dict[object, OpRule] = _rules()

# Ops we know and refuse, with what to do instead.
REFUSED_HINTS: dict[object, str] = {
    aten.gru.input: "nn.GRU runs as one float kernel; write the cell out (Linear, sigmoid, tanh, mul, add)",
    aten.lstm.input: "nn.LSTM runs as one float kernel; write the cell out (Linear, sigmoid, tanh, mul, add)",
    aten.layer_norm.default: "write the norm as explicit ops (mean, sub, mul, mean, add eps, rsqrt, mul)",
    aten.group_norm.default: "write the norm as explicit ops (mean, sub, mul, mean, add eps, rsqrt, mul)",
    aten.batch_norm.default: "fold BatchNorm into the preceding conv before quantizing",
    aten.scaled_dot_product_attention.default: "write attention out (matmul, softmax, matmul)",
}


def rule_for(target: object) -> OpRule | None:
    return OP_RULES.get(target)


def op_name(target: object) -> str:
    """'aten.conv1d.default' for ATen ops, the function name otherwise."""
    return str(target) if isinstance(target, torch._ops.OpOverload) else getattr(target, "__name__", str(target))
