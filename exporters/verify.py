"""An exported file checks itself against the simulated model it came from.

Two checks, on calibration audio:

* Op by op, on the file's own inputs ("teacher forcing"): every int8 tensor
  the file computes is compared with what the lowered graph (which equals
  the simulation) computes *from the file's own input tensors of that op*.
  This says whether the file computes each op as trained; the tolerance is
  in LSBs of that op's output scale (default 1: rounding). A wrong scale, a
  wrong lowering or a float fallback shows here as one op many LSBs off.
* End to end, on the runtime that deploys it (XNNPACK / ORT's fused
  kernels): output codes vs the simulation's, as max/mean LSB and as the
  SNR of the file's output against the simulated output (after the
  combiner, for FQSE). Rounding differences of 1 LSB between the runtime's
  fixed-point requantization and the float simulation do accumulate through
  a deep network (Conv-TasNet: up to ~10 output LSB at ~0.3 LSB mean), so
  this check has an SNR floor, not an LSB bound.

Past either limit a per-layer report says where the drift starts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import fx

from compressor.ops.registry import record_for
from compressor.quant.graph import module_path, op_kind
from compressor.quant.model import QuantizedModel
from exporters.io_processing import decode
from exporters.lowering import LoweredModel

qd = torch.ops.quantized_decomposed


@dataclass
class Verification:
    """Outcome of running the file against the simulation.

    op_max_lsb: worst op given the file's own inputs (LSBs of its output scale);
    max_lsb / mean_lsb: end-to-end output difference on the deploying runtime;
    snr_db: the file's output against the simulated output, end to end.
    """

    op_max_lsb: int
    max_lsb: int
    mean_lsb: float
    snr_db: float
    tolerance_lsb: float
    min_snr_db: float
    inputs: int
    runtime: str
    worst_op: dict[str, Any] = field(default_factory=dict)
    drift: list[dict[str, Any]] = field(default_factory=list)  # filled when it failed

    @property
    def ops_match(self) -> bool:
        return self.op_max_lsb <= self.tolerance_lsb

    @property
    def passed(self) -> bool:
        return self.ops_match and self.snr_db >= self.min_snr_db

    def to_dict(self) -> dict[str, Any]:
        return {"op_max_lsb": self.op_max_lsb, "worst_op": self.worst_op, "max_lsb": self.max_lsb,
                "mean_lsb": round(self.mean_lsb, 4), "snr_db": round(self.snr_db, 2),
                "tolerance_lsb": self.tolerance_lsb, "min_snr_db": self.min_snr_db, "inputs": self.inputs,
                "runtime": self.runtime, "passed": self.passed, "drift": self.drift}


def simulated_codes(qmodel: QuantizedModel, runtime: Any, audio: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(input codes fed to the file, every output's codes the simulation gives for them)."""
    spec_in = runtime.metadata.inputs[0]
    codes = spec_in.quantize(audio.reshape(spec_in.shape))
    with torch.no_grad():
        y = qmodel(torch.from_numpy(spec_in.dequantize(codes)))
    outputs = y if isinstance(y, (tuple, list)) else [y]
    return codes, [spec.quantize(o.numpy()) for spec, o in zip(runtime.metadata.outputs, outputs)]


@dataclass
class EndToEnd:
    max_lsb: int
    mean_lsb: float
    snr_db: float


def end_to_end(qmodel: QuantizedModel, runtime: Any, chunks: Sequence[np.ndarray]) -> EndToEnd:
    """Output difference (LSBs of each output's scale) and output SNR over ``chunks``."""
    worst, total, count, signal, noise = 0, 0.0, 0, 0.0, 0.0
    for audio in chunks:
        codes, expected = simulated_codes(qmodel, runtime, audio)
        got = runtime.run_codes(codes)
        for have, want in zip(got, expected):
            diff = np.abs(have.astype(np.int32).reshape(-1) - want.astype(np.int32).reshape(-1))
            worst = max(worst, int(diff.max()))
            total += float(diff.sum())
            count += diff.size
        want_signal, have_signal = decode(runtime.metadata, expected), decode(runtime.metadata, got)
        signal += float(np.sum(want_signal.astype(np.float64) ** 2))
        noise += float(np.sum((have_signal.astype(np.float64) - want_signal) ** 2))
    snr = float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)
    return EndToEnd(worst, total / max(count, 1), float(snr))


def _activation_quantize(n: fx.Node) -> bool:
    # constants (weights) are folded into the file: no tensor of their own to compare
    return n.op == "call_function" and n.target == qd.quantize_per_tensor.default and n.args[0].op != "get_attr"


def as_int8(codes: np.ndarray, zero_shift: int) -> np.ndarray:
    """A file's input codes (uint8 for ORT: zero-point + 128) as the int8 codes the lowered graph takes."""
    return (codes.astype(np.int16) - zero_shift).astype(np.int8)


def _graph_input(lowered: LoweredModel, codes: np.ndarray, float_input: bool) -> torch.Tensor:
    x = torch.from_numpy(codes)
    if float_input:
        p = lowered.inputs[0]
        x = (x.float() - p.zero_point) * p.scale
    return x


def lowered_tensors(lowered: LoweredModel, codes: np.ndarray, float_input: bool) -> dict[str, np.ndarray]:
    """Every int8 activation (quantize op output) of the lowered graph, by node name, for one input."""
    values: dict[str, np.ndarray] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            if _activation_quantize(n):
                values[n.name] = result.detach().numpy().copy()
            return result

    with torch.no_grad():
        Recorder(lowered.module).run(_graph_input(lowered, codes, float_input))
    return values


def _layouts(have: np.ndarray, shape: tuple[int, ...]) -> list[np.ndarray]:
    """``have`` as ``shape``: as stored, channels-last (TFLite keeps convolutions NHWC / NWC) moved back to
    channels-first, and with the last two axes swapped."""
    shape = tuple(shape)
    views = [have.reshape(shape)]
    if len(shape) >= 3:
        views.append(np.moveaxis(have.reshape((shape[0],) + shape[2:] + (shape[1],)), -1, 1))
    if len(shape) >= 2 and shape[-1] != shape[-2]:
        views.append(np.swapaxes(have.reshape(shape[:-2] + (shape[-1], shape[-2])), -1, -2))
    return views


def closest(candidates: Sequence[np.ndarray], want: np.ndarray, zero_shift: int = 0) -> np.ndarray | None:
    """The candidate tensor (in the layout of ``want``, int32, zero-point shifted) nearest ``want`` element-wise."""
    best, best_err = None, None
    for have in candidates:
        if have.size != want.size:
            continue
        shift = zero_shift if have.dtype == np.uint8 else 0  # int16 tensors stay signed in a uint8 ONNX file
        for view in _layouts(have.astype(np.int32) - shift, want.shape):
            err = int(np.abs(view - want.astype(np.int32)).max())
            if best_err is None or err < best_err:
                best, best_err = view, err
    return best


def _quantized_inputs(n: fx.Node) -> list[fx.Node]:
    """The activation quantize nodes the op computing ``n`` (a quantize node) reads, through dequantize and
    data movement (``stack`` of an unrolled recurrence's frames: each frame's quantize node)."""
    found: list[fx.Node] = []
    seen: set[fx.Node] = set()

    def walk(value: Any, depth: int) -> None:
        if isinstance(value, (list, tuple)):
            for v in value:
                walk(v, depth)
            return
        if not isinstance(value, fx.Node) or value in seen or depth > 64:
            return
        seen.add(value)
        if _activation_quantize(value):
            found.append(value)
            return
        if value.op != "call_function":
            return
        moved = value.target in (qd.dequantize_per_tensor.default, qd.quantize_per_tensor.default)
        record = record_for(value.target)
        if moved or (record is not None and record.kind == "move"):
            walk(list(value.args), depth + 1)

    source = n.args[0]
    if isinstance(source, fx.Node) and source.op == "call_function":
        walk(list(source.args), 0)
    return found


#: How far (LSB) a candidate computed from the op's own input tensors may be and still be preferred to a nearer one.
PICK_TOLERANCE_LSB = 1


def _pick(candidates: Sequence[np.ndarray], want: np.ndarray, zero_shift: int,
          read: frozenset) -> tuple[np.ndarray | None, int]:
    """``closest`` and the file's index of the tensor it took (-1: unknown). In an unrolled recurrence every
    frame's tensor has the same qparams and size, and another frame's state or saturated gate may be as near
    by value as the right one; taking it would feed the next ops another frame's values. So among the
    candidates computed from the file tensors ``read`` (those picked for the op's inputs), the nearest is
    taken when it is within ``PICK_TOLERANCE_LSB``; otherwise (the file computes the op from other tensors,
    e.g. a mask folded into a constant) the nearest of all."""
    scored = []
    for have in candidates:
        view = closest([have], want, zero_shift)
        if view is not None:
            overlap = len(read & getattr(have, "sources", frozenset())) if read else 0
            scored.append((int(np.abs(view - want.astype(np.int32)).max()), -overlap, view, have))
    if not scored:
        return None, -1
    most = min(s[1] for s in scored)
    preferred = [s for s in scored if s[1] == most and s[0] <= PICK_TOLERANCE_LSB] if most < 0 else []
    _, _, view, have = min(preferred or scored, key=lambda s: (s[0], s[1]))
    return view, int(getattr(have, "index", -1))


def op_parity(lowered: LoweredModel, file_tensors: Callable[[np.ndarray], dict[str, list[np.ndarray]]],
              input_codes: Sequence[np.ndarray], float_input: bool, zero_shift: int = 0,
              picked: dict[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Each int8 op of the file against the lowered graph fed with the file's own tensors.

    ``file_tensors(codes)``: the file's candidate tensors per quantize-node name
    for one input. Every op of the lowered graph runs on the file's values of
    its inputs; its output is compared with the file's and then replaced by
    it, so each row measures one op, not the drift accumulated before it.
    Returns name -> {max_lsb, mean_lsb} in graph order (names the file
    lacks are left out). Where candidates say which file tensor they are
    (``tflite_export.FileTensor``), one computed from the tensors picked for
    the op's inputs is preferred, and ``picked`` (if given) receives
    name -> file tensor index for the last input.
    """
    rows: dict[str, dict[str, Any]] = {}

    class Forced(fx.Interpreter):
        def __init__(self, module: fx.GraphModule, found: dict[str, list[np.ndarray]]) -> None:
            super().__init__(module)
            self.found = found
            self.picked: dict[fx.Node, int] = {}  # quantize node -> index of the file tensor forced for it

        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            if not _activation_quantize(n) or n.name not in self.found:
                return result
            want = result.detach().numpy()
            read = frozenset(self.picked[q] for q in _quantized_inputs(n) if q in self.picked)
            have, index = _pick(self.found[n.name], want, zero_shift, read)
            if have is None:
                return result
            if index >= 0:
                self.picked[n] = index
            diff = np.abs(have - want.astype(np.int32))
            row = rows.setdefault(n.name, {"max_lsb": 0, "mean_lsb": 0.0, "inputs": 0})
            row["max_lsb"] = max(row["max_lsb"], int(diff.max()))
            row["mean_lsb"] += float(diff.mean())
            row["inputs"] += 1
            # contiguous: a swapped-axes layout view would make a later aten.view of the graph fail
            return torch.from_numpy(np.ascontiguousarray(have, dtype=want.dtype))

    for codes in input_codes:
        with torch.no_grad():
            forced = Forced(lowered.module, file_tensors(codes))
            forced.run(_graph_input(lowered, as_int8(codes, zero_shift), float_input))
        if picked is not None:
            picked.update({n.name: index for n, index in forced.picked.items()})
    for row in rows.values():
        row["mean_lsb"] = round(row.pop("mean_lsb") / max(row.pop("inputs"), 1), 4)
    return rows


def qparams_of(lowered: LoweredModel, names: list[str], values: dict[str, np.ndarray]) -> dict[str, tuple[float, int, int]]:
    """name -> (scale, zero_point, size) of the lowered graph's quantize nodes."""
    nodes = {n.name: n for n in lowered.module.graph.nodes}
    return {name: (float(nodes[name].args[1]), int(nodes[name].args[2]), int(values[name].size)) for name in names}


def describe_tensors(lowered: LoweredModel) -> dict[str, dict[str, str]]:
    """For each quantize node of the lowered graph: the op that computes it and its layer (module path)."""
    out = {}
    for node in lowered.module.graph.nodes:
        if node.op == "call_function" and node.target == qd.quantize_per_tensor.default:
            source = node.args[0]
            while isinstance(source, fx.Node) and source.op == "call_function" and "quantized_decomposed" in str(source.target):
                source = source.args[0]
            if not isinstance(source, fx.Node):
                continue
            layer = module_path(source) if source.op == "call_function" else ""
            op = op_kind(source) if source.op == "call_function" else source.op
            out[node.name] = {"op": op, "layer": layer or "(top level)"}
    return out


def drift_report(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], limit: int = 12,
                 names: dict[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """The first tensors (graph order) whose codes differ, with their largest difference in LSBs."""
    rows = []
    for name, want in expected.items():
        have = got.get(name)
        if have is None or have.size != want.size:
            continue
        view = closest([have], want)
        diff = np.abs(view - want.astype(np.int32))
        if diff.max() > 0:
            rows.append({"tensor": name, **(names or {}).get(name, {}), "max_lsb": int(diff.max()),
                         "mean_lsb": round(float(diff.mean()), 4)})
        if len(rows) >= limit:
            break
    return rows
