"""Typed configuration of the quantization scheme."""
from __future__ import annotations

from dataclasses import dataclass

from compressor.configs import JsonConfig
from compressor.errors import ConfigError
from compressor.quant.precision import Precision, PrecisionOverride, overrides_from

CALIBRATION_METHODS = ("minmax", "mse")


@dataclass(frozen=True)
class QuantConfig(JsonConfig):
    """How weights and activations are quantized.

    The defaults are the TFLite/ONNX int8 scheme: int8 weights, symmetric per
    output channel in [-127, 127]; int8 activations, asymmetric per tensor
    with an integer zero-point. ``weight_bits=7`` trains for onnxruntime on
    x86 CPUs without VNNI, whose int8 kernels saturate with full-range
    weights (see DESIGN.md). ``overrides`` change that scheme per layer
    (compressor/quant/precision.py), e.g. a sensitive tensor kept at 16 bits.
    """

    weight_bits: int = 8
    activation_bits: int = 8
    per_channel: bool = True
    learn_zero_point: bool = True
    calibration: str = "minmax"
    ema_decay: float = 0.9
    fuse_relu: bool = True
    overrides: tuple[PrecisionOverride, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", overrides_from(self.overrides))
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

    @property
    def default_precision(self) -> Precision:
        return Precision(self.activation_bits, self.weight_bits, self.per_channel)

    def to_dict(self) -> dict:
        data = super().to_dict()
        data["overrides"] = [rule.to_dict() for rule in self.overrides]  # JSON has lists, not tuples
        return data
