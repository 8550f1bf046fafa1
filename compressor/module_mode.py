"""``model.train()`` / ``model.eval()`` for every model the toolkit is given, exported programs included.

``torch.export(...).module()`` (a ``.pt2`` file, or a model we traced) refuses
``train()``/``eval()`` with NotImplementedError; its graph already fixes the
behaviour of dropout and batch norm, so there is nothing to switch.
"""
from __future__ import annotations

from torch import nn


def set_training(model: nn.Module, training: bool) -> nn.Module:
    """``model.train(training)``, or nothing for a module that refuses it; returns ``model``."""
    try:
        model.train(training)
    except NotImplementedError:
        pass
    return model


__all__ = ["set_training"]
