"""A dataset that wraps another and changes its items: length, sample rate and epochs pass through."""
from __future__ import annotations

from torch.utils.data import Dataset


class WrappedDataset(Dataset):
    def __init__(self, base: Dataset) -> None:
        self.base = base
        self.sample_rate = getattr(base, "sample_rate", 16000)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        # on-the-fly mixing and augmentation draw per epoch: the wrapped set must hear of each one
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


__all__ = ["WrappedDataset"]
