"""The int8 simulation of a scan op, and how quantize() puts it in the graph.

quantize() plans the scan node's hidden weight like a Linear's (per output
row), its outputs and initial state on one state grid (and an LSTM's cell
state on one cell grid: a state goes out of one step and into the next with
no requantization, as a streaming file will pass it), and gives every
tensor of the cell its own quantizer (compressor/recurrent/cells.py names
them). The node becomes a call of ``QuantizedRecurrence``, which loops over
however many frames the input has.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import fx, nn

from compressor.quant.quantizers import ActivationQuantizer, FixedQParamsQuantizer
from compressor.recurrent.cells import QUANTIZERS, EagerOps
from compressor.recurrent.op import cell_of, run_recurrence

RECURRENCE_ROOT = "recurrences"


class QuantizedRecurrence(nn.Module):
    """Runs a scan op with every cell tensor fake-quantized; its quantizers live in the model's quantizer root."""

    def __init__(self, cell: str, quantizer_names: dict[str, str], root: nn.Module) -> None:
        super().__init__()
        self.cell = cell
        self.quantizer_names = dict(quantizer_names)  # cell name -> name in the quantizer root
        object.__setattr__(self, "_root", root)  # not a submodule: the root is the model's, saved once
        self.frames: int | None = None  # frames of the last input (the exporters unroll that many)
        self.batch = 1

    def quantizer(self, name: str) -> nn.Module:
        return getattr(self._root, self.quantizer_names[name])

    def forward(self, gi: torch.Tensor, h0, *rest):
        if self.cell == "lstm":
            c0, w, b, reverse = rest
        else:
            c0, (w, b, reverse) = None, rest
        self.batch, self.frames = int(gi.shape[0]), int(gi.shape[1])
        quantizers = {name: self.quantizer(name) for name in self.quantizer_names}
        if any(getattr(q, "mode", "") == "observe" for q in quantizers.values()):
            # one observation per tensor over all frames: observers average per call, and per-frame
            # calls would weight the first frames' (near-zero) states like whole chunks
            ops = _Collecting()
            y, h, c = run_recurrence(self.cell, ops, gi, h0, c0, w, b, bool(reverse))
            for name, values in ops.seen.items():
                quantizers[name](torch.cat([v.reshape(v.shape[0], -1) for v in values], dim=1))
        else:
            y, h, c = run_recurrence(self.cell, EagerOps(quantizers), gi, h0, c0, w, b, bool(reverse))
        return (y, h, c) if self.cell == "lstm" else (y, h)


class _Collecting(EagerOps):
    """Float arithmetic that keeps every tensor a quantizer would see."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, list[torch.Tensor]] = {}

    def q(self, name: str, x: torch.Tensor) -> torch.Tensor:
        self.seen.setdefault(name, []).append(x.detach())
        return x


def scan_outputs(node: fx.Node) -> dict[int, fx.Node]:
    """The getitem users of a scan node by output index (0: outputs, 1: last h, 2: last c)."""
    import operator

    return {int(u.args[1]): u for u in node.users if u.op == "call_function" and u.target is operator.getitem}


def scan_arguments(node: fx.Node) -> dict[str, object]:
    """A scan node's arguments by name."""
    names = ("gi", "h0", "c0", "w", "b", "reverse") if cell_of(node.target) == "lstm" else ("gi", "h0", "w", "b", "reverse")
    return dict(zip(names, node.args))


def cell_quantizers(cell: str, bits_of: Callable[[str], int], learn_zero_point: bool, ema_decay: float
                    ) -> dict[str, nn.Module]:
    """The quantizers of one cell's internal tensors (state and cell grids come from the planner); ``bits_of``
    gives a calibrated tensor's width by its cell name (a precision rule may name it); sigmoid and tanh outputs
    keep their fixed 8-bit grids."""
    out: dict[str, nn.Module] = {}
    for name, fixed in QUANTIZERS[cell].items():
        out[name] = (FixedQParamsQuantizer(fixed, 8) if fixed else
                     ActivationQuantizer(bits_of(name), learn_zero_point, ema_decay))
    return out


__all__ = ["QuantizedRecurrence", "RECURRENCE_ROOT", "cell_quantizers", "scan_arguments", "scan_outputs"]
