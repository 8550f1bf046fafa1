"""Per-tensor sensitivity: the quality each activation quantizer costs, and what 16 bits or float would win back.

For every activation quantizer of a simulated model, on the user's data, one
quantizer at a time is widened to 16 bits (symmetric, zero-point 0, the range
it has now, as a precision override would deploy it) and then switched off
(float), everything else staying int8. The SI-SNR gained over the all-int8
model says where a ``--precision '#NAME=a16'`` (or 'MODULE:OP=a16') override pays.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from compressor.metrics import si_snr_np
from compressor.quant.graph import QUANTIZER_ROOT, module_path, op_kind, rule_site
from compressor.quant.clipping import model_io_roles
from compressor.quant.model import QuantizedModel
from compressor.quant.quantizers import WIDE_BITS, ActivationQuantizer, FixedQParamsQuantizer, fixed_qparams


@dataclass
class SensitivityRow:
    quantizer: str
    layer: str
    op: str
    gain_16bit_db: float  # SI-SNR of the model with this tensor at 16 bits, minus the all-int8 model's
    gain_float_db: float  # ... with this tensor float
    role: str = ""  # "input"/"output": a file's audio stays 8-bit, so no override can widen it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SensitivityReport:
    baseline_db: float  # SI-SNR of the all-int8 simulation on the items measured
    items: int
    rows: list[SensitivityRow]

    def ranked(self, count: int | None = None) -> list[SensitivityRow]:
        # tensors an override can widen first; the model's own input/output after them
        ordered = sorted(self.rows, key=lambda r: (r.role == "", r.gain_16bit_db), reverse=True)
        return ordered[:count] if count else ordered

    def markdown(self, count: int | None = None) -> str:
        lines = ["| quantizer | layer | op | SI-SNR gain at 16 bits (dB) | SI-SNR gain as float (dB) |",
                 "|---|---|---|---|---|"]
        lines += [f"| {r.quantizer}{f' (model {r.role}, stays 8-bit)' if r.role else ''} | "
                  f"{r.layer or '(top level)'} | {r.op} | {r.gain_16bit_db:+.3f} | {r.gain_float_db:+.3f} |"
                  for r in self.ranked(count)]
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        best = self.ranked(1)
        top = f"; most sensitive: {best[0].quantizer} ({best[0].layer}, {best[0].op}) " \
              f"{best[0].gain_16bit_db:+.2f} dB at 16 bits" if best else ""
        return f"all-int8 SI-SNR {self.baseline_db:.2f} dB on {self.items} items, {len(self.rows)} quantizers{top}"

    def to_dict(self) -> dict[str, Any]:
        return {"baseline_db": self.baseline_db, "items": self.items, "rows": [r.to_dict() for r in self.ranked()]}


@contextlib.contextmanager
def widened(q: nn.Module) -> Iterator[None]:
    """``q`` as a 16-bit quantizer over the range it covers now (restored afterwards)."""
    saved = (q.bits, q.qmin, q.qmax, q.scale.detach().clone(), q.zero_point.detach().clone())
    scale, zero_point = q.qparams()
    with torch.no_grad():
        if isinstance(q, FixedQParamsQuantizer):
            new_scale = fixed_qparams(q.op, WIDE_BITS)[0]
        else:
            limit = max(abs((q.qmin - zero_point) * scale), abs((q.qmax - zero_point) * scale))
            new_scale = limit / (2 ** (WIDE_BITS - 1) - 1)
        q.bits, q.qmin, q.qmax = WIDE_BITS, -(2 ** (WIDE_BITS - 1)), 2 ** (WIDE_BITS - 1) - 1
        q.scale.copy_(torch.tensor(new_scale))
        q.zero_point.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            q.bits, q.qmin, q.qmax = saved[:3]
            q.scale.copy_(saved[3])
            q.zero_point.copy_(saved[4])


@contextlib.contextmanager
def switched_off(q: nn.Module) -> Iterator[None]:
    mode = q.mode
    q.set_mode("float")
    try:
        yield
    finally:
        q.set_mode(mode)


@torch.no_grad()
def _mean_si_snr(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    mixtures, references = batch
    estimates = model(mixtures).reshape(references.shape)
    return float(np.mean(si_snr_np(estimates.numpy(), references.numpy())))


def _batch(dataset: Any, max_items: int, crop_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first items, cut to one common length, as one batch: one forward per trial instead of one per item."""
    items = [dataset[i] for i in range(min(len(dataset), max_items))]
    length = min(crop_samples, *(int(item["mixture"].shape[-1]) for item in items))
    mixtures = torch.stack([item["mixture"][..., :length].float() for item in items])
    references = torch.stack([item["sources"][..., :length].float() for item in items])
    return mixtures, references


def sensitivity(model: nn.Module, qmodel: QuantizedModel, dataset: Any, max_items: int = 8,
                crop_seconds: float = 2.0, progress: bool = True) -> SensitivityReport:
    """``model`` runs ``qmodel`` (itself, or a wrapper such as FQSE's splitter/combiner or the level stage).

    Each trial runs the first ``max_items`` items, cut to ``crop_seconds``, as one batch.
    """
    sample_rate = getattr(dataset, "sample_rate", 16000)
    batch = _batch(dataset, max_items, int(crop_seconds * sample_rate))
    items = batch[0].shape[0]
    baseline = _mean_si_snr(model, batch)
    nodes = {str(n.target).removeprefix(f"{QUANTIZER_ROOT}."): n for n in qmodel.graph_module.graph.nodes
             if n.op == "call_module" and str(n.target).startswith(f"{QUANTIZER_ROOT}.")}
    roles = model_io_roles(qmodel)
    rows = []
    quantizers = {name: q for name, q in qmodel.activation_quantizers().items()
                  if isinstance(q, (ActivationQuantizer, FixedQParamsQuantizer)) and q.bits < WIDE_BITS}
    for name, q in tqdm(quantizers.items(), desc="sensitivity", disable=not progress, leave=False):
        with widened(q):
            wide = _mean_si_snr(model, batch)
        with switched_off(q):
            off = _mean_si_snr(model, batch)
        node = nodes.get(name)
        site = rule_site(node.args[0]) if node is not None and node.args else None
        layer = module_path(site) if site is not None and site.op == "call_function" else ""
        op = op_kind(site) if site is not None else ""
        rows.append(SensitivityRow(name, layer, op, round(wide - baseline, 4), round(off - baseline, 4),
                                   roles.get(name, "")))
    return SensitivityReport(round(baseline, 4), items, rows)


__all__ = ["SensitivityReport", "SensitivityRow", "sensitivity", "widened"]
