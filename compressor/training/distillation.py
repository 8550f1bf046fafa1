"""Knowledge distillation from the float model during QAT.

The quantized model is trained towards the clean sources *and* towards what
the float model outputs on the same (augmented) mixture. The float output is
a target the 8-bit model can actually reach, so its gradient is the
quantization error itself rather than the float model's own error, which
QAT cannot remove; the FQSS paper (seeds/003) builds SAKD on the same term.

``TeacherTargets`` appends the teacher's output to each training item's
sources (S -> 2S channels), so the training loop, its resume and its DDP
sharding stay unchanged; ``distillation_loss`` splits them again. Validation
sets are not wrapped: their loss is the plain task loss, comparable across
runs with and without distillation.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from compressor.data.wrapped import WrappedDataset
from compressor.errors import ConfigError
from compressor.losses import neg_si_snr_loss, with_source_axis


class TeacherTargets(WrappedDataset):
    """Items whose ``sources`` also hold ``teacher(mixture)``: ``(S, T)`` becomes ``(2 S, T)``."""

    def __init__(self, base: Dataset, teacher: nn.Module) -> None:
        super().__init__(base)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        mixture = torch.as_tensor(item["mixture"]).float()
        sources = torch.as_tensor(item["sources"]).float()
        with torch.no_grad():
            taught = with_source_axis(self.teacher(mixture.unsqueeze(0)))[0]
        if taught.shape != sources.shape:
            raise ConfigError(f"the teacher returns {tuple(taught.shape)} for an item with sources "
                              f"{tuple(sources.shape)}: it must be the float model of the same task")
        item["sources"] = torch.cat([sources, taught.to(sources.dtype)], dim=0)
        return item


def distillation_loss(weight: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(1 - weight) * task + weight * (-SI-SNR to the teacher)``; the task loss alone on plain items."""
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"the distillation weight must be in [0, 1], got {weight}")

    def loss(estimates: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        sources = estimates.shape[1]
        task = neg_si_snr_loss(estimates, references[:, :sources])
        if references.shape[1] == sources:
            return task
        # the student starts as the teacher, so their sources line up: no permutation search
        kd = neg_si_snr_loss(estimates, references[:, sources:], pit=False)
        return (1.0 - weight) * task + weight * kd

    return loss


__all__ = ["TeacherTargets", "distillation_loss"]
