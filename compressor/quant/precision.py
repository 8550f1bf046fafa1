"""Precision as data: ordered per-layer overrides of the default quantization scheme.

A rule matches tensors by the module that produces them (an fnmatch pattern
on its dotted path, e.g. ``separator.blocks.7.*``) and by op (an fnmatch
pattern on the op registry's record name, e.g. ``mean`` or ``sig*``), and sets
what it names: activation bits (8, or 16 for the few tensors that need it),
weight bits, per-channel or per-tensor weights. Rules apply in order, later
ones winning field by field, like AI Edge Quantizer's recipes. The rules are
part of ``QuantConfig``, so they are saved with the checkpoint; the exporters
check each 16-bit tensor against what the target runtime runs integer.

A rule may also name one tensor: ``#NAME`` matches the activation quantizer
of that name, as ``compress eval --sensitivity`` lists them.

Written on the command line as ``MODULE[:OP]=SPEC`` or ``#NAME=SPEC``, SPEC a comma list of
``a16``/``a8`` (activation bits), ``w8``/``w7``/``w4`` (weight bits),
``per-tensor``/``per-channel``: ``--precision 'separator.blocks.7.*=a16'``,
``--precision '*:mean=a16'``.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from compressor.configs import JsonConfig
from compressor.errors import ConfigError

ACTIVATION_BITS = (8, 16)  # what both runtimes have kernels for (int8, and TFLite 16x8 / ONNX int16 Q/DQ)


@dataclass(frozen=True)
class PrecisionOverride(JsonConfig):
    """One rule: which tensors it matches and the precision it gives them (None: keep)."""

    module: str = "*"
    op: str = "*"
    tensor: str = "*"  # the activation quantizer's name, as `compress eval --sensitivity` prints it
    activation_bits: int | None = None
    weight_bits: int | None = None
    per_channel: bool | None = None

    def __post_init__(self) -> None:
        if self.activation_bits is not None and self.activation_bits not in ACTIVATION_BITS:
            raise ConfigError(f"precision override {self.pattern}: activation_bits must be one of "
                              f"{ACTIVATION_BITS}, got {self.activation_bits!r}")
        if self.weight_bits is not None and not (isinstance(self.weight_bits, int) and 2 <= self.weight_bits <= 8):
            raise ConfigError(f"precision override {self.pattern}: weight_bits must be in 2..8, "
                              f"got {self.weight_bits!r}")

    @property
    def pattern(self) -> str:
        if self.tensor != "*":
            return f"#{self.tensor}"
        return self.module if self.op == "*" else f"{self.module}:{self.op}"

    def matches(self, module_path: str, op: str, tensor: str = "") -> bool:
        return (fnmatch.fnmatchcase(module_path, self.module) and fnmatch.fnmatchcase(op, self.op)
                and fnmatch.fnmatchcase(tensor, self.tensor))

    @classmethod
    def parse(cls, text: str) -> "PrecisionOverride":
        """'MODULE[:OP]=a16,w8,per-tensor' -> a rule (the CLI's form)."""
        where, sep, spec = text.partition("=")
        if not sep or not where or not spec:
            raise ConfigError(f"--precision {text!r}: expected MODULE[:OP]=SPEC or #TENSOR=SPEC, e.g. "
                              "'decoder.*=a16', '*:mean=a16' or '#act_mul_2=a16'")
        if where.startswith("#"):
            fields: dict[str, Any] = {"tensor": where[1:]}
        else:
            module, _, op = where.partition(":")
            fields = {"module": module or "*", "op": op or "*"}
        for item in (s.strip() for s in spec.split(",")):
            if item in ("per-tensor", "per-channel"):
                fields["per_channel"] = item == "per-channel"
            elif item[:1] in ("a", "w") and item[1:].isdigit():
                fields["activation_bits" if item[0] == "a" else "weight_bits"] = int(item[1:])
            else:
                raise ConfigError(f"--precision {text!r}: unknown setting {item!r} "
                                  "(a8, a16, w2..w8, per-tensor, per-channel)")
        return cls(**fields)


@dataclass(frozen=True)
class Precision:
    """What one tensor gets after every rule is applied."""

    activation_bits: int
    weight_bits: int
    per_channel: bool


def resolve(rules: Iterable[PrecisionOverride], module_path: str, op: str, default: Precision,
            tensor: str = "") -> Precision:
    activation_bits, weight_bits, per_channel = default.activation_bits, default.weight_bits, default.per_channel
    for rule in rules:
        if not rule.matches(module_path, op, tensor):
            continue
        activation_bits = rule.activation_bits if rule.activation_bits is not None else activation_bits
        weight_bits = rule.weight_bits if rule.weight_bits is not None else weight_bits
        per_channel = rule.per_channel if rule.per_channel is not None else per_channel
    return Precision(activation_bits, weight_bits, per_channel)


def precision_overrides(rules: Iterable[str]) -> tuple[PrecisionOverride, ...]:
    """The CLI/recipe form ('MODULE[:OP]=SPEC' strings) as rules."""
    return tuple(PrecisionOverride.parse(rule) for rule in rules)


def overrides_from(data: Iterable[Mapping[str, Any] | PrecisionOverride]) -> tuple[PrecisionOverride, ...]:
    return tuple(d if isinstance(d, PrecisionOverride) else PrecisionOverride.from_dict(d) for d in data)


__all__ = ["ACTIVATION_BITS", "Precision", "PrecisionOverride", "overrides_from", "precision_overrides", "resolve"]
