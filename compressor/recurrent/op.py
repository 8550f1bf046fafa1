"""The recurrence as one custom op, so torch.export keeps the time axis dynamic.

A Python loop over frames would be unrolled by torch.export for the traced
length only. ``compressor::gru_scan`` / ``compressor::lstm_scan`` run the whole
loop and appear as one node; quantize() replaces that node by the simulation
module (compressor/recurrent/quantized.py) and the exporters unroll it for the
file's chunk. Inputs: ``gi`` [B, T, G*H] (the input Linear's output for every
frame), the initial state(s) [B, H] or None (zeros), the hidden weight
[G*H, H] and bias [G*H]; ``reverse`` runs from the last frame to the first.
"""
from __future__ import annotations

from typing import Optional

import torch

from compressor.recurrent.cells import EagerOps, gru_step, lstm_step


def run_recurrence(cell: str, ops: EagerOps, gi: torch.Tensor, h0: Optional[torch.Tensor],
                   c0: Optional[torch.Tensor], w: torch.Tensor, b: torch.Tensor,
                   reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(outputs [B, T, H], last h, last c) with ``ops`` doing the arithmetic (c is h for a GRU)."""
    batch, frames, _ = gi.shape
    hidden = w.shape[1]
    zeros = gi.new_zeros(batch, hidden)
    h = ops.q("state", h0 if h0 is not None else zeros)
    c = ops.q("cell", c0 if c0 is not None else zeros) if cell == "lstm" else h
    outputs = [gi] * frames  # placeholders, every slot is overwritten
    order = range(frames - 1, -1, -1) if reverse else range(frames)
    for t in order:
        if cell == "gru":
            h = gru_step(ops, gi[:, t], h, w, b, hidden)
            c = h
        else:
            h, c = lstm_step(ops, gi[:, t], h, c, w, b, hidden)
        outputs[t] = h
    return torch.stack(outputs, dim=1) if frames else gi.new_zeros(batch, 0, hidden), h, c


@torch.library.custom_op("compressor::gru_scan", mutates_args=())
def gru_scan(gi: torch.Tensor, h0: Optional[torch.Tensor], w_hh: torch.Tensor, b_hh: torch.Tensor,
             reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    y, h, _ = run_recurrence("gru", EagerOps(), gi, h0, None, w_hh, b_hh, reverse)
    return y, h.clone()


@gru_scan.register_fake
def _(gi, h0, w_hh, b_hh, reverse):
    batch, frames, _ = gi.shape
    return gi.new_empty(batch, frames, w_hh.shape[1]), gi.new_empty(batch, w_hh.shape[1])


@torch.library.custom_op("compressor::lstm_scan", mutates_args=())
def lstm_scan(gi: torch.Tensor, h0: Optional[torch.Tensor], c0: Optional[torch.Tensor], w_hh: torch.Tensor,
              b_hh: torch.Tensor, reverse: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y, h, c = run_recurrence("lstm", EagerOps(), gi, h0, c0, w_hh, b_hh, reverse)
    return y, h.clone(), c.clone()


@lstm_scan.register_fake
def _(gi, h0, c0, w_hh, b_hh, reverse):
    batch, frames, _ = gi.shape
    hidden = w_hh.shape[1]
    return gi.new_empty(batch, frames, hidden), gi.new_empty(batch, hidden), gi.new_empty(batch, hidden)


SCAN_OPS = {"gru": torch.ops.compressor.gru_scan.default, "lstm": torch.ops.compressor.lstm_scan.default}


def cell_of(target: object) -> str | None:
    """'gru' / 'lstm' for a scan op's target, None otherwise."""
    return next((cell for cell, op in SCAN_OPS.items() if op is target), None)
