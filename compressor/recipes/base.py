"""What every recipe shares: its inputs, its config type, and calibration batches."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

import torch
from torch import nn
from torch.utils.data import Dataset

from compressor.errors import RecipeError


@dataclass
class RecipeContext:
    """The float model and the data a recipe works from."""

    float_model: nn.Module
    train_set: Dataset
    valid_set: Dataset | None
    out_dir: Path
    resume: bool = False
    progress: bool = True


class Recipe:
    """A named way to make a QuantizedModel; subclasses set ``name`` and ``Config``."""

    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.Config()
        # pre/post-processing stages run() fitted (recipes/level.py), recorded with the checkpoint
        self.stages: list[dict[str, Any]] = []
        if not isinstance(self.config, self.Config):
            raise RecipeError(f"recipe {self.name} takes a {self.Config.__name__}, got {type(self.config).__name__}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "Recipe":
        """Build from CLI/JSON options; an option the recipe does not take is an error."""
        known = {f.name for f in dataclasses.fields(cls.Config)}
        unknown = sorted(k for k, v in options.items() if k not in known and v is not None)
        if unknown:
            raise RecipeError(f"recipe {cls.name} does not take option(s): {', '.join(unknown)}")
        return cls(cls.Config(**{k: v for k, v in options.items() if k in known and v is not None}))

    def describe(self) -> dict[str, Any]:
        """What goes into the checkpoint's 'recipe' field."""
        described: dict[str, Any] = {"name": self.name, "config": self.config.to_dict()}
        if self.stages:
            described["stages"] = list(self.stages)
        return described

    def run(self, ctx: RecipeContext) -> nn.Module:
        raise NotImplementedError

    def saved_arch(self, default: Any) -> Any:
        """The ArchSpec a checkpoint of run()'s model needs (a recipe that rebuilds the model overrides it)."""
        return default

    @classmethod
    def inference_model(cls, model: nn.Module, recipe_info: dict[str, Any]) -> nn.Module:
        """The loaded quantized model as evaluation runs it (a recipe may add pre/post-processing)."""
        return model


def calibration_batches(dataset: Dataset, count: int, batch_size: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """``count`` batches of mixtures, drawn deterministically from ``dataset``."""
    if len(dataset) == 0:
        raise RecipeError("calibration needs data, and the dataset is empty")
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=gen).tolist()
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(0)
    position = 0
    for _ in range(count):
        items = []
        for _ in range(batch_size):
            items.append(dataset[order[position % len(order)]]["mixture"])
            position += 1
        yield torch.stack(items)


def example_input(dataset: Dataset, batch_size: int = 2) -> torch.Tensor:
    """An input of the dataset's shape for tracing (batch 2: batch must stay dynamic)."""
    mixture = dataset[0]["mixture"]
    return mixture.unsqueeze(0).repeat(batch_size, *([1] * mixture.dim()))
