"""Minimal cost figures for the FQSE tables: MACs, GBOPs and model size.

BOPs = MACs x weight bits x activation bits (the paper's GBOP column counts
the multiply-accumulates of the linear layers: conv, transposed conv,
linear), counted by compressor.ops.macs.count_macs.
"""
from __future__ import annotations

from torch import nn

from compressor.quant import QuantizedModel
from compressor.quant.graph import QUANTIZER_ROOT, get_attr_value
from compressor.quant.quantizers import BiasQuantizer


def gbops(macs: int, weight_bits: int, activation_bits: int) -> float:
    return macs * weight_bits * activation_bits / 1e9


def float_size_mb(model: nn.Module) -> float:
    """float32 parameters of the modules a forward uses, in MB (10^6 bytes)."""
    return sum(p.numel() for p in model.parameters()) * 4 / 1e6


def quantized_size_mb(qmodel: QuantizedModel) -> float:
    """Weights and constants at their bit width plus int32 biases, in MB (10^6 bytes).

    Read off the quantized graph, so parameters no output depends on (dropped
    by tracing) are not counted.
    """
    size_bits = sum(w.numel() * q.bits for q, w in qmodel.weight_tensors().values())
    prefix = f"{QUANTIZER_ROOT}."
    for node in qmodel.graph_module.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith(prefix):
            if isinstance(qmodel.graph_module.get_submodule(node.target), BiasQuantizer):
                if node.args[0].op == "get_attr":
                    size_bits += get_attr_value(qmodel.graph_module, node.args[0].target).numel() * 32
    return size_bits / 8 / 1e6


__all__ = ["float_size_mb", "gbops", "quantized_size_mb"]
