"""Swap a model's nn.GRU / nn.LSTM for an equivalent stack of quantizable parts, before tracing.

Each layer and direction becomes an input ``nn.Linear`` over all frames (one
int8 FULLY_CONNECTED for a chunk) followed by the scan op that runs the
hidden-side recurrence (compressor/recurrent/op.py). The substitute takes and
returns what the original does (``batch_first``, bidirectional, several
layers, given initial states, unbatched input) and holds the original's
weights; dropout between layers is inactive in eval mode, which is how
models are traced.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from compressor.errors import UnsupportedOpError
from compressor.recurrent.op import SCAN_OPS
from compressor.recurrent.cells import GATES

log = logging.getLogger("compressor.quant")


class RecurrentStack(nn.Module):
    """nn.GRU / nn.LSTM as input Linear layers + scan ops (same arguments, same results)."""

    def __init__(self, rnn: nn.GRU | nn.LSTM) -> None:
        super().__init__()
        self.cell = "lstm" if isinstance(rnn, nn.LSTM) else "gru"
        if getattr(rnn, "proj_size", 0):
            raise UnsupportedOpError("nn.LSTM with proj_size has no int8 form here; use proj_size=0 and a Linear")
        self.hidden = rnn.hidden_size
        self.layers = rnn.num_layers
        self.directions = 2 if rnn.bidirectional else 1
        self.batch_first = rnn.batch_first
        gates = GATES[self.cell] * self.hidden
        self.inputs = nn.ModuleList()
        self.weight_hh = nn.ParameterList()
        self.bias_hh = nn.ParameterList()
        for layer in range(self.layers):
            for direction in range(self.directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                w_ih = getattr(rnn, f"weight_ih{suffix}").detach().clone()
                linear = nn.Linear(w_ih.shape[1], gates, bias=True)
                with torch.no_grad():
                    linear.weight.copy_(w_ih)
                    b_ih = getattr(rnn, f"bias_ih{suffix}", None) if rnn.bias else None
                    linear.bias.copy_(b_ih if b_ih is not None else torch.zeros(gates))
                self.inputs.append(linear)
                self.weight_hh.append(nn.Parameter(getattr(rnn, f"weight_hh{suffix}").detach().clone()))
                b_hh = getattr(rnn, f"bias_hh{suffix}") if rnn.bias else torch.zeros(gates)
                self.bias_hh.append(nn.Parameter(b_hh.detach().clone()))

    def flatten_parameters(self) -> None:
        """nn.RNNBase's cuDNN weight packing, which models call before each use: nothing to pack here."""

    def forward(self, x: torch.Tensor, hx=None):
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0 if self.batch_first else 1)
            if hx is not None:
                hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
        if not self.batch_first:
            x = x.transpose(0, 1)
        h0 = c0 = None
        if hx is not None:
            h0, c0 = hx if self.cell == "lstm" else (hx, None)
        last_h, last_c = [], []
        for layer in range(self.layers):
            outputs = []
            for direction in range(self.directions):
                index = layer * self.directions + direction
                gi = self.inputs[index](x)
                h_init = h0[index] if h0 is not None else None
                if self.cell == "gru":
                    y, h = SCAN_OPS["gru"](gi, h_init, self.weight_hh[index], self.bias_hh[index],
                                                         bool(direction))
                    c = None
                else:
                    c_init = c0[index] if c0 is not None else None
                    y, h, c = SCAN_OPS["lstm"](gi, h_init, c_init, self.weight_hh[index],
                                                             self.bias_hh[index], bool(direction))
                outputs.append(y)
                last_h.append(h)
                last_c.append(c)
            x = outputs[0] if self.directions == 1 else torch.cat(outputs, dim=-1)
        if not self.batch_first:
            x = x.transpose(0, 1)
        h_n = torch.stack(last_h, dim=0)
        c_n = torch.stack(last_c, dim=0) if self.cell == "lstm" else None
        if unbatched:
            x = x.squeeze(0 if self.batch_first else 1)
            h_n = h_n.squeeze(1)
            c_n = c_n.squeeze(1) if c_n is not None else None
        return (x, (h_n, c_n)) if self.cell == "lstm" else (x, h_n)


def substitute_recurrent(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every nn.GRU / nn.LSTM swapped (the model itself when it has none)."""
    found = [name for name, m in model.named_modules() if type(m) in (nn.GRU, nn.LSTM)]
    if not found:
        return model
    model = copy.deepcopy(model)
    for name in found:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        original = getattr(parent, child)
        setattr(parent, child, RecurrentStack(original))
    log.info("substituted %d recurrent layer(s) (nn.GRU/nn.LSTM -> input Linear + the cell over frames): %s",
             len(found), ", ".join(f"{name} ({model.get_submodule(name).cell.upper()})" for name in found))
    return model
