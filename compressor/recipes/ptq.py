"""Post-training quantization: calibrate ranges on data, no retraining."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compressor.configs import JsonConfig
from compressor.errors import ConfigError
from compressor.quant import QuantConfig, calibrate, quantize
from compressor.quant.leaky_grid import snap_leaky_relu_grids
from compressor.quant.precision import precision_overrides
from compressor.recipes import spectral
from compressor.recipes.base import Recipe, RecipeContext, calibration_batches, example_input
from compressor.recipes.level import (
    PTQ_CLIP_AUG, augmented, check_output_bits, clip_augmented, clip_share, fit_level_stage, output_peaks,
    output_rules, pin_io_ranges, stage_records,
)
from compressor.stages.level_model import at_level


@dataclass(frozen=True)
class PTQConfig(JsonConfig):
    weight_bits: int = 8
    activation_bits: int = 8
    calibration: str = "mse"
    calib_batches: int = 16
    batch_size: int = 4
    seed: int = 0
    # One-slope PReLUs on grids where XNNPACK's LEAKY_RELU is exact (quant/leaky_grid.py).
    leaky_grid: bool = True
    # Level stage (stages/level.py): calibrate at, and deploy with, one input level (recipes/level.py).
    level_stage: bool = True
    level_aug_db: float = 0.0  # +- dB of random gain on the calibration items
    # random spectral tilt of the items' noise (white to brown/blue): on the robustness set PTQ -0.74 -> -0.62 dB,
    # vanilla QAT -0.54 -> -0.48 dB against float; demo split +0.06 -> +0.16 / +0.08 -> +0.20 (README 'Level')
    tilt_aug: bool = True
    # share of the items driven 0-12 dB past full scale and hard-clipped, as an ADC clips loud speech
    # (data/augment.py ClipAugmented); None: PTQ_CLIP_AUG (0.25) behind a level stage the model got, else 0
    # (recipes/level.py says what it buys and costs)
    clip_aug: float | None = None
    # The model's output at 16 bits (int16 audio out of the file) behind the level stage: its grid spans the
    # stage's target peak, too coarse at 8 bits for a quiet estimate (recipes/level.py output_rules).
    output_bits: int = 16
    # per-layer precision rules, 'MODULE[:OP]=a16' (compressor/quant/precision.py), later ones win
    precision: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.calib_batches < 1 or self.batch_size < 1:
            raise ConfigError("PTQ needs calib_batches >= 1 and batch_size >= 1")
        precision_overrides(self.precision)  # a malformed rule fails here, before any work
        check_output_bits(self.output_bits)

    def quant_config(self, audio_output: bool = True) -> QuantConfig:
        """``audio_output``: the model's outputs are audio (not a spectral core's mask), so ``output_bits`` apply."""
        rules = output_rules(self.output_bits, self.level_stage and audio_output)
        return QuantConfig(weight_bits=self.weight_bits, activation_bits=self.activation_bits,
                           calibration=self.calibration, overrides=precision_overrides(self.precision, rules))


class PTQ(Recipe):
    """Quantize every tensor; step sizes from min/max (EMA) or an MSE-optimal range."""

    name = "ptq"
    Config = PTQConfig

    def run(self, ctx: RecipeContext) -> nn.Module:
        cfg = self.config
        train_set = augmented(ctx.train_set, cfg)
        batches = list(calibration_batches(train_set, cfg.calib_batches, cfg.batch_size, cfg.seed))
        stage = fit_level_stage(batches, cfg.level_stage, ctx.float_model)
        share = clip_share(cfg.clip_aug, stage, PTQ_CLIP_AUG)
        if share > 0:  # clipped items once the model has a stage; its target peak is fit on them too
            train_set = clip_augmented(train_set, share, cfg.seed)
            batches = list(calibration_batches(train_set, cfg.calib_batches, cfg.batch_size, cfg.seed))
            stage = fit_level_stage(batches, stage is not None)
        example = example_input(train_set)
        split = spectral.split_of(ctx.float_model, example, cfg.quant_config().substitutions)  # a spectral model: only the core is quantized
        # the 16-bit output only behind a stage the model got (not one refused for a non-equivariant model)
        qmodel = quantize(*spectral.to_quantize(ctx.float_model, example, split),
                          cfg.quant_config(audio_output=split is None and stage is not None))
        self.stages = stage_records(stage) + spectral.records(split)
        if split is None:  # a spectral core's input and output are features and a mask, not audio
            # fixed-qparams rules: calibration leaves the input and output grids alone
            pin_io_ranges(qmodel, stage, output_peaks(ctx.float_model, batches, stage) if stage else None)
        calibrate(qmodel, spectral.core_inputs(split, at_level(batches, stage) if stage else batches),
                  cfg.calibration, progress=ctx.progress)
        if cfg.leaky_grid:
            snap_leaky_relu_grids(qmodel)
        return qmodel
