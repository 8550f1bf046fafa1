"""Quality of a model on a dataset: SI-SNR, SI-SNRi, SDR, STOI by input-SNR bucket."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from compressor.metrics import evaluate_pair, summarize
from compressor.module_mode import set_training


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, *, progress: bool = True, desc: str = "eval",
             max_items: int | None = None) -> dict[str, Any]:
    """Run ``model`` on every item (whole length, batch 1) and summarise.

    Returns ``summarize()``'s dict plus ``rows`` (one dict per item with its
    id, input SNR and metrics) so reports can show per-file results.
    """
    set_training(model, False)
    rows = []
    count = len(dataset) if max_items is None else min(len(dataset), max_items)
    sample_rate = getattr(dataset, "sample_rate", 16000)
    for index in tqdm(range(count), desc=desc, disable=not progress, leave=False):
        item = dataset[index]
        mixture = item["mixture"].float()
        estimate = model(mixture.unsqueeze(0))[0]
        row = evaluate_pair(estimate.numpy(), item["sources"].numpy(), mixture.numpy(), sample_rate)
        snr = float(item["snr_db"])
        row.update(id=item["id"], snr_db=snr if math.isfinite(snr) else 0.0)
        rows.append(row)
    summary = summarize(rows)
    summary["rows"] = rows
    return summary
