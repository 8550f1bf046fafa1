"""Quantization recipes, by name: how a float model becomes a quantized one.

    >>> recipe = get_recipe("vanilla")
    >>> qmodel = recipe.run(float_model, data, recipe.config_class(steps=200), out_dir)
"""
from __future__ import annotations

from compressor.errors import RecipeError
from compressor.recipes.base import Recipe, RecipeContext
from compressor.recipes.ptq import PTQ
from compressor.recipes.vanilla import VanillaQAT

_RECIPES: dict[str, type[Recipe]] = {"ptq": PTQ, "vanilla": VanillaQAT}


def list_recipes() -> list[str]:
    return sorted(_RECIPES)


def get_recipe(name: str) -> type[Recipe]:
    try:
        return _RECIPES[name]
    except KeyError:
        raise RecipeError(f"unknown recipe {name!r}; known recipes: {', '.join(list_recipes())}") from None


__all__ = ["Recipe", "RecipeContext", "get_recipe", "list_recipes"]
