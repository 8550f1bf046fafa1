"""What the toolkit knows about one op: the record types of the op registry.

Two levels, so that each fact is written once:

- ``OpRecord``: one PyTorch op as ``quantize()`` meets it in a traced graph
  (its ATen targets, aliases included), how it is quantized, which ops of
  each target file it becomes, how many multiply-accumulates it costs and
  which fixture model exercises it in the parity grid.
- ``TargetOp``: one op of a deployed file (a TFLite builtin or an ONNX node
  type): how the channels-last TFLite pass may rewrite it, whether
  onnxruntime runs it as an integer kernel, its MAC formula.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

# How quantize() treats an op (see compressor/quant/graph.py):
KINDS = (
    "weighted",  # weight gets a per-output-channel quantizer, bias int32, output an activation quantizer
    "compute",   # makes new values: its output gets an activation quantizer
    "fixed",     # output qparams fixed by the runtimes (sigmoid, tanh, softmax)
    "relu",      # a compute op that takes over the quantizer of the conv/add feeding it (fused by the runtimes)
    "move",      # moves data (or is an exact no-op): the output keeps its input's qparams
    "shared",    # all inputs and the output share one scale (concat, stack, where)
    "same_grid", # output re-quantized on its input's grid (avg pool, where: LiteRT keeps the input's qparams)
    "mask",      # boolean/integer result (x > 0): nothing to quantize
    "decomposed",  # rewritten right after tracing into ops that have int8 kernels (``decompose``)
    "recurrent",   # a scan over frames (compressor/recurrent): simulated by a loop, unrolled by the exporters
    "refused",   # no int8 form: quantize() refuses it with ``hint``
)

# How the channels-last pass (exporters/tflite_layout.py) may treat a TFLite op.
TFLITE_LAYOUTS = (
    "elementwise",  # numpy broadcasting, no axis argument: constants get permuted
    "reducer",      # has an axes input: axes get remapped
    "pad", "reshape", "transpose", "slice", "concat",  # rewritten by their own rules
    "linear",       # a MAC layer: its own NHWC layout, a group boundary
    "opaque",       # axis semantics the pass does not know: the group is left as converted
)

# What an ONNX node of a QDQ file is to the float-op check and to onnxruntime.
ONNX_ROLES = (
    "integer",  # ORT fuses it with its DequantizeLinear/QuantizeLinear into an integer kernel
    "float",    # ORT runs it in float between DequantizeLinear and QuantizeLinear (the QDQ contract)
    "move",     # moves int8 data without changing it
    "fused",    # folded by ORT into the QuantizeLinear after it (Relu, Clip) or its producer
    "mask",     # boolean result that only feeds Where
    "qdq",      # QuantizeLinear / DequantizeLinear
    "meta",     # shapes and constants, no tensor data
)

MAC_FORMULAS = ("conv", "conv_transpose", "linear", "matmul", "recurrent")


def macs(formula: str, x_shape: Sequence[int], w_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    """Multiply-accumulates of one MAC layer; shapes in PyTorch's layout (weight [out, in/groups, k...])."""
    if formula == "conv":
        return math.prod(out_shape) * math.prod(w_shape[1:])
    if formula == "conv_transpose":  # weight [in, out/groups, k...]: every input element meets out/g x k weights
        return math.prod(x_shape) * math.prod(w_shape[1:])
    if formula == "linear":
        return math.prod(out_shape) * int(w_shape[-1])
    if formula == "matmul":  # (..., M, K) x (..., K, N)
        return math.prod(out_shape) * int(x_shape[-1])
    if formula == "recurrent":  # the hidden Linear [G*H, H] once per frame of x [B, T, G*H]
        return math.prod(x_shape[:-1]) * int(w_shape[0]) * int(w_shape[1])
    raise ValueError(f"unknown MAC formula {formula!r}; known: {MAC_FORMULAS}")


@dataclass(frozen=True)
class TargetOp:
    """One op of a deployed file."""

    target: str  # "tflite" or "onnx"
    name: str    # "CONV_2D", "QuantizeLinear"
    layout: str = "opaque"  # tflite: one of TFLITE_LAYOUTS
    role: str = "float"     # onnx: one of ONNX_ROLES
    macs: str | None = None  # one of MAC_FORMULAS for MAC layers
    moves: bool = False      # tflite: only moves int8 data (onnx: role "move")
    # tflite: LiteRT runs it with int16 activations within 1 LSB of the simulation (16x8, mixed graphs);
    # int16_note says why not, or (with int16_output False) why only its input may be 16-bit
    int16: bool = False
    int16_output: bool = True
    int16_note: str = ""


@dataclass(frozen=True)
class OpRecord:
    """One PyTorch op: how it is quantized, lowered, exported, counted and tested."""

    name: str
    aten: tuple[Any, ...]
    kind: str
    tflite: tuple[str, ...] = ()  # the TFLite builtins it becomes (all int8 unless tflite_integer is False)
    onnx: tuple[str, ...] = ()    # the ONNX node types it becomes in a QDQ file
    tflite_integer: bool = True
    weight_axis: int | None = 0    # weighted ops: the weight's output-channel axis
    fixed: str | None = None       # fixed ops: which fixed qparams (compressor.quant.quantizers.FIXED_QPARAMS)
    positive_input: int | None = None  # this input is floored at one LSB (rsqrt of a variance that rounds to 0)
    macs: str | None = None        # one of MAC_FORMULAS
    fixture: tuple[str, ...] = ()  # its models in compressor.ops.fixtures.FIXTURES (the parity grid)
    hint: str = ""                 # refused ops: what to do instead; others: how it is lowered
    decompose: Callable[..., Any] | None = None  # decomposed ops: the exact rewrite (compressor/ops/decompositions.py)
    # a standard layer swapped for an exact int8-ready form, switchable: the QuantConfig.substitutions kind that
    # enables it ("norm", "batchnorm", "attention"); when that kind is off quantize() refuses it with off_hint
    substitution: str | None = None
    off_hint: str = ""

    @property
    def quantizable(self) -> bool:
        return self.kind != "refused"


__all__ = ["KINDS", "MAC_FORMULAS", "ONNX_ROLES", "OpRecord", "TFLITE_LAYOUTS", "TargetOp", "macs"]
