"""Model zoo: plain PyTorch audio models, built by name from a JSON-able config.

    >>> from compressor.zoo import build_model
    >>> model = build_model("conv_tasnet", {"num_sources": 2, "mask_nonlinear": "softmax"})

Models here hold no quantization code; quantization is applied from outside.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from compressor.errors import ConfigError
from compressor.zoo.conv_tasnet import (
    ChannelwiseLayerNorm,
    ConvTasNet,
    ConvTasNetConfig,
    GlobalLayerNorm,
    count_parameters,
)
from compressor.zoo.crn_gru import CRNGRU, CRNConfig
from compressor.zoo.dnsmos_cnn import DnsmosCNN, DnsmosConfig
from compressor.zoo.dual_path import DualPathConfig, DualPathNet
from compressor.zoo.lstm_masker import LSTMMasker, LSTMMaskerConfig


@dataclass(frozen=True)
class _Entry:
    config_class: type
    builder: Callable[[Any], nn.Module]


_REGISTRY: dict[str, _Entry] = {
    "conv_tasnet": _Entry(ConvTasNetConfig, ConvTasNet),
    "dnsmos_cnn": _Entry(DnsmosConfig, DnsmosCNN),
    # written as users write them (nn.GRU / nn.LSTM / nn.MultiheadAttention / norms / torch.stft): README "Zoo"
    "crn_gru": _Entry(CRNConfig, CRNGRU),
    "lstm_masker": _Entry(LSTMMaskerConfig, LSTMMasker),
    "dual_path": _Entry(DualPathConfig, DualPathNet),
}


def list_models() -> list[str]:
    """Names accepted by :func:`build_model`, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown model {name!r}; known models: {', '.join(list_models())}"
        ) from None


def model_config_class(name: str) -> type:
    """The frozen config dataclass of model ``name``."""
    return _entry(name).config_class


def build_model(name: str, config: dict[str, Any] | Any | None = None) -> nn.Module:
    """Build model ``name``; ``config`` is a dict (missing keys take defaults),
    an instance of the model's config class, or None for the defaults."""
    entry = _entry(name)
    if config is None:
        cfg = entry.config_class()
    elif isinstance(config, entry.config_class):
        cfg = config
    elif isinstance(config, dict):
        cfg = entry.config_class.from_dict(config)
    else:
        raise ConfigError(
            f"config for model {name!r} must be a dict or "
            f"{entry.config_class.__name__}, got {type(config).__name__}"
        )
    return entry.builder(cfg)


__all__ = [
    "CRNConfig",
    "CRNGRU",
    "ChannelwiseLayerNorm",
    "ConvTasNet",
    "ConvTasNetConfig",
    "DnsmosCNN",
    "DnsmosConfig",
    "DualPathConfig",
    "DualPathNet",
    "LSTMMasker",
    "LSTMMaskerConfig",
    "GlobalLayerNorm",
    "build_model",
    "count_parameters",
    "list_models",
    "model_config_class",
]
