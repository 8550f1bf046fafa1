"""One step of a GRU or LSTM cell, written once for every way it is run.

``ops`` supplies the arithmetic: ``EagerOps`` computes with torch (float, or
the int8 simulation when it is given quantizers), the exporters' ``GraphOps``
writes the same step into an FX graph once per frame. Each ``ops.q(name, x)``
is a tensor the deployed file holds in int8; the names are the cell's
quantizer names. The forms are chosen for integer kernels: the state update
is ``n + z * (h - n)`` (one subtraction, no ``1 - z``), and the gates share
one pre-activation tensor where PyTorch adds input and hidden parts.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

CELLS = ("gru", "lstm")
GATES = {"gru": 3, "lstm": 4}

# quantizer name -> fixed grid ("sigmoid"/"tanh") or None (calibrated)
QUANTIZERS = {
    "gru": {"gh": None, "rz_in": None, "r": "sigmoid", "z": "sigmoid", "r_gh": None, "n_in": None,
            "n": "tanh", "h_minus_n": None, "z_h_minus_n": None},
    "lstm": {"gh": None, "gates_in": None, "i": "sigmoid", "f": "sigmoid", "g": "tanh", "o": "sigmoid",
             "f_c": None, "i_g": None, "c_tanh": "tanh"},
}


class EagerOps:
    """The step in torch; ``quantizers`` maps a name to its fake-quantizer (missing: float)."""

    def __init__(self, quantizers: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None) -> None:
        self.quantizers = quantizers or {}

    def q(self, name: str, x: torch.Tensor) -> torch.Tensor:
        quantizer = self.quantizers.get(name)
        return quantizer(x) if quantizer is not None else x

    def linear(self, x, w, b):
        return torch.nn.functional.linear(x, w, b)

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def mul(self, a, b):
        return a * b

    def sigmoid(self, x):
        return torch.sigmoid(x)

    def tanh(self, x):
        return torch.tanh(x)

    def gate(self, x, index: int, size: int):
        return x[..., index * size:(index + 1) * size]

    def sigmoid_gates(self, x, indices: tuple[int, ...], names: tuple[str, ...], size: int) -> list:
        """sigmoid of gates ``indices`` of ``x``, each on its quantizer ``names``."""
        return [self.q(name, self.sigmoid(self.gate(x, index, size))) for index, name in zip(indices, names)]


def gru_step(ops: Any, gi: Any, h: Any, w: Any, b: Any, hidden: int) -> Any:
    """h' for input-side pre-activations ``gi`` [B, 3H] (r, z, n) and state ``h`` [B, H]."""
    gh = ops.q("gh", ops.linear(h, w, b))
    rz = ops.q("rz_in", ops.add(ops.gate(gi, 0, 2 * hidden), ops.gate(gh, 0, 2 * hidden)))
    r, z = ops.sigmoid_gates(rz, (0, 1), ("r", "z"), hidden)
    r_gh = ops.q("r_gh", ops.mul(r, ops.gate(gh, 2, hidden)))
    n = ops.q("n", ops.tanh(ops.q("n_in", ops.add(ops.gate(gi, 2, hidden), r_gh))))
    update = ops.q("z_h_minus_n", ops.mul(z, ops.q("h_minus_n", ops.sub(h, n))))
    return ops.q("state", ops.add(n, update))


def lstm_step(ops: Any, gi: Any, h: Any, c: Any, w: Any, b: Any, hidden: int) -> tuple[Any, Any]:
    """(h', c') for input-side pre-activations ``gi`` [B, 4H] (i, f, g, o) and states ``h``, ``c`` [B, H]."""
    gh = ops.q("gh", ops.linear(h, w, b))
    gates = ops.q("gates_in", ops.add(gi, gh))
    i, f, o = ops.sigmoid_gates(gates, (0, 1, 3), ("i", "f", "o"), hidden)
    g = ops.q("g", ops.tanh(ops.gate(gates, 2, hidden)))
    c_new = ops.q("cell", ops.add(ops.q("f_c", ops.mul(f, c)), ops.q("i_g", ops.mul(i, g))))
    h_new = ops.q("state", ops.mul(o, ops.q("c_tanh", ops.tanh(c_new))))
    return h_new, c_new
