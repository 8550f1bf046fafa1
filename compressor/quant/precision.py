"""Precision as data: ordered per-layer overrides of the default quantization scheme.

A rule matches tensors by the module that produces them (an fnmatch pattern
on its dotted path, e.g. ``separator.blocks.7.*``) and by op (an fnmatch
pattern on the op registry's record name, e.g. ``mean`` or ``sig*``), and sets
what it names: activation bits (8, or 16 for the few tensors that need it),
weight bits, per-channel or per-tensor weights. Rules apply in order, later
ones winning field by field, like AI Edge Quantizer's recipes. The rules are
part of ``QuantConfig``, so they are saved with the checkpoint; the exporters
check each 16-bit tensor against what the target runtime runs integer.

A rule's OP may also be ``variance``: a square whose only uses are means (the
``(x - m) * (x - m)`` of a norm, the ``x * x`` of an RMS). Besides 8 and 16
bits such a square may be given 32 (``a32``, the default rule
``DEFAULT_RULES``): it gets no quantizer of its own, the simulation averages
the exact squares, and the exporters compute square and mean as one int8
matmul of the tensor with itself, whose int32 accumulator holds the squares
exactly (exporters/lowering.py). An 8-bit grid cannot hold the squares of a
long-tailed signal (one for the largest rounds the bulk's to zero, one for the
bulk clips the largest; README "Level"); 16 bits can, but 16-bit MUL and MEAN
run on LiteRT's reference kernels (9x the latency of the whole file).

A rule's OP may also be ``output``: a tensor that is one of the model's
outputs (through data-movement ops). ``'*:output=a16'`` gives a file 16-bit
outputs (int16 audio; the level stage's fixed output grid then has 256x finer
steps, README "Level"); a file's inputs stay 8-bit.

A rule may also name one tensor: ``#NAME`` matches the activation quantizer
of that name, as ``compress eval --sensitivity`` lists them.

A rule may also fix an activation quantizer's qparams (``scale`` and
``zero_point``, both or neither): quantize() sets them when it builds the
quantizer, calibration leaves them, and QAT does not learn them (with
``learn_qparams`` QAT starts from them and learns them, calibration still
leaves them). Recipes write their fixed grids this way instead of editing
quantizers after calibration, so the checkpoint's config says why a grid is
what it is: the level stage's input grid (scale target_peak/126, zero-point
0; learned by QAT, recipes/level.py), FQSE's split input (1/128, 0,
fqse/io_config.py) and BAM's binary maps (1, -128, recipes/bam.py). The
LEAKY_RELU grid snap (quant/leaky_grid.py) is no rule: it derives each grid
from the calibrated scales. Fixed qparams reach the quantizers on graph
tensors (the ones a ``#NAME`` rule names), not weights, and not the
internal quantizers of a recurrent cell.

Written on the command line as ``MODULE[:OP]=SPEC`` or ``#NAME=SPEC``, SPEC a comma list of
``a16``/``a8`` (activation bits), ``w8``/``w7``/``w4`` (weight bits),
``per-tensor``/``per-channel``, ``scale=S,zp=Z`` (fixed qparams) and ``learn``
(QAT learns them from there): ``--precision 'separator.blocks.7.*=a16'``,
``--precision '*:mean=a16'``, ``--precision '#act_mixture=a8,scale=0.0009,zp=0'``.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from compressor.configs import JsonConfig
from compressor.errors import ConfigError

ACTIVATION_BITS = (8, 16)  # what both runtimes have kernels for (int8, and TFLite 16x8 / ONNX int16 Q/DQ)
# The op name a rule gives to a square that is only averaged (graph.averaged_square), and the width only such a
# square may have: no quantizer, the exact squares summed in the int32 accumulator of a matmul.
VARIANCE_ROLE = "variance"
ACCUMULATOR_BITS = 32
# The op name a rule gives to a tensor that is one of the model's outputs (through data-movement ops):
# '*:output=a16' gives a file int16 audio out (README "Level").
OUTPUT_ROLE = "output"
QPARAM_FIELDS = ("scale", "zero_point", "learn_qparams")  # left out of to_dict() when unset: configs stay as before


def zero_point_range(bits: int) -> tuple[int, int]:
    """The zero-points an activation quantizer of ``bits`` bits can hold (wider than 8 bits: symmetric, only 0)."""
    return (0, 0) if bits > 8 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


@dataclass(frozen=True)
class PrecisionOverride(JsonConfig):
    """One rule: which tensors it matches and the precision it gives them (None: keep)."""

    module: str = "*"
    op: str = "*"
    tensor: str = "*"  # the activation quantizer's name, as `compress eval --sensitivity` prints it
    activation_bits: int | None = None
    weight_bits: int | None = None
    per_channel: bool | None = None
    # Fixed qparams of the activation quantizer (both or neither): set when it is built, never calibrated,
    # not learned by QAT unless learn_qparams (then they are where QAT starts).
    scale: float | None = None
    zero_point: int | None = None
    learn_qparams: bool = False

    def __post_init__(self) -> None:
        if self.activation_bits == ACCUMULATOR_BITS:
            if self.op != VARIANCE_ROLE or self.tensor != "*" or self.scale is not None:
                raise ConfigError(f"precision override {self.pattern}: a{ACCUMULATOR_BITS} (the squares summed in a "
                                  f"matmul's int32 accumulator) only applies to op '{VARIANCE_ROLE}', e.g. "
                                  f"'*:{VARIANCE_ROLE}=a{ACCUMULATOR_BITS}'")
        elif self.activation_bits is not None and self.activation_bits not in ACTIVATION_BITS:
            raise ConfigError(f"precision override {self.pattern}: activation_bits must be one of "
                              f"{ACTIVATION_BITS} (or {ACCUMULATOR_BITS} for op '{VARIANCE_ROLE}'), "
                              f"got {self.activation_bits!r}")
        if self.weight_bits is not None and not (isinstance(self.weight_bits, int) and 2 <= self.weight_bits <= 8):
            raise ConfigError(f"precision override {self.pattern}: weight_bits must be in 2..8, "
                              f"got {self.weight_bits!r}")
        self._check_qparams()

    def _check_qparams(self) -> None:
        if (self.scale is None) != (self.zero_point is None):
            raise ConfigError(f"precision override {self.pattern}: fixed qparams need both scale and zero_point "
                              f"(or neither), got scale={self.scale!r}, zero_point={self.zero_point!r}")
        if not isinstance(self.learn_qparams, bool):
            raise ConfigError(f"precision override {self.pattern}: learn_qparams must be true or false, "
                              f"got {self.learn_qparams!r}")
        if self.scale is None:
            if self.learn_qparams:
                raise ConfigError(f"precision override {self.pattern}: learn_qparams needs scale and zero_point")
            return
        scale = self.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0):
            raise ConfigError(f"precision override {self.pattern}: scale must be a finite number > 0, got {scale!r}")
        object.__setattr__(self, "scale", float(scale))
        self.check_zero_point(self.activation_bits if self.activation_bits is not None else 8)

    def check_zero_point(self, bits: int) -> None:
        """ConfigError unless the rule's zero_point is an integer a ``bits``-bit activation quantizer holds."""
        zp = self.zero_point
        if zp is None:
            return
        low, high = zero_point_range(bits)
        if isinstance(zp, bool) or not isinstance(zp, int) or not low <= zp <= high:
            raise ConfigError(f"precision override {self.pattern}: zero_point must be an integer in "
                              f"[{low}, {high}] for {bits}-bit activations, got {zp!r}")

    @property
    def fixes_qparams(self) -> bool:
        return self.scale is not None

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        for name in QPARAM_FIELDS:
            if data[name] is None or data[name] is False:
                del data[name]  # a rule without fixed qparams is written as before they existed
        return data

    @property
    def pattern(self) -> str:
        if self.tensor != "*":
            return f"#{self.tensor}"
        return self.module if self.op == "*" else f"{self.module}:{self.op}"

    def matches(self, module_path: str, op: str, tensor: str = "", roles: tuple[str, ...] = ()) -> bool:
        """``roles``: other names the op answers to ('variance' for a norm's averaged square)."""
        return (fnmatch.fnmatchcase(module_path, self.module)
                and any(fnmatch.fnmatchcase(name, self.op) for name in (op, *roles))
                and fnmatch.fnmatchcase(tensor, self.tensor))

    @classmethod
    def parse(cls, text: str) -> "PrecisionOverride":
        """'MODULE[:OP]=a16,w8,per-tensor' or '#NAME=a8,scale=0.0009,zp=0[,learn]' -> a rule (the CLI's form)."""
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
            elif item.startswith(("scale=", "zp=")):
                key, _, value = item.partition("=")
                try:
                    fields["scale" if key == "scale" else "zero_point"] = float(value) if key == "scale" else int(value)
                except ValueError:
                    raise ConfigError(f"--precision {text!r}: {key}= needs "
                                      f"{'a number' if key == 'scale' else 'an integer'}, got {value!r}") from None
            elif item == "learn":
                fields["learn_qparams"] = True
            else:
                raise ConfigError(f"--precision {text!r}: unknown setting {item!r} "
                                  "(a8, a16, a32 for op variance, w2..w8, per-tensor, per-channel, scale=S, zp=Z, learn)")
        return cls(**fields)


@dataclass(frozen=True)
class Precision:
    """What one tensor gets after every rule is applied."""

    activation_bits: int
    weight_bits: int
    per_channel: bool
    qparams_rule: PrecisionOverride | None = None  # the last matching rule that fixes qparams (None: calibrated)


def resolve(rules: Iterable[PrecisionOverride], module_path: str, op: str, default: Precision,
            tensor: str = "", roles: tuple[str, ...] = ()) -> Precision:
    activation_bits, weight_bits, per_channel = default.activation_bits, default.weight_bits, default.per_channel
    qparams_rule = default.qparams_rule
    for rule in rules:
        if not rule.matches(module_path, op, tensor, roles):
            continue
        activation_bits = rule.activation_bits if rule.activation_bits is not None else activation_bits
        weight_bits = rule.weight_bits if rule.weight_bits is not None else weight_bits
        per_channel = rule.per_channel if rule.per_channel is not None else per_channel
        qparams_rule = rule if rule.fixes_qparams else qparams_rule  # scale, zero-point and learn_qparams as one
    return Precision(activation_bits, weight_bits, per_channel, qparams_rule)


# Rules every new configuration starts with (QuantConfig's default, and before the CLI's/recipe's own rules, which
# win): averaged squares in the matmul accumulator. A configuration saved before they existed keeps its rules.
DEFAULT_RULES = (PrecisionOverride(op=VARIANCE_ROLE, activation_bits=ACCUMULATOR_BITS),)


def precision_overrides(rules: Iterable[str], recipe_rules: tuple[PrecisionOverride, ...] = (),
                        defaults: bool = True) -> tuple[PrecisionOverride, ...]:
    """The CLI/recipe form ('MODULE[:OP]=SPEC' strings) as rules, after ``DEFAULT_RULES`` (unless ``defaults`` is
    off) and a recipe's own ``recipe_rules``: the user's win."""
    return (DEFAULT_RULES if defaults else ()) + tuple(recipe_rules) + tuple(PrecisionOverride.parse(r) for r in rules)


def overrides_from(data: Iterable[Mapping[str, Any] | PrecisionOverride]) -> tuple[PrecisionOverride, ...]:
    return tuple(d if isinstance(d, PrecisionOverride) else PrecisionOverride.from_dict(d) for d in data)


__all__ = ["ACCUMULATOR_BITS", "ACTIVATION_BITS", "DEFAULT_RULES", "OUTPUT_ROLE", "VARIANCE_ROLE", "Precision", "PrecisionOverride",
           "overrides_from", "precision_overrides", "resolve", "zero_point_range"]
