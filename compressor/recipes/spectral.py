"""What every recipe does about spectral models: split at the STFT, quantize the core, train it behind the stage.

A model that calls torch.stft is split (compressor/stages/spectral_split.py):
the recipe quantizes and calibrates only the network between the transforms,
on the STFT features of its calibration audio, trains it (QAT) with the
stage around it so the loss is still computed on audio, and records the
stage with the checkpoint; the exporters write it into the file's metadata.
The level stage, when the model has one, goes around the spectral stage.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from compressor.stages.level import LevelStage
from compressor.stages.level_model import LevelGainModel
from compressor.stages.spectral import SpectralStage, spectral_stage_of
from compressor.stages.spectral_split import SpectralModel, SpectralSplit, split_spectral, uses_stft


def split_of(float_model: nn.Module, example: torch.Tensor, substitutions: Sequence[str] | None = None
             ) -> SpectralSplit | None:
    """The model's spectral split, or None when it does not call torch.stft.

    The module-level swaps quantize() makes before tracing (nn.GRU / nn.LSTM as cells, ...) are made
    first, with ``substitutions`` as in QuantConfig: the core is a graph, with no modules left to swap."""
    if not uses_stft(float_model, example):
        return None
    from compressor.quant.model import substituted

    return split_spectral(substituted(float_model, [example], substitutions), example)


def to_quantize(float_model: nn.Module, example: torch.Tensor, split: SpectralSplit | None
                ) -> tuple[nn.Module, torch.Tensor]:
    """(what quantize() gets, its example input): the core and features of a split model, else the model."""
    if split is None:
        return float_model, example
    return split.core, split.features(example)


def core_inputs(split: SpectralSplit | None, batches: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Audio batches as the quantized graph sees them (their STFT features for a split model)."""
    for batch in batches:
        yield split.features(batch) if split is not None else batch


def records(split: SpectralSplit | None) -> list[dict[str, Any]]:
    return [split.stage.to_dict()] if split is not None else []


def deployed(qmodel: nn.Module, spectral: SpectralStage | None, level: LevelStage | None) -> nn.Module:
    """The quantized graph as a deployed file runs it: spectral stage inside, level stage outside."""
    model = SpectralModel(qmodel, spectral) if spectral is not None else qmodel
    return LevelGainModel(model, level) if level is not None else model


def recorded_spectral(recipe_info: dict[str, Any] | None) -> SpectralStage | None:
    from compressor.errors import RecipeError

    try:
        return spectral_stage_of((recipe_info or {}).get("stages"))
    except ValueError as exc:
        raise RecipeError(f"the checkpoint's recipe record: {exc}") from exc


__all__ = ["core_inputs", "deployed", "records", "recorded_spectral", "split_of", "to_quantize"]
