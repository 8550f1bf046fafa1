"""Turn a ``torch.export`` failure into an UnsupportedOpError a user can act on.

torch's own message names its internals (symbols like ``zuf0``, guard
expressions, links to its docs); the user needs the line of their model that
caused it and what to change there. torch's exception stays the ``__cause__``.
"""
from __future__ import annotations

import os
import re
import sys
import sysconfig
import traceback
from typing import Iterator, Sequence

import torch
from torch import nn

import compressor
from compressor.errors import UnsupportedOpError
from compressor.module_mode import set_training

DATA_DEPENDENT = "data-dependent"
LENGTH_GUARD = "length"
PROGRAM_SHAPE = "program"
OTHER = "other"

_WHAT = {
    DATA_DEPENDENT: "a data-dependent value (computed from tensor values) decides a shape or a branch",
    LENGTH_GUARD: "the model fixes the input length/shape",
}
_HINT = {
    DATA_DEPENDENT: "compute shapes from x.shape, not from tensor values (no int(t), .item(), "
                    "torch.nonzero sizes); replace Python `if tensor:` with torch.where",
    LENGTH_GUARD: "the model only accepts some input lengths; pass an example of the length you "
                  "deploy, or make the code length-agnostic (the toolkit traces every axis as dynamic)",
    PROGRAM_SHAPE: "the .pt2 program was exported with that input axis fixed; export it again with the axis "
                   "dynamic (torch.export.export(model, (x,), dynamic_shapes=({0: Dim.AUTO, 1: Dim.AUTO},))), "
                   "or give the model as a state_dict with --model-factory",
    OTHER: "torch.export runs forward() once on symbolic tensors; keep that line free of .numpy(), "
           ".tolist(), .item() and other Python-side use of tensor values",
}
_DATA_DEPENDENT_TEXT = ("data-dependent", "unbacked", "GuardOnDataDependentSymNode")
_LENGTH_TEXT = (
    "Constraints violated",
    "specialized it to be a constant",
    "is invalid for input of size",
    "must match the size of tensor",
    "Expected cond to be True",  # a failed torch._check(...) on a size
)
# A program loaded from a .pt2 checks its input shapes with guards like this one.
_PROGRAM_GUARD = re.compile(r"Guard failed: (\w+)\.size\(\)\[(\d+)\] == (\d+)")
# torch prints the user's frames in this form ("User Stack", "The following call ...").
_FILE_LINE = re.compile(r'File "([^"]+)", line (\d+), in \S+\n[ \t]*(.*)')


def _library_roots() -> tuple[str, ...]:
    # sympy sits below torch's shape checks, so its frames are innermost too.
    roots = [os.path.dirname(torch.__file__), os.path.dirname(compressor.__file__)]
    sympy = sys.modules.get("sympy")
    if sympy is not None and sympy.__file__:
        roots.append(os.path.dirname(sympy.__file__))
    roots += [sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")]
    return tuple(os.path.realpath(r) + os.sep for r in roots)


def _is_user_file(path: str, roots: tuple[str, ...]) -> bool:
    if path.startswith("<"):  # "<string>", "<eval_with_key>": generated code, no line to show
        return False
    return not os.path.realpath(path).startswith(roots)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]


def _user_frame(exc: BaseException, roots: tuple[str, ...]) -> str | None:
    """'file.py:LINE: code' of the innermost user frame (traceback first, then torch's text)."""
    for e in _chain(exc):
        frames = [f for f in traceback.extract_tb(e.__traceback__) if _is_user_file(f.filename, roots)]
        if frames:
            f = frames[-1]
            return f"{f.filename}:{f.lineno}: {(f.line or '').strip()}"
    for e in _chain(exc):
        found = [m for m in _FILE_LINE.findall(str(e)) if _is_user_file(m[0], roots)]
        if found:
            path, line, code = found[-1]
            return f"{path}:{line}: {code.strip()}"
    return None


def _classify(exc: BaseException, roots: tuple[str, ...]) -> str:
    chain = list(_chain(exc))
    text = "\n".join(f"{type(e).__name__}: {e}" for e in chain)
    if any(t in text for t in _DATA_DEPENDENT_TEXT):
        return DATA_DEPENDENT
    if any(t in text for t in _LENGTH_TEXT):
        return LENGTH_GUARD
    # An assert raised by the model's own code while tracing checks an input size.
    for e in chain:
        tb = traceback.extract_tb(e.__traceback__)
        if isinstance(e, AssertionError) and tb and _is_user_file(tb[-1].filename, roots):
            return LENGTH_GUARD
    return OTHER


def _probe_length(model: nn.Module, example_inputs: Sequence[torch.Tensor],
                  roots: tuple[str, ...]) -> str | None:
    # A constraint violation is found after tracing, so no user frame is left
    # in it; running the model eagerly one sample longer on the last (time)
    # axis usually fails on the very line that fixed the length.
    longer = [torch.cat([t, t[..., -1:]], dim=-1) if isinstance(t, torch.Tensor) and t.dim() else t
              for t in example_inputs]
    try:
        with torch.no_grad():
            model(*longer)
    except Exception as exc:  # whatever the model raises on a length it rejects
        return _user_frame(exc, roots)
    return None


def _eager_failure(model: nn.Module, example_inputs: Sequence[torch.Tensor]) -> BaseException | None:
    try:
        with torch.no_grad():
            model(*example_inputs)
    except Exception as exc:  # whatever the model raises on its own example
        return exc
    return None


def explain_export_failure(model: nn.Module, exc: BaseException,
                           example_inputs: Sequence[torch.Tensor] = ()) -> UnsupportedOpError:
    """The toolkit error for ``exc`` raised by torch.export on ``model``; raise it ``from exc``."""
    roots = _library_roots()
    guard = next((m for e in _chain(exc) for m in [_PROGRAM_GUARD.search(str(e))] if m), None)
    if guard is not None and isinstance(model, torch.fx.GraphModule):
        name, axis, size = guard.groups()
        return UnsupportedOpError(
            f"the torch.export program only accepts {name} with axis {axis} of size {size} (its input guard); "
            f"the toolkit runs it on other shapes — {_HINT[PROGRAM_SHAPE]}"
        )
    kind = _classify(exc, roots)
    detail = ""
    if kind == LENGTH_GUARD and example_inputs:
        eager = _eager_failure(model, example_inputs)
        if eager is not None:  # it fails on the example itself: say how, at the line where it does
            exc, kind = eager, (LENGTH_GUARD if _classify(eager, roots) == LENGTH_GUARD else OTHER)
            detail = (str(eager).strip().splitlines() or [type(eager).__name__])[0][:200]
    where = _user_frame(exc, roots)
    if where is None and kind == LENGTH_GUARD and example_inputs:
        where = _probe_length(model, example_inputs, roots)
    # Unclassified failures keep torch's first line: it is the only clue to what went wrong.
    what = _WHAT.get(kind) or (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if detail and detail not in what:
        what = f"{what} ({detail})"
    at = f" at {where}" if where else " (source line unknown)"
    return UnsupportedOpError(
        f"torch.export could not trace {type(model).__name__}: {what}{at} — {_HINT[kind]} "
        "(torch's message is this error's __cause__)"
    )


def _guard_location(program: torch.export.ExportedProgram, size: int, roots: tuple[str, ...]) -> str | None:
    """'file.py:LINE: code' where torch.export specialised a size to ``size``: the shape guard that fixed the
    symbol, from the program's shape environment (torch internals: None when they are not there)."""
    try:
        env = next(v.fake_mode.shape_env for n in program.graph.nodes if n.op == "placeholder"
                   for v in [n.meta.get("val")] if getattr(getattr(v, "fake_mode", None), "shape_env", None))
        fixed = {s for s, value in env.replacements.items() if getattr(value, "is_Integer", False) and value == size}
        for guard in env.guards:
            if not (guard.expr.free_symbols & fixed):
                continue
            for frame in (guard.sloc.maybe_user_loc, guard.sloc.framework_loc):
                if isinstance(frame, traceback.FrameSummary) and _is_user_file(frame.filename, roots):
                    return f"{frame.filename}:{frame.lineno}: {(frame.line or '').strip()}"
    except Exception:  # noqa: BLE001 - private torch structures; the error is still raised without a line
        return None
    return None


class LengthFixedError(UnsupportedOpError):
    """torch.export fixed an input axis at a line of the user's code (``axis``: which one)."""

    def __init__(self, message: str, axis: int) -> None:
        super().__init__(message)
        self.axis = axis


def check_dynamic_axes(model: nn.Module, program: torch.export.ExportedProgram,
                       example_inputs: Sequence[torch.Tensor]) -> None:
    """Raise LengthFixedError when torch.export fixed the last (time) axis of an input, which the toolkit asked
    to be dynamic (its example size > 1), although the model runs eagerly at another size: e.g. ``int(x.shape[-1]) % m`` and a
    Python ``if`` on it make the program accept the calibration crop's length only, and export, which runs the
    program at its chunk length, would fail on torch's raw guard. An axis the model itself fixes (eagerly it
    fails at other sizes too, e.g. the features a Linear takes) is fine, and so is a program with an op quantize()
    refuses anyway (a float nn.GRU kernel fixes the frames too): that refusal names the cause. Only a guard
    that torch places on a line of the user's code is refused; one from torch's or the toolkit's ops is not."""
    from compressor.ops.registry import record_for

    if any(r is not None and not r.quantizable for n in program.graph.nodes if n.op == "call_function"
           for r in [record_for(n.target)]):
        return
    names = list(program.graph_signature.user_inputs)
    vals = {n.name: n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder"}
    for name, example in zip(names, example_inputs):
        val = vals.get(name)
        if not isinstance(example, torch.Tensor) or not isinstance(val, torch.Tensor):
            continue
        for axis in range(max(1, example.dim() - 1), example.dim()):  # the time axis: channels or a frame
            # size the model reshapes to may be fixed by design, and an eager run at another size can pass by luck
            size = example.shape[axis]
            traced = val.shape[axis]  # an int, or a SymInt torch.export replaced by a constant
            if size < 2 or not (isinstance(traced, int) or traced.node.maybe_as_int() is not None):
                continue
            where = _guard_location(program, size, _library_roots())
            if where is None:  # fixed inside torch's or the toolkit's own ops (a pooling's guard): exported at
                continue       # the program's length, as before this check; only a line of the user's code is refused
            other = _other_size_runs(model, example_inputs, example, axis)  # an eager run: only when it may matter
            if other is None:
                continue
            at = f" at {where}"
            raise LengthFixedError(
                f"torch.export fixed axis {axis} of {type(model).__name__}'s input {name!r} to {size}: the traced "
                f"program only accepts {size} samples there (the model itself runs at {other}){at} — the code "
                "turns a size into a Python int (int(x.shape[-1]), a Python `if` on it); compute it from x.shape "
                "branch-free (e.g. F.pad(x, [0, (-x.shape[-1]) % m])) so that every length traces", axis
            )


def _other_size_runs(model: nn.Module, example_inputs: Sequence[torch.Tensor], example: torch.Tensor,
                     axis: int) -> int | None:
    """A size other than the example's at which ``model`` runs eagerly along ``axis`` of ``example``, or None."""
    size = example.shape[axis]
    was_training = model.training
    set_training(model, False)
    try:
        for other in dict.fromkeys(s for s in (size // 2, size + 1) if s >= 2 and s != size):
            changed = [t.narrow(axis, 0, other) if t is example and other < size else
                       torch.cat([t, t.narrow(axis, 0, other - size)], dim=axis) if t is example else t
                       for t in example_inputs]
            try:
                with torch.no_grad():
                    model(*changed)
            except Exception:  # noqa: BLE001 - the model rejects that size: the axis is fixed by the model itself
                continue
            return other
        return None
    finally:
        set_training(model, was_training)
