"""Which int8 activations clip, and how much each costs, on real data.

Every activation of an int8 model has a fixed range, set by calibration.
Audio louder than the calibration data pushes values past it, and the
runtimes saturate them without a word. ``runtimes.Runtime.clipping()``
counts that at the model's input and output only; this module looks inside:
for every activation quantizer of a ``QuantizedModel`` it measures, on the
given data and through the simulation itself (forward hooks on the
quantizer modules, the float values taken before fake quantization),

- the fraction of values that clip: ``round(x / s) + zp`` outside ``[qmin, qmax]``;
- the SQNR, ``10 log10(sum x^2 / sum (x - fq(x))^2)`` in dB (rounding and clipping together);
- the range the data reached against the range the tensor can hold.

Weights are not data-dependent and are left out.

    >>> report = clipping_report(inference_model(loaded), dataset, max_items=10)
    >>> print(report.summary()); print(report.markdown(report.worst(15)))

``ClippingMonitor`` attaches the same hooks around any run of the model (e.g.
``compress eval``'s own evaluation), so the data goes through exactly what
evaluation runs and is not run twice.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import fx, nn
from tqdm import tqdm

from compressor.errors import CompressorError, ConfigError
from compressor.module_mode import set_training
from compressor.quant.graph import QUANTIZER_ROOT, module_path, op_kind, source_location
from compressor.quant.model import QuantizedModel
from compressor.quant.quantizers import FixedQParamsQuantizer

CLIP_WARN_FRACTION = 0.001  # 0.1 %: above this a tensor's clipping is worth a warning


@dataclass
class QuantizerClipping:
    """One activation quantizer on the measured data (a row of the report)."""

    name: str  # the quantizer module under ``quantizers.`` (act_...)
    role: str  # "input", "output", "input+output" or "internal"
    op: str  # the op that computes the tensor (aten name; "input" for a model input)
    layer: str  # module path of that op ("(top level)" outside any submodule)
    source: str  # 'file.py:LINE: code' of the line that computes it
    fixed: bool  # fixed qparams (sigmoid / tanh / softmax output)
    scale: float
    zero_point: int
    qmin: int
    qmax: int
    clipped: int = 0  # values that clip
    count: int = 0  # values seen
    signal_energy: float = 0.0  # sum x^2
    error_energy: float = 0.0  # sum (x - fq(x))^2
    seen_min: float = math.inf
    seen_max: float = -math.inf

    @property
    def range_min(self) -> float:
        """The smallest value the int8 tensor holds."""
        return (self.qmin - self.zero_point) * self.scale

    @property
    def range_max(self) -> float:
        return (self.qmax - self.zero_point) * self.scale

    @property
    def clipped_fraction(self) -> float:
        return self.clipped / self.count if self.count else 0.0

    @property
    def sqnr_db(self) -> float:
        """Signal to quantization noise in dB (inf: exact; -inf: the signal is all zeros)."""
        if self.error_energy == 0.0:
            return math.inf if self.signal_energy > 0 else math.nan
        if self.signal_energy == 0.0:
            return -math.inf
        return 10.0 * math.log10(self.signal_energy / self.error_energy)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(clipped_fraction=self.clipped_fraction, sqnr_db=_json_float(self.sqnr_db),
                   range_min=self.range_min, range_max=self.range_max,
                   seen_min=_json_float(self.seen_min), seen_max=_json_float(self.seen_max))
        return out


@dataclass
class ClippingReport:
    """Rows in graph order; ``skipped``: activation quantizers switched off (e.g. FQSE's 16-bit I/O)."""

    rows: list[QuantizerClipping]
    batches: int = 0
    skipped: list[str] = field(default_factory=list)

    @property
    def inputs(self) -> list[QuantizerClipping]:
        return [r for r in self.rows if r.role.startswith("input")]

    @property
    def outputs(self) -> list[QuantizerClipping]:
        return [r for r in self.rows if r.role.endswith("output")]

    def clipping(self, threshold: float = CLIP_WARN_FRACTION) -> list[QuantizerClipping]:
        """Rows that clip more than ``threshold`` of their values, worst first."""
        return sorted((r for r in self.rows if r.clipped_fraction > threshold), key=lambda r: -r.clipped_fraction)

    def worst(self, n: int = 15) -> list[QuantizerClipping]:
        """The ``n`` rows with the largest clipped fraction plus the input and output rows, in graph order."""
        ranked = sorted(self.rows, key=lambda r: -r.clipped_fraction)[:n]
        keep = {id(r) for r in ranked + self.inputs + self.outputs}
        return [r for r in self.rows if id(r) in keep]

    def summary(self, threshold: float = CLIP_WARN_FRACTION) -> str:
        bad = self.clipping(threshold)
        line = (f"{len(bad)} of {len(self.rows)} activation quantizers clip more than {threshold:.1%} of their "
                f"values ({self.batches} batch(es))")
        if bad:
            line += f"; worst: {bad[0].name} ({bad[0].layer}, {bad[0].op}) {bad[0].clipped_fraction:.2%}"
        io = [f"{r.role} {r.clipped_fraction:.3%}" for r in self.inputs + self.outputs if r.role != "input+output"]
        return line + (f"; {', '.join(io)}" if io else "")

    def markdown(self, rows: list[QuantizerClipping] | None = None) -> str:
        """A Markdown table of ``rows`` (default: all), with their position in graph order."""
        position = {id(r): i for i, r in enumerate(self.rows)}
        head = ["#", "quantizer", "role", "layer", "op", "scale", "zp", "range", "seen", "clipped %", "SQNR dB",
                "values"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows if rows is None else rows:
            lines.append("| " + " | ".join([
                str(position.get(id(r), "")), r.name + (" (fixed)" if r.fixed else ""), r.role, r.layer, r.op,
                f"{r.scale:.3g}", str(r.zero_point), f"[{r.range_min:.3g}, {r.range_max:.3g}]",
                f"[{r.seen_min:.3g}, {r.seen_max:.3g}]", f"{100 * r.clipped_fraction:.3f}", f"{r.sqnr_db:.1f}",
                str(r.count)]) + " |")
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "summary": self.summary(), "skipped": list(self.skipped),
                "quantizers": [r.to_dict() for r in self.rows]}


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # JSON has no inf / nan


def find_quantized(model: nn.Module) -> QuantizedModel:
    """The QuantizedModel inside an evaluation wrapper (FQSEPipeline.core, a level wrapper's inner, ...)."""
    found = next((m for m in model.modules() if isinstance(m, QuantizedModel)), None)
    if found is None:
        raise ConfigError(f"{type(model).__name__} is a float model: it has no int8 ranges, so nothing clips "
                          "(quantize it first, e.g. `compress ptq`)")
    return found


def model_io_roles(qmodel: QuantizedModel) -> dict[str, str]:
    """quantizer name -> "input", "output" or "input+output" for the model's own boundary quantizers."""
    from compressor.fqse.io_config import input_quantizers, io_quantizers  # the one place that finds them

    try:
        outputs = io_quantizers(qmodel)[1]
    except CompressorError:  # an output without a quantizer: the inputs are still known
        outputs = []
    roles: dict[str, str] = {name: "input" for name in input_quantizers(qmodel)}
    for name in outputs:
        roles[name] = "input+output" if roles.get(name) == "input" else "output"
    return roles


def _describe(node: fx.Node) -> tuple[str, str, str]:
    """(op, layer, source line) of the value a quantizer call takes."""
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node):
        return "?", "(top level)", "unknown source line"
    if source.op == "placeholder":
        return "input", "(model input)", f"input {source.name}"
    op = op_kind(source) if source.op == "call_function" else source.op
    return op, module_path(source) or "(top level)", source_location(source)


def _blank_rows(qmodel: QuantizedModel) -> tuple[dict[str, QuantizerClipping], list[str]]:
    """A zeroed row per activation quantizer in 'quantize' mode, in graph order; and the names skipped."""
    acts = qmodel.activation_quantizers()
    roles = model_io_roles(qmodel)
    prefix = f"{QUANTIZER_ROOT}."
    rows: dict[str, QuantizerClipping] = {}
    skipped: list[str] = []
    for node in qmodel.graph_module.graph.nodes:
        if node.op != "call_module" or not str(node.target).startswith(prefix):
            continue
        name = str(node.target)[len(prefix):]
        q = acts.get(name)
        if q is None or name in rows or name in skipped:
            continue
        if q.mode != "quantize":
            skipped.append(name)
            continue
        scale, zero_point = q.qparams()
        op, layer, source = _describe(node)
        rows[name] = QuantizerClipping(name, roles.get(name, "internal"), op, layer, source,
                                       isinstance(q, FixedQParamsQuantizer), scale, zero_point, q.qmin, q.qmax)
    return rows, skipped


class ClippingMonitor:
    """Forward hooks on every activation quantizer; ``report()`` after running the model.

        >>> with ClippingMonitor(model) as monitor:
        ...     evaluate(model, dataset)
        >>> monitor.report().summary()

    ``model`` may be the QuantizedModel or any wrapper around one.
    """

    def __init__(self, model: nn.Module) -> None:
        self.qmodel = find_quantized(model)
        self.rows, self.skipped = _blank_rows(self.qmodel)
        self.calls = 0  # model runs seen, counted at the first quantizer in graph order
        self._counter = next(iter(self.rows), None)
        self._handles: list[Any] = []

    def __enter__(self) -> "ClippingMonitor":
        acts = self.qmodel.activation_quantizers()
        for name in self.rows:
            self._handles.append(acts[name].register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        row = self.rows[name]

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if module.mode != "quantize":
                return
            x = args[0].detach().float()
            if x.numel() == 0:
                return
            with torch.no_grad():
                flat = x.reshape(-1)
                lo, hi = torch.aminmax(flat)
                row.seen_min, row.seen_max = min(row.seen_min, float(lo)), max(row.seen_max, float(hi))
                # the same arithmetic as fake_quantize's forward: round(x * (1/s)) + zp; it is monotonic
                # in x, so the extremes decide whether anything clips and most tensors need no full pass
                inv = 1.0 / torch.tensor(row.scale, dtype=torch.float32)
                ends = torch.round(torch.stack([lo, hi]) * inv) + row.zero_point
                if ends[0] < row.qmin or ends[1] > row.qmax:
                    codes = torch.round(flat * inv) + row.zero_point
                    row.clipped += int(torch.count_nonzero((codes < row.qmin) | (codes > row.qmax)))
                row.count += flat.numel()
                error = flat - output.detach().float().reshape(-1)
                row.signal_energy += float(torch.dot(flat, flat))
                row.error_energy += float(torch.dot(error, error))
            if name == self._counter:
                self.calls += 1

        return hook

    def report(self) -> ClippingReport:
        return ClippingReport(list(self.rows.values()), batches=self.calls, skipped=list(self.skipped))


def _batches(data: Any, max_items: int | None) -> Iterator[tuple]:
    """Model arguments from a dataset (items with 'mixture', run one at a time) or an iterable of batches."""
    is_dataset = hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(
        data, (list, tuple, torch.Tensor))
    items: Iterable[Any] = (data[i] for i in range(len(data))) if is_dataset else data
    for index, item in enumerate(items):
        if max_items is not None and index >= max_items:
            return
        if isinstance(item, dict):
            yield (item["mixture"].float().unsqueeze(0),)
        elif isinstance(item, torch.Tensor):
            yield (item,)
        elif isinstance(item, (tuple, list)):
            yield tuple(item)
        else:
            raise ConfigError(f"clipping_report: cannot run the model on a {type(item).__name__} item; give "
                              "tensors, tuples of tensors or a dataset of {'mixture': ...} items")


@torch.no_grad()
def clipping_report(model: nn.Module, batches_or_dataset: Any, *, max_items: int | None = None,
                    progress: bool = False, desc: str = "clipping") -> ClippingReport:
    """Run ``model`` (a QuantizedModel or the wrapper evaluation runs) on the data; per-quantizer clipping.

    ``batches_or_dataset``: tensors (one batch each), tuples of model arguments, or a dataset whose items
    hold a 'mixture' (each item run whole, batch 1, as ``compress eval`` runs it). ``max_items`` stops early.
    """
    set_training(model, False)
    total = None
    if hasattr(batches_or_dataset, "__len__"):
        total = len(batches_or_dataset) if max_items is None else min(len(batches_or_dataset), max_items)
    monitor = ClippingMonitor(model)
    with monitor:
        for args in tqdm(_batches(batches_or_dataset, max_items), total=total, desc=desc, disable=not progress,
                         leave=False):
            model(*args)
    report = monitor.report()
    if report.batches == 0:
        raise ConfigError("clipping_report got no data")
    return report


__all__ = ["CLIP_WARN_FRACTION", "ClippingMonitor", "ClippingReport", "QuantizerClipping", "clipping_report",
           "find_quantized"]
