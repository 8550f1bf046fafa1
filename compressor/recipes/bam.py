"""BAM: binary activation maps for a DNSMOS-style quality predictor (Nilsson et al.).

The conv activations become Heaviside steps trained from scratch with the
SuperSpike surrogate derivative 1/(beta|x|+1)^2 (global average pooling
after the last conv, as the paper does for binarized networks); optionally
the conv weights are binary too (sign(w) times a per-channel scale). The
trained model then gets per-channel 8-bit weight PTQ with MSE calibration,
and every other tensor its int8 quantizer: the int8 x int1 model. The binary
maps' quantizers are pinned to scale 1, zero-point -128 (codes -128/-127
hold exactly 0 and 1), so the deployed 0/1 maps are exact: fixed-qparams
precision rules in the model's QuantConfig, set before calibration.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from compressor.bam.binarization import bake_weights, binarize_activations, binarize_weights
from compressor.bam.train import FitConfig, fit
from compressor.checkpoint import ArchSpec
from compressor.configs import JsonConfig
from compressor.errors import RecipeError
from compressor.quant import QuantConfig, QuantizedModel, calibrate, quantize
from compressor.quant.graph import QUANTIZER_ROOT
from compressor.quant.precision import PrecisionOverride
from compressor.recipes.base import Recipe, RecipeContext, calibration_batches, example_input
from compressor.zoo.dnsmos_cnn import DnsmosCNN

BINARY_SCALE, BINARY_ZERO_POINT = 1.0, -128  # int8 code -128 -> 0.0, -127 -> 1.0


@dataclass(frozen=True)
class BAMConfig(JsonConfig):
    beta: float = 5.0
    binary_weights: bool = False
    global_pool: str = "avg"
    epochs: int = 6
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    weight_bits: int = 8
    activation_bits: int = 8
    calibration: str = "mse"
    calib_batches: int = 4  # x batch_size clips (the paper calibrates on 20% of the training data)

    def __post_init__(self) -> None:
        if self.beta <= 0:
            raise RecipeError(f"bam: beta must be > 0, got {self.beta}")
        self.quant_config()  # validates bits and calibration

    def quant_config(self) -> QuantConfig:
        return QuantConfig(weight_bits=self.weight_bits, activation_bits=self.activation_bits,
                           calibration=self.calibration)

    def fit_config(self) -> FitConfig:
        return FitConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, seed=self.seed)


def build_bam_model(float_model: nn.Module, config: BAMConfig) -> nn.Module:
    """A fresh (untrained) binarized model of ``float_model``'s architecture."""
    if not isinstance(float_model, DnsmosCNN):
        raise RecipeError(f"recipe bam works on the zoo's dnsmos_cnn, got {type(float_model).__name__}")
    torch.manual_seed(config.seed)
    arch = dataclasses.replace(float_model.config, global_pool=config.global_pool)
    model = binarize_activations(DnsmosCNN(arch), config.beta, copy_model=False)
    return binarize_weights(model) if config.binary_weights else model


def binary_map_quantizers(qmodel: QuantizedModel) -> dict[str, nn.Module]:
    """The quantizers on the Heaviside outputs (``where(x >= 0, 1, 0)`` nodes)."""
    found = {}
    for node in qmodel.graph_module.graph.nodes:
        if (node.op == "call_module" and node.args and getattr(node.args[0], "target", None)
                is torch.ops.aten.where.self):
            found[str(node.target)] = qmodel.graph_module.get_submodule(node.target)
    return found


def pin_binary_maps(qmodel: QuantizedModel) -> int:
    """Give every binary map the grid on which 0 and 1 are exact (scale 1, zero-point -128).

    As fixed-qparams precision rules (``#<map quantizer>``, saved in the model's QuantConfig): call it before
    ``calibrate``, which then leaves these grids alone. Returns how many maps were pinned.
    """
    quantizers = binary_map_quantizers(qmodel)
    # code qmin -> 0.0, qmin + 1 -> 1.0 (BINARY_ZERO_POINT at 8 bits)
    qmodel.add_overrides([PrecisionOverride(tensor=name.removeprefix(f"{QUANTIZER_ROOT}."), scale=BINARY_SCALE,
                                            zero_point=q.qmin) for name, q in quantizers.items()])
    return len(quantizers)


def quantize_bam(model: nn.Module, ctx: RecipeContext, config: BAMConfig) -> tuple[QuantizedModel, ArchSpec]:
    """Int8 PTQ of a trained binarized model (its traced program is the saved architecture)."""
    model = bake_weights(model).eval()
    example = example_input(ctx.train_set)
    arch = ArchSpec.from_program(model, (example,))
    qmodel = quantize(arch.build(), example, config.quant_config())
    if pin_binary_maps(qmodel) != 4:
        raise RecipeError("bam: expected 4 binary activation maps in the traced graph")
    batches = calibration_batches(ctx.train_set, config.calib_batches, config.batch_size, config.seed)
    calibrate(qmodel, batches, config.calibration, progress=ctx.progress)
    return qmodel, arch


class BAM(Recipe):
    """Heaviside conv activations (SuperSpike surrogate), QAT from scratch, then int8 weight PTQ."""

    name = "bam"
    Config = BAMConfig

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self._arch: ArchSpec | None = None
        self.binarized: nn.Module | None = None  # the trained model before int8 PTQ (float weights)
        self.history: dict[str, Any] = {}

    def run(self, ctx: RecipeContext, on_checkpoint: Callable[[int, nn.Module], None] | None = None) -> QuantizedModel:
        cfg = self.config
        model = build_bam_model(ctx.float_model, cfg)
        self.history = fit(model, ctx.train_set, ctx.valid_set, cfg.fit_config(), progress=ctx.progress)
        self.binarized = model
        qmodel, self._arch = quantize_bam(model, ctx, cfg)
        return qmodel

    def saved_arch(self, default: ArchSpec) -> ArchSpec:
        if self._arch is None:
            raise RecipeError("recipe bam: the architecture is known only once run() has built it")
        return self._arch


__all__ = ["BAM", "BAMConfig", "build_bam_model", "pin_binary_maps", "quantize_bam"]
