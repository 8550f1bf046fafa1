"""Input/output precision of an FQSE model, and how it is set on a quantized graph.

Input: ``8bit`` (the mixture through a learned int8 quantizer), ``split``
(two int8 channels, io_codec) or ``16bit`` (the 16-bit PCM mixture enters
unquantized: the input quantizer is switched off). Output: ``8bit`` (one
int8 output), ``rqb`` (Q(Y_o) and the RQB's eps, two int8 outputs) or
``16bit`` (Y_o's quantizer switched off). The 16-bit settings exist for the
paper's Table 2 (what 8-bit I/O costs); an integer-only deployment uses
``split`` and ``rqb``.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import fx

from compressor.configs import JsonConfig
from compressor.errors import ConfigError
from compressor.fqse.io_codec import DEFAULT_GAIN, SPLIT_SCALE, SPLIT_ZERO_POINT
from compressor.quant import QuantizedModel
from compressor.quant.graph import QUANTIZER_ROOT
from compressor.quant.precision import PrecisionOverride
from compressor.ops.registry import record_for
from compressor.quant.quantizers import ActivationQuantizer

INPUT_PRECISIONS = ("8bit", "split", "16bit")
OUTPUT_PRECISIONS = ("8bit", "rqb", "16bit")


@dataclass(frozen=True)
class IOConfig(JsonConfig):
    input: str = "split"
    output: str = "rqb"
    gain: float = DEFAULT_GAIN

    def __post_init__(self) -> None:
        if self.input not in INPUT_PRECISIONS:
            raise ConfigError(f"input precision must be one of {INPUT_PRECISIONS}, got {self.input!r}")
        if self.output not in OUTPUT_PRECISIONS:
            raise ConfigError(f"output precision must be one of {OUTPUT_PRECISIONS}, got {self.output!r}")

    @property
    def splitter(self) -> bool:
        return self.input == "split"

    @property
    def rqb(self) -> bool:
        return self.output == "rqb"

    def overrides(self) -> tuple[PrecisionOverride, ...]:
        """The precision rules these I/O settings fix: with the splitter, the input's split grid."""
        return (split_input_rule(),) if self.splitter else ()


def split_input_rule() -> PrecisionOverride:
    """The model input on the split grid (scale 1/128, zero-point 0), fixed: not calibrated, not learned."""
    return PrecisionOverride(op="input", scale=SPLIT_SCALE, zero_point=SPLIT_ZERO_POINT)


def _quantizer_of(node: fx.Node) -> str | None:
    """Name of the quantizer a value passes through, looking through data-movement ops."""
    prefix = f"{QUANTIZER_ROOT}."
    while isinstance(node, fx.Node):
        if node.op == "call_module" and str(node.target).startswith(prefix):
            return str(node.target)[len(prefix):]
        if node.op == "call_function" and (record_for(node.target) is None or record_for(node.target).kind != "move"):
            return None
        if node.op != "call_function" or not node.args:
            return None
        node = node.args[0]
    return None


def input_quantizers(qmodel: QuantizedModel) -> list[str]:
    """Names of the quantizers the graph's inputs pass through first, in order."""
    inputs: list[str] = []
    for node in qmodel.graph_module.graph.nodes:
        if node.op == "placeholder":
            for user in node.users:
                name = _quantizer_of(user)
                if name is not None and name not in inputs:
                    inputs.append(name)
    return inputs


def io_quantizers(qmodel: QuantizedModel) -> tuple[list[str], list[str]]:
    """(input quantizer names, output quantizer names) of a quantized graph, in order."""
    graph = qmodel.graph_module.graph
    inputs = input_quantizers(qmodel)
    outputs: list[str] = []
    out_node = next(n for n in graph.nodes if n.op == "output")
    results = out_node.args[0]
    for value in (results if isinstance(results, (list, tuple)) else [results]):
        name = _quantizer_of(value)
        if name is None:
            raise ConfigError(f"output {value} of the quantized graph has no quantizer")
        outputs.append(name)
    return inputs, outputs


def apply_io(qmodel: QuantizedModel, io: IOConfig) -> None:
    """Set the input/output quantizers for ``io``; call after calibration and after loading.

    With the splitter the input quantizer is on the split grid (scale 1/128,
    zero-point 0) and frozen: the two channels are already exact int8 codes,
    and a learned step would no longer match them. That grid is a precision
    rule (``split_input_rule``) in the recipe's QuantConfig, so quantize()
    pins it and calibration leaves it; a checkpoint saved before the rule
    existed gets it here, through the same mechanism. The 16-bit settings
    switch quantizers to float mode, which calibration undoes: hence "after".
    """
    if io.splitter:
        qmodel.add_overrides(io.overrides())  # nothing to add when quantize() had the rule
    inputs, outputs = io_quantizers(qmodel)
    quantizers = qmodel.quantizers()
    for name in inputs:
        q = quantizers[name]
        if io.input == "split":
            if not isinstance(q, ActivationQuantizer):
                raise ConfigError(f"input quantizer {name} is not an activation quantizer")
            if (q.qmin, q.qmax) != (-128, 127) or q.qparams() != (SPLIT_SCALE, SPLIT_ZERO_POINT) \
                    or q.scale.requires_grad or q.zero_point.requires_grad:
                raise ConfigError(f"input quantizer {name} cannot hold the split grid: {q.bits} bits, "
                                  f"qparams {q.qparams()}, learned: {q.scale.requires_grad}")
        elif io.input == "16bit":
            q.set_mode("float")
    if io.output == "16bit":
        quantizers[outputs[0]].set_mode("float")


__all__ = ["INPUT_PRECISIONS", "IOConfig", "OUTPUT_PRECISIONS", "apply_io", "io_quantizers", "split_input_rule"]
