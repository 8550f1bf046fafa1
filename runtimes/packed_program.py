"""Read the integer program of a bam quantized model off its traced graph (for the packed runtime).

Walks the graph in order: each conv2d / linear gives its int8 weight codes
(the weight quantizer's grid), int32 bias codes (scale s_in * s_w, as the
exporters store them) and the qparams of its input and output quantizers;
the global mean gives its output qparams.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import fx

from compressor.errors import RuntimeLoadError
from compressor.quant.graph import QUANTIZER_ROOT, get_attr_value
from runtimes.packed_binary import IntLayer, PackedProgram, weight_planes

aten = torch.ops.aten
_PASS_THROUGH = {aten.relu.default, aten.relu_.default}


def _quantizer_of(gm: fx.GraphModule, node: fx.Node) -> tuple[torch.nn.Module, bool]:
    """The activation quantizer on ``node``'s output, and whether a ReLU sits in between."""
    for user in node.users:
        if user.op == "call_module" and str(user.target).startswith(QUANTIZER_ROOT):
            return gm.get_submodule(user.target), False
        if user.op == "call_function" and user.target in _PASS_THROUGH:
            return _quantizer_of(gm, user)[0], True
    raise RuntimeLoadError(f"{node.name}: no activation quantizer on its output")


def _source_quantizer(gm: fx.GraphModule, node: fx.Node) -> torch.nn.Module:
    """The quantizer whose grid ``node``'s input lives on (walking back through data movement)."""
    while not (node.op == "call_module" and str(node.target).startswith(QUANTIZER_ROOT)):
        node = node.args[0]
    return gm.get_submodule(node.target)


def _qparams(q: torch.nn.Module) -> tuple[float, int]:
    scale, zp = q.qparams()
    return float(scale), int(zp)


def _layer(gm: fx.GraphModule, node: fx.Node, binary_input: bool) -> IntLayer:
    wq_node, bq_node = node.args[1], node.args[2]
    wq = gm.get_submodule(wq_node.target)
    weight = get_attr_value(gm, wq_node.args[0].target).detach()
    in_q = _source_quantizer(gm, node.args[0])
    out_q, relu = _quantizer_of(gm, node)
    w_scale = wq.qparams().reshape(-1)
    view = [-1] + [1] * (weight.dim() - 1)
    codes = torch.clamp(torch.round(weight / w_scale.reshape(view)), wq.qmin, wq.qmax).to(torch.int8)
    bias = get_attr_value(gm, bq_node.args[0].target).detach()
    with torch.no_grad():
        b_codes = torch.round(gm.get_submodule(bq_node.target)(bias) / (in_q.scale.detach().abs() * w_scale))
    layer = IntLayer(codes.numpy(), b_codes.to(torch.int64).numpy().astype(np.int32), _qparams(in_q),
                     _qparams(out_q), w_scale.numpy().astype(np.float32), relu=relu)
    if binary_input:
        layer.planes = weight_planes(layer.weight)
    return layer


def extract_program(qmodel) -> PackedProgram:  # noqa: ANN001 - compressor QuantizedModel
    gm = qmodel.graph_module
    qmodel.eval()
    convs, dense, mean_q, input_q = [], [], None, None
    for node in gm.graph.nodes:
        if node.op == "placeholder" and input_q is None and node.users:
            input_q = _quantizer_of(gm, node)[0]
        elif node.op == "call_function" and node.target == aten.conv2d.default:
            convs.append(_layer(gm, node, binary_input=bool(convs)))
        elif node.op == "call_function" and node.target == aten.linear.default:
            dense.append(_layer(gm, node, binary_input=False))
        elif node.op == "call_function" and node.target in (aten.mean.dim, aten.mean.default):
            mean_q = _quantizer_of(gm, node)[0]
    if input_q is None or mean_q is None or not convs or not dense:
        raise RuntimeLoadError("not a bam model: expected convs with binary maps, a global mean and a dense head")
    return PackedProgram(_qparams(input_q), convs, _qparams(mean_q), dense)
