"""An exported file checks itself against the simulated model it came from.

The file runs on calibration audio; its output codes are compared with the
codes the PyTorch simulation produces for the same input codes. The
difference is counted in LSBs of the output scale. Past the tolerance, a
per-layer report says where the drift starts: every int8 tensor the file
computes is compared with the same tensor of the lowered graph run in
PyTorch (which equals the simulation), in graph order.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import fx

from compressor.quant.model import QuantizedModel
from exporters.lowering import LoweredModel

qd = torch.ops.quantized_decomposed


@dataclass
class Verification:
    """Outcome of running the file against the simulation."""

    max_lsb: int
    mean_lsb: float
    tolerance_lsb: float
    inputs: int
    runtime: str
    drift: list[dict[str, Any]] = field(default_factory=list)  # filled when it failed

    @property
    def passed(self) -> bool:
        return self.max_lsb <= self.tolerance_lsb

    def to_dict(self) -> dict[str, Any]:
        return {"max_lsb": self.max_lsb, "mean_lsb": round(self.mean_lsb, 4), "tolerance_lsb": self.tolerance_lsb,
                "inputs": self.inputs, "runtime": self.runtime, "passed": self.passed, "drift": self.drift}


def simulated_codes(qmodel: QuantizedModel, runtime: Any, audio: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """(input codes fed to the file, every output's codes the simulation gives for them)."""
    spec_in = runtime.metadata.inputs[0]
    codes = spec_in.quantize(audio.reshape(spec_in.shape))
    with torch.no_grad():
        y = qmodel(torch.from_numpy(spec_in.dequantize(codes)))
    outputs = y if isinstance(y, (tuple, list)) else [y]
    return codes, [spec.quantize(o.numpy()) for spec, o in zip(runtime.metadata.outputs, outputs)]


def compare(qmodel: QuantizedModel, runtime: Any, chunks: Sequence[np.ndarray], tolerance_lsb: float) -> Verification:
    """Largest and mean output difference (LSBs of each output's scale) over ``chunks``."""
    worst, total, count = 0, 0.0, 0
    for audio in chunks:
        codes, expected = simulated_codes(qmodel, runtime, audio)
        for got, want in zip(runtime.run_codes(codes), expected):
            diff = np.abs(got.astype(np.int32).reshape(-1) - want.astype(np.int32).reshape(-1))
            worst = max(worst, int(diff.max()))
            total += float(diff.sum())
            count += diff.size
    return Verification(worst, total / max(count, 1), tolerance_lsb, len(chunks), runtime.name)


def lowered_tensors(lowered: LoweredModel, codes: np.ndarray, float_input: bool) -> dict[str, np.ndarray]:
    """Every int8 activation (quantize op output) of the lowered graph, by node name, for one input."""
    values: dict[str, np.ndarray] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            result = super().run_node(n)
            if n.op == "call_function" and n.target == qd.quantize_per_tensor.default \
                    and n.args[0].op != "get_attr":  # constants are folded into the file
                values[n.name] = result.detach().numpy().copy()
            return result

    x = torch.from_numpy(codes)
    if float_input:
        p = lowered.inputs[0]
        x = (x.float() - p.zero_point) * p.scale
    with torch.no_grad():
        Recorder(lowered.module).run(x)
    return values


def qparams_of(lowered: LoweredModel, names: list[str], values: dict[str, np.ndarray]) -> dict[str, tuple[float, int, int]]:
    """name -> (scale, zero_point, size) of the lowered graph's quantize nodes."""
    nodes = {n.name: n for n in lowered.module.graph.nodes}
    return {name: (float(nodes[name].args[1]), int(nodes[name].args[2]), int(values[name].size)) for name in names}


def _layout_diff(have: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|have - want| in LSBs, trying the channels-last layout TFLite uses for convolutions."""
    have = have.astype(np.int32).reshape(-1)
    candidates = [want.astype(np.int32)]
    if want.ndim >= 2:
        candidates.append(np.swapaxes(want, -1, -2).astype(np.int32))
    diffs = [np.abs(have - c.reshape(-1)) for c in candidates]
    return min(diffs, key=lambda d: int(d.max()))


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
            stack = source.meta.get("nn_module_stack") or {}
            layer = next(reversed(stack.values()))[0] if stack else ""
            op = str(source.target).split(".")[-2] if source.op == "call_function" else source.op
            out[node.name] = {"op": op, "layer": layer or "(top level)"}
    return out


def drift_report(expected: dict[str, np.ndarray], got: dict[str, np.ndarray], zero_shift: dict[str, int],
                 limit: int = 12, names: dict[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """The first tensors (graph order) whose codes differ, with their largest difference in LSBs."""
    rows = []
    for name, want in expected.items():
        have = got.get(name)
        if have is None or have.size != want.size:
            continue
        diff = _layout_diff(have.astype(np.int32) - zero_shift.get(name, 0), want)
        if diff.max() > 0:
            rows.append({"tensor": name, **(names or {}).get(name, {}), "max_lsb": int(diff.max()),
                         "mean_lsb": round(float(diff.mean()), 4)})
        if len(rows) >= limit:
            break
    return rows
