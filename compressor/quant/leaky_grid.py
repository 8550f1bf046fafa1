"""One-slope PReLU on grids where every int8 runtime computes it exactly as simulated.

Deployed, a one-slope PReLU is a LEAKY_RELU. XNNPACK (LiteRT's default path)
computes it as ``floor((256 zo + 128 + d M) / 256)``, d the input code
minus its zero-point and M = rint(256 s_in / s_out) (times the slope when
d < 0): multipliers with 8 fractional bits, measured bit-exact on every
element. With trained scales M is off by up to half a step, and the errors
that follow are one-sided within an op; through the norms' per-chunk
mean/variance and the next 1x1 conv they add up coherently (the LiteRT
files drifted to 30-31 dB SNR against the simulation, -0.01 to -0.02 dB
SI-SNR).

``snap_leaky_relu_grids`` moves each such op's output scale to
s_out = 256 s_in / Mp and its slope to Mn / Mp, with Mp, Mn odd integers
next to the trained values (a relative change of at most 2/Mp). Then both
multipliers are exact on XNNPACK, on the builtin kernels and in ORT's
table, and d M / 256 lands on a rounding tie only for d = +-128 (odd M),
where XNNPACK rounds up and the others to even. It runs once, after
training: QAT would move the scales off the grid again.

It is not a fixed-qparams precision rule (quant/precision.py): each grid is
derived from the calibrated or trained s_in and s_out, so it is data-dependent
and known only after calibration. An output whose qparams a rule fixes (and
QAT does not learn) is left as the rule says.
"""
from __future__ import annotations

import logging
import math

import torch

from compressor.quant.graph import get_attr_value, grid_source, quantizer_at
from compressor.quant.model import QuantizedModel
from compressor.quant.quantizers import ActivationQuantizer, WeightQuantizer

log = logging.getLogger(__name__)
aten = torch.ops.aten
FRACTION = 256  # XNNPACK's qs8 LEAKY_RELU multipliers: 8 fractional bits


def _odd(value: float) -> int:
    return 2 * math.floor(value / 2) + 1


@torch.no_grad()
def snap_leaky_relu_grids(qmodel: QuantizedModel) -> int:
    """Put every one-slope PReLU on exact-multiplier grids; returns how many were moved."""
    moved = 0
    for node in qmodel.graph_module.graph.nodes:
        if node.op != "call_function" or node.target != aten.prelu.default or len(node.users) != 1:
            continue
        x, slope_node = node.args
        gm = qmodel.graph_module
        # the input's grid may come through a reshape/permute (asteroid DPTNet's PReLU after its overlap-add)
        in_q, out_q = quantizer_at(gm, grid_source(gm, x)), quantizer_at(gm, next(iter(node.users)))
        slope_q = quantizer_at(gm, slope_node)
        source = slope_node.args[0] if slope_q is not None else slope_node
        if not (isinstance(in_q, ActivationQuantizer) and isinstance(out_q, ActivationQuantizer)
                and isinstance(slope_q, WeightQuantizer) and source.op == "get_attr"):
            continue
        if getattr(out_q, "pinned", False) and not out_q.scale.requires_grad:
            continue  # fixed by a precision rule
        value = get_attr_value(gm, str(source.target))
        if value.numel() != 1:
            continue  # per-channel slopes deploy as GREATER + SELECT, not LEAKY_RELU
        s_in, _ = in_q.qparams()
        s_out, _ = out_q.qparams()
        alpha = float(slope_q(value.detach()).reshape(-1)[0])
        m_pos = max(_odd(FRACTION * s_in / s_out), 1)
        m_neg = _odd(alpha * m_pos)
        out_q.scale.copy_(torch.tensor(FRACTION * s_in / m_pos))
        new_alpha = m_neg / m_pos
        value.copy_(torch.full_like(value, new_alpha))
        slope_q.scale.copy_(torch.full_like(slope_q.scale, abs(new_alpha) / slope_q.qmax))
        moved += 1
    if moved:
        log.info("one-slope PReLU: %d output scales and slopes on exact LEAKY_RELU grids", moved)
    return moved


__all__ = ["snap_leaky_relu_grids"]
