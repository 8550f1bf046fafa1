"""Quantizer modules inserted into a traced model by ``quantize()``.

Each quantizer runs in one of three modes:
- ``observe``: passes values through unchanged and records their range
  (calibration for PTQ and for the initial LSQ step sizes);
- ``quantize``: fake-quantizes (the simulation of the int8 model);
- ``float``: passes values through (for drift reports and ablations).
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from compressor.quant.fake_quant import fake_quantize, round_ste

MODES = ("observe", "quantize", "float")

# Fixed output qparams the runtimes demand (LiteRT refuses others): written for
# 8 bits and scaled for fewer; 16-bit tensors are symmetric, so all three use
# (1/32768, 0) there (LiteRT's int16 LOGISTIC/TANH/SOFTMAX kernels).
FIXED_QPARAMS = {
    "sigmoid": lambda bits: (1.0 / 2**bits, -(2 ** (bits - 1))),
    "softmax": lambda bits: (1.0 / 2**bits, -(2 ** (bits - 1))),
    "tanh": lambda bits: (1.0 / 2 ** (bits - 1), 0),
}
WIDE_BITS = 16  # activations wider than 8 bits: int16, symmetric, zero-point 0 (TFLite 16x8, ONNX int16 Q/DQ)


def fixed_qparams(op: str, bits: int) -> tuple[float, int]:
    if bits == WIDE_BITS:
        return 1.0 / 2 ** (WIDE_BITS - 1), 0
    return FIXED_QPARAMS[op](bits)

# A tensor with at most this many values per item holds per-item statistics (``holds_statistics``).
STATISTIC_VALUES_PER_ITEM = 64
# ... and its calibrated range is the extremes seen, widened by this factor (the ends away from 0).
STATISTIC_MARGIN = 1.5
_RESERVOIR = 1 << 16  # samples kept per quantizer for the MSE range search


def signed_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of a signed ``bits``-bit code; symmetric drops -2^(b-1)."""
    qmax = 2 ** (bits - 1) - 1
    return (-qmax if symmetric else -qmax - 1), qmax


class _Quantizer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mode = "quantize"

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown quantizer mode {mode!r}; expected one of {MODES}")
        self.mode = mode

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}" + (", positive" if getattr(self, "positive", False) else "")


class ActivationQuantizer(_Quantizer):
    """Per-tensor asymmetric LSQ quantizer with an integer (learned) zero-point.

    At 16 bits it is symmetric with zero-point 0, as int16 tensors are in
    TFLite's 16x8 kernels (LiteRT refuses another zero-point at load).
    """

    def __init__(self, bits: int = 8, learn_zero_point: bool = True, ema_decay: float = 0.9,
                 positive: bool = False) -> None:
        super().__init__()
        self.bits = bits
        # A tensor that feeds rsqrt/sqrt/log/a divisor: its smallest value is
        # one LSB, not 0 (a variance that rounds to 0 would make rsqrt inf).
        # Deployed as MAXIMUM(x, scale), an int8 op with a representable constant.
        self.positive = positive
        self.qmin, self.qmax = signed_range(bits, symmetric=False)
        self.ema_decay = ema_decay
        self.learn_zero_point = learn_zero_point
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.zero_point = nn.Parameter(torch.tensor(0.0), requires_grad=learn_zero_point and not self.symmetric)
        # Set by pin(): qparams fixed by a precision rule, which calibration leaves alone. A plain attribute, not
        # state: the rule is in the QuantConfig saved beside the state dict, and pins the rebuilt quantizer again.
        self.pinned = False
        self.register_buffer("running_min", torch.tensor(float("inf")))
        self.register_buffer("running_max", torch.tensor(float("-inf")))
        self._samples: list[torch.Tensor] = []
        # Draws so far: the seed of the next sample, so that this tensor's samples (and its MSE range) do not depend
        # on how many other quantizers the model has or the order they observe in.
        self._draws = 0
        self._extremes: tuple[float, float] | None = None  # over every value observed since the last set_range
        self._values_per_item = 0  # the most values one item gave in one call (1 for a gLN's mean)
        self._batch_range: tuple[torch.Tensor, torch.Tensor] | None = None  # union of this batch's calls
        self._batch_start: tuple[torch.Tensor, torch.Tensor] | None = None  # the EMA before this batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            self._observe(x.detach())
            return x
        if self.mode == "float":
            return x
        per_sample = x[0].numel() if x.dim() > 1 else x.numel()
        grad_scale = 1.0 / math.sqrt(max(per_sample, 1) * self.qmax)
        scale = self.scale.abs().clamp_min(1e-12)
        out = fake_quantize(x, scale, self.deployed_zero_point(), self.qmin, self.qmax, grad_scale)
        return torch.maximum(out, scale) if self.positive else out

    @property
    def symmetric(self) -> bool:
        return self.bits > 8

    def deployed_zero_point(self) -> torch.Tensor:
        """The learned zero-point held to the code range: an int8 file cannot hold -129 (seen after QAT)."""
        if self.symmetric:
            return torch.zeros_like(self.zero_point)
        return self.zero_point.clamp(self.qmin, self.qmax)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        # A quantizer shared by several tensors (concat inputs, where's branches, a masked attention score and
        # its fill) is called once per tensor: within one batch (until ``end_batch``) their range is the union,
        # one EMA step per batch (an EMA step per call would pull the range toward whichever tensor came last,
        # e.g. leave an attention's positive scores outside their own grid).
        lo, hi = x.min().float(), x.max().float()
        if self._batch_range is None:  # a batch begins: the EMA state it starts from
            self._batch_start = None if torch.isinf(self.running_min) else (self.running_min.clone(),
                                                                            self.running_max.clone())
        else:
            lo, hi = torch.minimum(lo, self._batch_range[0]), torch.maximum(hi, self._batch_range[1])
        self._batch_range = (lo, hi)
        if self._batch_start is None:
            self.running_min.copy_(lo)
            self.running_max.copy_(hi)
        else:
            d = self.ema_decay
            self.running_min.copy_(d * self._batch_start[0] + (1 - d) * lo)
            self.running_max.copy_(d * self._batch_start[1] + (1 - d) * hi)
        seen = (float(x.min()), float(x.max()))
        self._extremes = seen if self._extremes is None else (min(self._extremes[0], seen[0]),
                                                              max(self._extremes[1], seen[1]))
        self._values_per_item = max(self._values_per_item, x[0].numel() if x.dim() > 1 else x.numel())
        flat = x.reshape(-1).float()
        if flat.numel() > _RESERVOIR // 8:
            idx = torch.randint(0, flat.numel(), (_RESERVOIR // 8,),
                                generator=torch.Generator().manual_seed(self._draws))
            self._draws += 1
            flat = flat[idx]
        self._samples.append(flat.cpu())
        if sum(s.numel() for s in self._samples) > _RESERVOIR:
            self._samples = [torch.cat(self._samples)[-_RESERVOIR:]]

    def end_batch(self) -> None:
        """Close this batch: the next observation starts the next EMA step (running_min/max already hold this
        batch's, from the union of every call since the last end_batch)."""
        self._batch_range = None

    @property
    def observed(self) -> bool:
        return bool(torch.isfinite(self.running_min))

    def observed_samples(self) -> torch.Tensor:
        return torch.cat(self._samples) if self._samples else torch.empty(0)

    @property
    def few_values_per_item(self) -> bool:
        """At most ``STATISTIC_VALUES_PER_ITEM`` values per item observed (a gLN's mean is one): with the graph's
        say that the tensor is a reduction's (``graph.statistic_quantizers``), a per-item statistic."""
        return 0 < self._values_per_item <= STATISTIC_VALUES_PER_ITEM

    def observed_extremes(self) -> tuple[float, float]:
        """The smallest and largest value observed since the last ``set_range`` (not an EMA)."""
        if self._extremes is None:
            raise ValueError("nothing observed")
        return self._extremes

    @torch.no_grad()
    def set_range(self, lo: float, hi: float) -> None:
        """Scale and integer zero-point that cover [lo, hi] (0 always included)."""
        lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
        if self.symmetric:
            scale, zero_point = max(max(-lo, hi) / self.qmax, 1e-12), 0
        else:
            scale = max((hi - lo) / (self.qmax - self.qmin), 1e-8)
            zero_point = min(max(round(self.qmin - lo / scale), self.qmin), self.qmax)
        self.scale.copy_(torch.tensor(scale))
        self.zero_point.copy_(torch.tensor(float(zero_point)))
        self._samples, self._extremes, self._values_per_item, self._draws = [], None, 0, 0

    def qparams(self) -> tuple[float, int]:
        """The (scale, zero_point) the deployed int8 tensor uses."""
        return float(self.scale.detach().abs()), int(torch.round(self.deployed_zero_point().detach()))

    @torch.no_grad()
    def pin(self, scale: float, zero_point: int, learn: bool = False) -> None:
        """Fix the grid at (``scale``, ``zero_point``): calibration no longer sets it, and QAT does not learn it
        (with ``learn`` QAT starts from it and learns it). The one place a quantizer is frozen: precision rules
        with fixed qparams reach it through ``compressor.quant.graph.pin_fixed_qparams``."""
        low, high = (0, 0) if self.symmetric else (self.qmin, self.qmax)
        if not (math.isfinite(scale) and scale > 0) or zero_point != int(zero_point) or not low <= zero_point <= high:
            raise ValueError(f"a {self.bits}-bit activation quantizer cannot hold scale {scale!r} with zero-point "
                             f"{zero_point!r} (scale > 0, integer zero-point in [{low}, {high}])")
        self.scale.copy_(torch.tensor(float(scale)))
        self.zero_point.copy_(torch.tensor(float(zero_point)))
        self.scale.requires_grad_(learn)
        self.zero_point.requires_grad_(learn and self.learn_zero_point and not self.symmetric)
        self.pinned = True
        self._samples, self._draws = [], 0


class FixedQParamsQuantizer(_Quantizer):
    """Output quantizer of sigmoid/tanh/softmax with the runtimes' fixed qparams."""

    def __init__(self, op: str, bits: int = 8) -> None:
        super().__init__()
        self.op = op
        self.bits = bits
        self.qmin, self.qmax = signed_range(bits, symmetric=False)
        scale, zero_point = fixed_qparams(op, bits)
        self.register_buffer("scale", torch.tensor(scale))
        self.register_buffer("zero_point", torch.tensor(float(zero_point)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode != "quantize":
            return x
        return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def qparams(self) -> tuple[float, int]:
        return float(self.scale), int(self.zero_point)

    def extra_repr(self) -> str:
        return f"op={self.op}, " + super().extra_repr()


class WeightQuantizer(_Quantizer):
    """Symmetric LSQ weight quantizer, per output channel (``axis``) or per tensor."""

    def __init__(self, weight: torch.Tensor, bits: int = 8, axis: int | None = 0) -> None:
        super().__init__()
        self.bits = bits
        self.axis = axis
        self.qmin, self.qmax = signed_range(bits, symmetric=True)
        channels = weight.shape[axis] if axis is not None else 1
        self.scale = nn.Parameter(torch.ones(channels))
        self.set_scale_from(weight, method="minmax")

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mode != "quantize":
            return w
        per_channel = w.numel() // self.scale.numel()
        grad_scale = 1.0 / math.sqrt(max(per_channel, 1) * self.qmax)
        scale = self.scale.abs().clamp_min(1e-12)
        zero = torch.zeros_like(scale)
        if self.axis is None:
            return fake_quantize(w, scale.reshape(()), zero.reshape(()), self.qmin, self.qmax, grad_scale)
        return fake_quantize(w, scale, zero, self.qmin, self.qmax, grad_scale, axis=self.axis)

    def _channels(self, w: torch.Tensor) -> torch.Tensor:
        w = w.detach().float()
        if self.axis is None:
            return w.reshape(1, -1)
        return w.movedim(self.axis, 0).reshape(w.shape[self.axis], -1)

    @torch.no_grad()
    def set_scale_from(self, weight: torch.Tensor, method: str = "minmax") -> None:
        """Initialise the step sizes from the weights: max |w|, or the MSE-optimal clip."""
        rows = self._channels(weight)
        absmax = rows.abs().amax(dim=1).clamp_min(1e-8)
        if method == "mse":
            best = _mse_search_symmetric(rows, absmax, self.qmax)
        else:
            best = absmax
        self.scale.copy_(best / self.qmax)

    def qparams(self) -> torch.Tensor:
        return self.scale.detach().abs()


class BiasQuantizer(nn.Module):
    """int32 bias with scale s_in * s_w, as the int8 runtimes store it (int64 after a 16-bit input).

    It holds plain references (not submodules) to the quantizers of the op's
    input and weight: the scale is derived from theirs, never learned.
    """

    def __init__(self, input_quantizer: nn.Module, weight_quantizer: WeightQuantizer) -> None:
        super().__init__()
        object.__setattr__(self, "_input_q", input_quantizer)
        object.__setattr__(self, "_weight_q", weight_quantizer)

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        if self._weight_q.mode != "quantize" or getattr(self._input_q, "mode", "quantize") != "quantize":
            return bias
        s_in = self._input_q.scale.detach().abs()
        scale = (s_in * self._weight_q.scale.detach().abs()).clamp_min(1e-30)
        low, high = bias_code_range(getattr(self._input_q, "bits", 8))
        q = torch.clamp(round_ste(bias / scale), low, high)
        return q * scale


def bias_code_range(input_bits: int) -> tuple[int, int]:
    """int32 codes after an int8 input; int64 after an int16 one (TFLite's 16x8 kernels)."""
    return (-(2**31), 2**31 - 1) if input_bits <= 8 else (-(2**63), 2**63 - 1)


def _mse_search_symmetric(rows: torch.Tensor, absmax: torch.Tensor, qmax: int) -> torch.Tensor:
    """Per-row clipping threshold in (0.2, 1] x absmax minimising the quantization MSE."""
    best_err = torch.full_like(absmax, float("inf"))
    best = absmax.clone()
    for ratio in torch.linspace(0.2, 1.0, 81):
        thr = absmax * ratio
        s = (thr / qmax).unsqueeze(1)
        err = ((torch.clamp(torch.round(rows / s), -qmax, qmax) * s - rows) ** 2).mean(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, thr, best)
    return best


def mse_range(samples: torch.Tensor, lo: float, hi: float, qmin: int, qmax: int) -> tuple[float, float]:
    """Asymmetric [lo, hi] shrunk by the ratio that minimises the quantization MSE."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    best, best_err = (lo, hi), float("inf")
    for ratio in torch.linspace(0.2, 1.0, 81).tolist():
        a, b = lo * ratio, hi * ratio
        s = max((b - a) / (qmax - qmin), 1e-8)
        zp = min(max(round(qmin - a / s), qmin), qmax)
        q = torch.clamp(torch.round(samples / s + zp), qmin, qmax)
        err = float(((q - zp) * s - samples).pow(2).mean())
        if err < best_err:
            best, best_err = (a, b), err
    return best


def restart_sampling(quantizers: Iterable[nn.Module]) -> None:
    """Each quantizer's calibration samples start again from their first seed: a calibration draws the same
    samples whatever ran before it in the process (the CLI's one calibration per process always did; tests and
    sweeps run several)."""
    for q in quantizers:
        if isinstance(q, ActivationQuantizer):
            q._draws = 0
