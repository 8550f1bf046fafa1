"""Typed configuration of the quantization scheme."""
from __future__ import annotations

from dataclasses import dataclass

from compressor.configs import JsonConfig
from compressor.errors import ConfigError
from compressor.quant.precision import DEFAULT_RULES, Precision, PrecisionOverride, overrides_from

CALIBRATION_METHODS = ("minmax", "mse")
# Standard layers quantize() swaps for exact int8-ready forms (compressor/quant/substitution.py), each switchable:
# "norm": nn.LayerNorm / nn.GroupNorm (and F.layer_norm / F.group_norm) as mean, sub, mul, mean, add, rsqrt, mul;
# "batchnorm": eval-mode BatchNorm folded into the conv/linear before it (else a per-channel mul + add);
# "attention": F.scaled_dot_product_attention (and so nn.MultiheadAttention) as matmul, softmax, matmul;
# "recurrent": nn.GRU / nn.LSTM modules as an input Linear + the cell scanned over frames (compressor/recurrent);
# "norm_idiom": a hand-written norm module (per-channel gain and shift) whose output equals GroupNorm(1, C),
#   GroupNorm(C, C) or a layer norm over the channels (cLN) on probes, swapped for that norm before tracing.
SUBSTITUTIONS = ("norm", "batchnorm", "attention", "recurrent", "norm_idiom")


@dataclass(frozen=True)
class QuantConfig(JsonConfig):
    """How weights and activations are quantized.

    The defaults are the TFLite/ONNX int8 scheme: int8 weights, symmetric per
    output channel in [-127, 127]; int8 activations, asymmetric per tensor
    with an integer zero-point. ``weight_bits=7`` trains for onnxruntime on
    x86 CPUs without VNNI, whose int8 kernels saturate with full-range
    weights (see DESIGN.md). ``overrides`` change that scheme per layer
    (compressor/quant/precision.py), e.g. a sensitive tensor kept at 16 bits, or fix one tensor's qparams;
    by default (``DEFAULT_RULES``) a norm's averaged squares are summed in a matmul's int32 accumulator.
    ``substitutions``: the kinds of standard layers swapped for exact int8-ready forms (``SUBSTITUTIONS``);
    a layer whose kind is left out is refused, as before substitutions existed.
    """

    weight_bits: int = 8
    activation_bits: int = 8
    per_channel: bool = True
    learn_zero_point: bool = True
    calibration: str = "minmax"
    ema_decay: float = 0.9
    fuse_relu: bool = True
    # a ReLU written after a reshape/transpose of its producer is moved next to it (graph_of), so its quantizer is
    # the producer's, rounded once, as TFLite's converter fuses it; saved without it (before): False, not moved
    relu_before_moves: bool = True
    overrides: tuple[PrecisionOverride, ...] = DEFAULT_RULES
    substitutions: tuple[str, ...] = SUBSTITUTIONS

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", overrides_from(self.overrides))
        kinds = self.substitutions
        if not isinstance(kinds, (list, tuple)) or not all(isinstance(k, str) for k in kinds):
            raise ConfigError(f"QuantConfig.substitutions must be a list of names from {SUBSTITUTIONS}, "
                              f"got {self.substitutions!r}")
        object.__setattr__(self, "substitutions", tuple(dict.fromkeys(self.substitutions)))
        unknown = [k for k in self.substitutions if k not in SUBSTITUTIONS]
        if unknown:
            raise ConfigError(f"QuantConfig.substitutions: unknown kind(s) {unknown}; known: {list(SUBSTITUTIONS)}")
        for name in ("weight_bits", "activation_bits"):
            bits = getattr(self, name)
            if not isinstance(bits, int) or not 2 <= bits <= 8:
                raise ConfigError(f"QuantConfig.{name} must be an integer in 2..8, got {bits!r}")
        if self.calibration not in CALIBRATION_METHODS:
            raise ConfigError(
                f"QuantConfig.calibration must be one of {CALIBRATION_METHODS}, got {self.calibration!r}"
            )
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"QuantConfig.ema_decay must be in [0, 1), got {self.ema_decay!r}")
        for rule in self.overrides:
            if rule.activation_bits is None:  # its zero-point on this config's grid (a rule's own bits: checked there)
                rule.check_zero_point(self.activation_bits)

    @property
    def default_precision(self) -> Precision:
        return Precision(self.activation_bits, self.weight_bits, self.per_channel)

    @classmethod
    def from_dict(cls, data):  # type: ignore[override]
        if isinstance(data, dict) and "overrides" not in data:
            data = {**data, "overrides": ()}  # saved before rules existed: no rule, not today's DEFAULT_RULES
        if isinstance(data, dict) and "relu_before_moves" not in data:
            data = {**data, "relu_before_moves": False}  # saved before: its quantizers sit where they were planned
        return super().from_dict(data)

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["overrides"] = [rule.to_dict() for rule in self.overrides]  # JSON has lists, not tuples
        data["substitutions"] = list(self.substitutions)
        return data
