"""Training and scoring of quality predictors: MSE loss, Adam, test MSE and Pearson correlation.

The enhancement training loop (compressor/training) is built around audio
targets and SI-SNR; a quality predictor regresses one number per clip from
cached features, so it gets this small loop: shuffled mini-batches, the
weights of the epoch with the lowest validation MSE kept (the paper's early
stopping, with its learning-rate decay of 0.9 after a stalled epoch).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from compressor.configs import JsonConfig
from compressor.errors import ConfigError, TrainingError


@dataclass(frozen=True)
class FitConfig(JsonConfig):
    epochs: int = 6
    batch_size: int = 16
    lr: float = 1e-3
    lr_decay: float = 0.9  # applied after an epoch without validation improvement
    seed: int = 0
    # Start the output layer's bias at the mean label: the first epochs then learn
    # the spread, not the offset (binarized models, whose pooled features vary
    # little at first, otherwise spend their few epochs on the offset).
    init_output_bias: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"FitConfig needs epochs >= 1, batch_size >= 1, lr > 0; got {self}")


def _tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    if hasattr(dataset, "features") and hasattr(dataset, "labels"):
        return dataset.features, dataset.labels.reshape(-1)
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it["mixture"] for it in items]), torch.stack([it["target"].reshape(()) for it in items])


@torch.no_grad()
def predict(model: nn.Module, features: torch.Tensor | np.ndarray, batch_size: int = 32) -> np.ndarray:
    """One score per clip, model in eval mode."""
    was = model.training
    model.eval()
    x = torch.as_tensor(features)
    out = [model(x[i:i + batch_size].float()).reshape(-1) for i in range(0, len(x), batch_size)]
    model.train(was)
    return torch.cat(out).numpy().astype(np.float64)


def quality_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MSE and Pearson correlation (PCC) of predictions against labels."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if pred.shape != target.shape or pred.size < 2:
        raise ConfigError(f"quality_metrics: need two equal-length vectors, got {pred.shape} and {target.shape}")
    pcc = float(np.corrcoef(pred, target)[0, 1]) if pred.std() > 0 else 0.0
    return {"mse": float(np.mean((pred - target) ** 2)), "pcc": pcc, "n": int(pred.size)}


def evaluate(model: nn.Module, dataset: Dataset) -> dict[str, float]:
    x, y = _tensors(dataset)
    return quality_metrics(predict(model, x), y.numpy())


def _init_output_bias(model: nn.Module, value: float) -> None:
    last = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if last and last[-1].bias is not None:
        with torch.no_grad():
            last[-1].bias.fill_(value)


def fit(model: nn.Module, train_set: Dataset, valid_set: Dataset | None, cfg: FitConfig,
        progress: bool = True) -> dict[str, Any]:
    """Train ``model`` in place; it ends with the best-validation weights. Returns the history."""
    x, y = _tensors(train_set)
    if cfg.init_output_bias:
        _init_output_bias(model, float(y.float().mean()))
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    history: list[dict[str, float]] = []
    best, best_state = math.inf, None
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        bar = tqdm(range(0, len(y), cfg.batch_size), desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress,
                   leave=False)
        for start in bar:
            idx = order[start:start + cfg.batch_size]
            loss = nn.functional.mse_loss(model(x[idx].float()).reshape(-1), y[idx].float())
            if not torch.isfinite(loss):
                raise TrainingError(f"loss became {loss.item()} at epoch {epoch + 1}")
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        row = {"epoch": epoch + 1, "train_mse": total / len(y)}
        if valid_set is not None:
            row.update({f"valid_{k}": v for k, v in evaluate(model, valid_set).items() if k != "n"})
        score = row.get("valid_mse", row["train_mse"])
        if score < best:
            best, best_state = score, copy.deepcopy(model.state_dict())
        else:
            for group in opt.param_groups:
                group["lr"] *= cfg.lr_decay
        history.append(row)
        if progress:
            tqdm.write(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"history": history, "best": best}
