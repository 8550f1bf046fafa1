"""Quantization recipes, by name: how a float model becomes a quantized one.

    >>> recipe = get_recipe("vanilla")
    >>> qmodel = recipe.run(float_model, data, recipe.config_class(steps=200), out_dir)
"""
from __future__ import annotations

from typing import Any

from torch import nn

from compressor.errors import RecipeError
from compressor.recipes.bam import BAM
from compressor.recipes.base import Recipe, RecipeContext
from compressor.recipes.fqse import FQSE
from compressor.recipes.level import recorded_stage
from compressor.recipes.ptq import PTQ
from compressor.recipes.vanilla import VanillaQAT
from compressor.stages.level_model import LevelGainModel

_RECIPES: dict[str, type[Recipe]] = {"bam": BAM, "fqse": FQSE, "ptq": PTQ, "vanilla": VanillaQAT}


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(name: str) -> type[Recipe]:
    try:
        return _RECIPES[name]
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; known recipes: {', '.join(list_recipes())}") from None


def inference_model(loaded: Any) -> nn.Module:
    """A loaded model (compressor.load_model) as evaluation runs it.

    FQSE's quantized graph takes the split input and returns two outputs; its
    recipe wraps it with the splitter and the combiner. A recorded level stage
    goes around that (recipes/level.py). Other models come back as they are.
    """
    recipe = getattr(loaded, "recipe", None) or {}
    cls = _RECIPES.get(recipe.get("name", ""))
    if cls is None or not loaded.quantized:
        return loaded.model
    model = cls.inference_model(loaded.model, recipe)
    stage = recorded_stage(recipe)
    return LevelGainModel(model, stage) if stage else model


__all__ = ["Recipe", "RecipeContext", "get_recipe", "inference_model", "list_recipes"]
