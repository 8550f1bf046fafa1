"""Models that run only at lengths that are a multiple of some number of samples.

Code such as asteroid's SuDORMRF ``values_to_pad = int(x.shape[-1]) % lcm`` and a Python ``if`` on it turns the
input length into a Python int. torch.export's default (non-strict) tracing then fixes the length to the
example's; its strict tracing (TorchDynamo) keeps the length symbolic and asks for it to be a multiple of ``m``
instead, which it can state as a derived dimension (``t = m * k``). Such a program runs at every multiple of
``m``; the toolkit pads other lengths with zeros to the next multiple and crops the outputs back, which is what
those models do themselves (the padding branch is the one the trace leaves out), and which is checked against
the model before the program is used: a model whose output differs that way is refused as before.

The multiple lives in the program itself (the input's symbolic size, ``20*s7``), so a checkpoint that stores
the program carries it with no extra field.
"""
from __future__ import annotations

import contextlib
import logging
import re
from typing import Any, Iterator, Sequence

import sympy
import torch
from torch import nn

from compressor.module_mode import set_training

log = logging.getLogger("compressor.quant")

# TorchDynamo's constraint-violation message suggests the fix as "  t = 20*_t".
_SUGGESTED_MULTIPLE = re.compile(r"^\s*(\w+) = (\d+)\*(\w+)\s*$", re.MULTILINE)
_MAX_SAMPLES = 10 ** 8  # an upper bound for the length: about 100 minutes at 16 kHz
RELATIVE_TOLERANCE = 1e-4  # the padded program against the model at a length that is not a multiple


def _dynamic_shapes(example_inputs: Sequence[torch.Tensor], axis: int, length: Any) -> tuple:
    return tuple({**{i: torch.export.Dim.AUTO for i in range(t.dim()) if i != axis}, axis: length}
                 if j == 0 else {i: torch.export.Dim.AUTO for i in range(t.dim())}
                 for j, t in enumerate(example_inputs))


@contextlib.contextmanager
def _quiet_dynamo() -> Iterator[None]:
    # A probe that is expected to fail: TorchDynamo logs the failed guards at ERROR level on its way out.
    loggers = [logging.getLogger(name) for name in ("torch._guards", "torch._dynamo", "torch.fx.experimental")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def suggested_multiple(model: nn.Module, example_inputs: Sequence[torch.Tensor], axis: int) -> int | None:
    """The ``m`` strict tracing asks the first input's ``axis`` to be a multiple of, or None (it traces at
    every length, or fails for another reason)."""
    length = torch.export.Dim("t", min=2, max=_MAX_SAMPLES)
    try:
        with _quiet_dynamo():
            torch.export.export(model, tuple(example_inputs),
                                dynamic_shapes=_dynamic_shapes(example_inputs, axis, length), strict=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types; only its suggestion matters here
        for name, multiple, _ in _SUGGESTED_MULTIPLE.findall(str(exc)):
            if name == "t" and int(multiple) > 1:
                return int(multiple)
    return None


def export_at_multiples(model: nn.Module, example_inputs: Sequence[torch.Tensor], axis: int,
                        multiple: int) -> torch.export.ExportedProgram:
    """Strict torch.export with the first input's ``axis`` = ``multiple`` x a dynamic size."""
    steps = torch.export.Dim("k", min=1, max=_MAX_SAMPLES // multiple)
    return torch.export.export(model, tuple(example_inputs),
                               dynamic_shapes=_dynamic_shapes(example_inputs, axis, multiple * steps), strict=True)


def length_multiple(gm: torch.fx.GraphModule) -> int:
    """The multiple the first input's last axis must be of, read from the traced program (1: any length)."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    val = placeholders[0].meta.get("val") if placeholders else None
    if not isinstance(val, torch.Tensor) or val.dim() == 0:
        return 1
    size = val.shape[-1]
    if not isinstance(size, torch.SymInt):
        return 1
    expr = size.node.expr
    if isinstance(expr, sympy.Mul):
        coefficient, _ = expr.as_coeff_Mul()
        if coefficient.is_Integer and int(coefficient) > 1:
            return int(coefficient)
    return 1


def padded(tensor: torch.Tensor, multiple: int) -> torch.Tensor:
    """``tensor`` with zeros appended on its last axis up to the next multiple."""
    return torch.nn.functional.pad(tensor, (0, -tensor.shape[-1] % multiple))


def cropped(out: Any, length: int, padded_length: int) -> Any:
    """Every output tensor whose last axis has the padded length, cut back to ``length``."""
    if isinstance(out, torch.Tensor):
        return out[..., :length] if out.dim() and out.shape[-1] == padded_length else out
    if isinstance(out, (tuple, list)):
        return type(out)(cropped(o, length, padded_length) for o in out)
    return out


def run_padded(gm: torch.fx.GraphModule, multiple: int, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    """``gm`` on ``args`` whose first tensor is padded to ``multiple`` samples, outputs cropped back."""
    first = args[0]
    if multiple == 1 or not isinstance(first, torch.Tensor) or first.shape[-1] % multiple == 0:
        return gm(*args, **kwargs)
    length = first.shape[-1]
    x = padded(first, multiple)
    return cropped(gm(x, *args[1:], **kwargs), length, x.shape[-1])


def check_padding_matches(model: nn.Module, program: torch.export.ExportedProgram,
                          example_inputs: Sequence[torch.Tensor], multiple: int) -> str | None:
    """None when the program, padded and cropped, computes what ``model`` computes at a length that is not a
    multiple; otherwise what differs."""
    example = example_inputs[0]  # its length is a multiple: cut it to one that is not (0 < cut < multiple)
    length = example.shape[-1] - max(1, multiple // 2)
    if length < 2:
        return f"the example ({example.shape[-1]} samples) is too short to check it"
    short = [example[..., :length], *example_inputs[1:]]
    was_training = model.training
    set_training(model, False)
    try:
        with torch.no_grad():
            want = model(*short)
            got = run_padded(program.module(), multiple, short, {})
    finally:
        set_training(model, was_training)
    wants = want if isinstance(want, (tuple, list)) else [want]
    gots = got if isinstance(got, (tuple, list)) else [got]
    for w, g in zip(wants, gots):
        if not isinstance(w, torch.Tensor):
            continue
        if w.shape != g.shape:
            return f"at {length} samples the model returns {list(w.shape)}, the padded program {list(g.shape)}"
        error = float((w - g).norm() / w.norm().clamp_min(1e-12))
        if error > RELATIVE_TOLERANCE:
            return f"at {length} samples zero-padding changes the output (relative difference {error:.1e})"
    return None


def trace_at_multiples(model: nn.Module, example_inputs: Sequence[torch.Tensor],
                       axis: int) -> torch.export.ExportedProgram | None:
    """A program of ``model`` that runs at every multiple of the length its code asks for, or None when there is
    no such multiple, or padding to it changes what the model computes (then the caller's refusal stands)."""
    if axis != example_inputs[0].dim() - 1:
        return None
    was_training = model.training
    set_training(model, False)
    try:
        multiple = suggested_multiple(model, example_inputs, axis)
        if multiple is None:
            return None
        example_inputs = [padded(example_inputs[0], multiple), *example_inputs[1:]]
        program = export_at_multiples(model, example_inputs, axis, multiple)
    except Exception as exc:  # noqa: BLE001 - the caller's refusal names the line; this is only a second try
        log.debug("strict torch.export at multiples of the length failed: %s", exc)
        return None
    finally:
        set_training(model, was_training)
    mismatch = check_padding_matches(model, program, example_inputs, multiple)
    if mismatch is not None:
        log.warning("%s runs only at multiples of %d samples, and %s: not padded", type(model).__name__,
                    multiple, mismatch)
        return None
    log.warning("%s runs only at input lengths that are a multiple of %d samples (its code turns the length into "
                "a Python int); the toolkit pads other lengths with zeros up to the next multiple and crops the "
                "outputs, as the model does itself (checked at a length that is not a multiple); exported files "
                "need a chunk of a multiple of %d samples", type(model).__name__, multiple, multiple)
    return program
