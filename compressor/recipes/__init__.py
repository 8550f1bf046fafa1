"""Quantization recipes, by name: how a float model becomes a quantized one.

    >>> recipe = get_recipe("vanilla")
    >>> qmodel = recipe.run(float_model, data, recipe.config_class(steps=200), out_dir)
"""
from __future__ import annotations

from typing import Any

from torch import nn

from compressor.errors import RecipeError
from compressor.recipes import spectral
from compressor.recipes.bam import BAM
from compressor.recipes.base import Recipe, RecipeContext
from compressor.recipes.fqse import FQSE
from compressor.recipes.level import recorded_stage
from compressor.recipes.ptq import PTQ
from compressor.recipes.vanilla import VanillaQAT

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
    recipe wraps it with the splitter and the combiner. A spectral model's core
    gets its STFT/mask/iSTFT stage (recipes/spectral.py), and a recorded level
    stage goes around that (recipes/level.py). Other models come back as they are.
    """
    recipe = getattr(loaded, "recipe", None) or {}
    cls = _RECIPES.get(recipe.get("name", ""))
    if cls is None or not loaded.quantized:
        return loaded.model
    model = cls.inference_model(loaded.model, recipe)
    return spectral.deployed(model, spectral.recorded_spectral(recipe), recorded_stage(recipe))


__all__ = ["Recipe", "RecipeContext", "get_recipe", "inference_model", "list_recipes"]
