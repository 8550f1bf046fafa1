"""The one MAC counter: multiply-accumulates of every MAC layer of a traced model, per the op registry.

A layer is counted when its record has a MAC formula (convolutions, transposed
convolutions, linear layers, matrix products); elementwise ops (norms, PReLU,
the mask product) are not, as in the FQSE paper's GBOP column. Each row also
carries the bit width of the quantizer feeding the weight and the input (32
where none does), so BOPs = MACs x weight bits x activation bits.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from compressor.module_mode import set_training
from compressor.ops.record import macs
from compressor.ops.registry import record_for
from compressor.recurrent.quantized import QuantizedRecurrence, scan_arguments
from compressor.recurrent.substitute import substitute_recurrent

_PASS_THROUGH_HOPS = 6  # data-movement nodes to look through for the quantizer feeding a layer


def mac_row(layer: str, op: str, mac_count: int, weight_bits: int, activation_bits: int) -> dict[str, Any]:
    return {"layer": layer, "op": op, "macs": int(mac_count), "weight_bits": int(weight_bits),
            "activation_bits": int(activation_bits),
            "bops": int(mac_count) * int(weight_bits) * int(activation_bits)}


def _feeding_bits(gm: fx.GraphModule, node: Any) -> int:
    """Bit width of the quantizer that produced ``node`` (through reshapes etc.); 32 if none."""
    for _ in range(_PASS_THROUGH_HOPS):
        if not isinstance(node, fx.Node):
            return 32
        if node.op == "call_module":
            bits = getattr(gm.get_submodule(node.target), "bits", None)
            if bits is not None:
                return int(bits)
        if not node.args:
            return 32
        node = node.args[0]
        if isinstance(node, (list, tuple)) and node:  # cat/stack: their inputs share one quantizer
            node = node[0]
    return 32


def _formula(node: fx.Node, args: list[Any]) -> str | None:
    if node.target == torch.ops.aten.convolution.default:  # what some decompositions leave
        return "conv_transpose" if bool(args[6]) else "conv"
    if node.target == torch.ops.aten.addmm.default:
        return "matmul"
    record = record_for(node.target)
    return record.macs if record is not None else None


class _MacRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.rows: list[dict[str, Any]] = []

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if n.op == "call_module" and isinstance(self.module.get_submodule(str(n.target)), QuantizedRecurrence):
            self.rows.append(self.recurrent_row(n))
            return result
        if n.op != "call_function":
            return result
        if record_for(n.target) is not None and record_for(n.target).macs == "recurrent":
            self.rows.append(self.recurrent_row(n))
            return result
        args = [self.env[a] if isinstance(a, fx.Node) else a for a in n.args]
        formula = _formula(n, args)
        if formula is None:
            return result
        first = 1 if n.target == torch.ops.aten.addmm.default else 0  # addmm(bias, x, w)
        x_node, w_node = n.args[first], n.args[first + 1]
        x, w = args[first], args[first + 1]
        count = macs(formula, tuple(x.shape), tuple(w.shape), tuple(result.shape))
        self.rows.append(mac_row(n.name, str(n.target).split(".")[1], count, _feeding_bits(self.module, w_node),
                                 _feeding_bits(self.module, x_node)))
        return result


    def recurrent_row(self, n: fx.Node) -> dict[str, Any]:
        """A scan op (or its simulation module): the hidden Linear once per frame."""
        args = scan_arguments(n) if n.op == "call_function" else dict(
            zip(("gi", "h0", "c0", "w") if self.module.get_submodule(str(n.target)).cell == "lstm"
                else ("gi", "h0", "w"), n.args))
        gi, w = self.env[args["gi"]], self.env[args["w"]]
        count = macs("recurrent", tuple(gi.shape), tuple(w.shape), ())
        return mac_row(n.name, "recurrent", count, _feeding_bits(self.module, args["w"]),
                       _feeding_bits(self.module, args["gi"]))


@torch.no_grad()
def mac_rows(graph_module: fx.GraphModule, *example: torch.Tensor) -> list[dict[str, Any]]:
    """One row per MAC layer of one run of a traced graph (a QuantizedModel's or torch.export's)."""
    recorder = _MacRecorder(graph_module)
    recorder.run(*example)
    return recorder.rows


def traced(model: nn.Module, *example: torch.Tensor) -> fx.GraphModule:
    """A float model as torch.export sees it, without computations no output uses (as in the files)."""
    was_training = model.training
    set_training(model, False)
    try:  # nn.GRU / nn.LSTM as quantize() sees them: their input Linear and hidden Linear get counted
        graph_module = torch.export.export(substitute_recurrent(model), tuple(example)).module()
    finally:
        set_training(model, was_training)
    graph_module.graph.eliminate_dead_code()
    graph_module.recompile()
    return graph_module


def count_macs(model: nn.Module, *example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward of ``example`` through a model (float or QuantizedModel)."""
    graph_module = getattr(model, "graph_module", None)
    if graph_module is None:
        graph_module = traced(model, *example)
    return sum(row["macs"] for row in mac_rows(graph_module, *example))


__all__ = ["count_macs", "mac_row", "mac_rows", "traced"]
