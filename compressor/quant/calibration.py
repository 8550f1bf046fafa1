"""Calibration: ranges for PTQ, and the initial LSQ step sizes for QAT."""
from __future__ import annotations

from typing import Iterable

import torch
from tqdm import tqdm

from compressor.errors import ConfigError
from compressor.quant.graph import statistic_quantizers
from compressor.quant.model import QuantizedModel
from compressor.quant.quantizers import STATISTIC_MARGIN, ActivationQuantizer, mse_range, restart_sampling


@torch.no_grad()
def calibrate(qmodel: QuantizedModel, batches: Iterable[torch.Tensor | tuple], method: str | None = None,
              progress: bool = False) -> QuantizedModel:
    """Observe float activations on ``batches`` and set every quantizer's range.

    ``method`` is 'minmax' (EMA of per-batch min/max) or 'mse' (the clipping
    that minimises the quantization MSE on the observed values); default from
    the model's QuantConfig. Weights get per-channel max|w| or MSE-optimal
    steps. A quantizer whose qparams a precision rule fixes (``pinned``)
    keeps them. Leaves the model in 'quantize' mode.
    """
    method = method or qmodel.config.calibration
    if method not in ("minmax", "mse"):
        raise ConfigError(f"unknown calibration method {method!r}; expected 'minmax' or 'mse'")
    restart_sampling(qmodel.activation_quantizers().values())
    qmodel.set_mode("observe")
    seen = 0
    for batch in tqdm(batches, desc="calibrate", disable=not progress, leave=False):
        args = batch if isinstance(batch, (tuple, list)) else (batch,)
        qmodel(*args)
        for q in qmodel.activation_quantizers().values():
            if isinstance(q, ActivationQuantizer):
                q.end_batch()  # one range per batch over all the tensors a shared quantizer saw
        seen += 1
    if seen == 0:
        raise ConfigError("calibration got no batches")
    statistics = statistic_quantizers(qmodel.graph_module)
    for name, q in qmodel.activation_quantizers().items():
        if not isinstance(q, ActivationQuantizer) or getattr(q, "pinned", False):
            continue  # fixed qparams (runtime-mandated, or a precision rule's): not calibrated
        if not q.observed:
            if q.observed_samples().numel():  # it saw values, but inf or nan: no int8 grid holds them
                raise ConfigError(f"quantizer {name} saw infinite or NaN values during calibration (e.g. an "
                                  "additive -inf attention mask: give F.scaled_dot_product_attention a boolean "
                                  "mask or is_causal=True instead)")
            raise ConfigError(f"quantizer {name} saw no data during calibration")
        lo, hi = float(q.running_min), float(q.running_max)
        if name in statistics and q.few_values_per_item:
            # One value per item (a gLN's mean, variance, rsqrt): an EMA of batch extremes or an MSE fit on a few
            # dozen values clips them on audio unlike the calibration's (brown noise: -2.7 dB against float, -0.2
            # with this range on the robustness set's -30 dBFS items), and their resolution costs little.
            lo, hi = (STATISTIC_MARGIN * v for v in q.observed_extremes())
        elif method == "mse" and not q.symmetric:
            lo, hi = mse_range(q.observed_samples(), lo, hi, q.qmin, q.qmax)
        q.set_range(lo, hi)
    for wq, weight in qmodel.weight_tensors().values():
        wq.set_scale_from(weight, method)
    qmodel.set_mode("quantize")
    return qmodel

