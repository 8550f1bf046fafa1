"""Vanilla QAT: LSQ quantizers initialised from min/max, then retraining."""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn
from torch.utils.data import Dataset

from compressor.configs import JsonConfig
from compressor.errors import RecipeError
from compressor.losses import neg_si_snr_loss
from compressor.quant import QuantConfig, QuantizedModel, calibrate, quantize
from compressor.quant.leaky_grid import snap_leaky_relu_grids
from compressor.quant.precision import precision_overrides
from compressor.recipes import spectral
from compressor.recipes.base import Recipe, RecipeContext, calibration_batches, example_input
from compressor.recipes.level import (
    augmented, check_output_bits, fit_level_stage, output_peaks, output_rules, pin_io_ranges, stage_records,
)
from compressor.stages.level import LevelStage
from compressor.stages.spectral import SpectralStage
from compressor.stages.spectral_split import SpectralSplit
from compressor.stages.level_model import at_level
from compressor.training import TrainConfig, train
from compressor.training.distillation import TeacherTargets, distillation_loss


@dataclass(frozen=True)
class QATConfig(JsonConfig):
    weight_bits: int = 8
    activation_bits: int = 8
    steps: int = 200
    batch_size: int = 4
    lr: float = 3e-5
    # Adam moves every parameter by about its learning rate per step, so a
    # step size s gets lr = quantizer_lr * s (relative), and zero-points,
    # counted in integer steps, their own absolute rate.
    quantizer_lr: float = 5e-3
    zero_point_lr: float = 1e-2
    grad_clip: float = 5.0
    calib_batches: int = 8
    checkpoint_every: int = 50
    validate_every: int = 100
    seed: int = 0
    lr_schedule: str = "cosine"
    # Weight of the distillation term (SI-SNR to the float model's output, training/distillation.py); 0: off.
    distill: float = 0.0
    # After training, one-slope PReLUs on grids where XNNPACK's LEAKY_RELU is exact (quant/leaky_grid.py):
    # the demo's LiteRT files went from 30.5-31.6 to 37.7-39.6 dB SNR against the simulation
    # (benchmarks/results/export_parity.md).
    leaky_grid: bool = True
    # Level stage (stages/level.py): QAT at, and deployment with, one input level (recipes/level.py).
    level_stage: bool = True
    level_aug_db: float = 0.0  # +- dB of random gain on the training items
    # random spectral tilt of the items' noise (white to brown/blue): on the robustness set PTQ -0.74 -> -0.62 dB,
    # vanilla QAT -0.54 -> -0.48 dB against float; demo split +0.06 -> +0.16 / +0.08 -> +0.20 (README 'Level')
    tilt_aug: bool = True
    # share of the items driven 0-12 dB past full scale and hard-clipped, as an ADC clips loud speech
    # (data/augment.py ClipAugmented); off for QAT (PTQ's default is 0.25, recipes/level.py PTQ_CLIP_AUG): one
    # 300-step vanilla run with 0.25 read -0.07 on the demo split against +0.15 without, robustness not measured
    clip_aug: float = 0.0
    # The model's output at 16 bits (int16 audio out of the file) behind the level stage (see PTQConfig).
    output_bits: int = 16
    # per-layer precision rules, 'MODULE[:OP]=a16' (compressor/quant/precision.py), later ones win
    precision: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        precision_overrides(self.precision)  # a malformed rule fails here, before any work
        check_output_bits(self.output_bits)

    def quant_config(self, audio_output: bool = True) -> QuantConfig:
        """``audio_output``: the model's outputs are audio (not a spectral core's mask), so ``output_bits`` apply."""
        rules = output_rules(self.output_bits, self.level_stage and audio_output)
        return QuantConfig(weight_bits=self.weight_bits, activation_bits=self.activation_bits,
                           calibration="minmax", overrides=precision_overrides(self.precision, rules))

    def train_config(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, grad_clip=self.grad_clip,
                           checkpoint_every=self.checkpoint_every, validate_every=self.validate_every,
                           seed=self.seed, lr_schedule=self.lr_schedule, log_every=10)


def prepare_qat_model(ctx: RecipeContext, config: QATConfig, stage: LevelStage | None = None,
                      split: SpectralSplit | None = None) -> QuantizedModel:
    """quantize() + min/max calibration (through the level stage, if any), which initialises the LSQ step sizes.

    With a spectral ``split`` (recipes/spectral.py) only its core is quantized, calibrated on STFT features."""
    qmodel = quantize(*spectral.to_quantize(ctx.float_model, example_input(ctx.train_set), split),
                      config.quant_config(audio_output=split is None and stage is not None))
    batches = list(calibration_batches(ctx.train_set, config.calib_batches, config.batch_size, config.seed))
    if split is None:  # input and output grids behind the stage, fixed (QAT does not learn them)
        pin_io_ranges(qmodel, stage, output_peaks(ctx.float_model, batches, stage) if stage else None)
    calibrate(qmodel, spectral.core_inputs(split, at_level(batches, stage) if stage else batches), "minmax",
              progress=ctx.progress)
    return qmodel


def level_setup(ctx: RecipeContext, config: QATConfig) -> tuple[RecipeContext, LevelStage | None]:
    """The context with the augmented training set, and the level stage fitted on its calibration batches."""
    ctx = dataclasses.replace(ctx, train_set=augmented(ctx.train_set, config, config.clip_aug))
    batches = calibration_batches(ctx.train_set, config.calib_batches, config.batch_size, config.seed)
    return ctx, fit_level_stage(batches, config.level_stage, ctx.float_model)


def quantizer_param_groups(qmodel: QuantizedModel, relative_lr: float, zero_point_lr: float) -> list[dict[str, Any]]:
    """Adam groups for the LSQ parameters: each step size with a learning rate
    relative to its own magnitude, all zero-points with one absolute rate."""
    groups: list[dict[str, Any]] = []
    zero_points = []
    for name, q in qmodel.quantizers().items():
        scale = getattr(q, "scale", None)
        if isinstance(scale, nn.Parameter) and scale.requires_grad:
            lr = relative_lr * float(scale.detach().abs().mean())
            groups.append({"params": [scale], "lr": lr, "name": f"{name}.scale"})
        zp = getattr(q, "zero_point", None)
        if isinstance(zp, nn.Parameter) and zp.requires_grad:
            zero_points.append(zp)
    if zero_points:
        groups.append({"params": zero_points, "lr": zero_point_lr, "name": "zero_points"})
    return groups


def qat_objective(teacher: nn.Module | None, train_set: Dataset, config: QATConfig) -> tuple[Dataset, Callable]:
    """(training set, loss): negative SI-SNR, plus distillation from ``teacher`` when ``config.distill`` > 0."""
    if config.distill <= 0:
        return train_set, neg_si_snr_loss
    if teacher is None:
        raise RecipeError("distillation needs the float model as the teacher")
    return TeacherTargets(train_set, teacher), distillation_loss(config.distill)


def teacher_copy(float_model: nn.Module, config: QATConfig) -> nn.Module | None:
    """A frozen copy of the float model, taken before quantization shares its parameters with QAT."""
    return copy.deepcopy(float_model) if config.distill > 0 else None  # TeacherTargets sets eval and freezes it


def run_qat(qmodel: QuantizedModel, ctx: RecipeContext, config: QATConfig,
            on_checkpoint: Callable[[int, nn.Module], None] | None = None,
            teacher: nn.Module | None = None, stage: LevelStage | None = None,
            spectral_stage: SpectralStage | None = None) -> QuantizedModel:
    """Retrain all weights and LSQ step sizes/zero-points with negative SI-SNR (and distillation).

    With a level stage the model trains behind it, as it will be deployed.
    """
    groups = quantizer_param_groups(qmodel, config.quantizer_lr, config.zero_point_lr)
    train_set, loss_fn = qat_objective(teacher, ctx.train_set, config)
    trained = spectral.deployed(qmodel, spectral_stage, stage)

    def checkpoint(step: int, _: nn.Module) -> None:
        if on_checkpoint is not None:
            on_checkpoint(step, qmodel)  # the quantized model is what a checkpoint holds

    train(trained, train_set, ctx.valid_set, loss_fn, config.train_config(), ctx.out_dir,
          resume=ctx.resume, param_groups=groups, on_checkpoint=checkpoint, progress=ctx.progress)
    if config.leaky_grid:
        snap_leaky_relu_grids(qmodel)
    return qmodel


class VanillaQAT(Recipe):
    """QAT of the whole model with LSQ (Esser et al. 2020), every tensor 8-bit."""

    name = "vanilla"
    Config = QATConfig

    def run(self, ctx: RecipeContext, on_checkpoint: Callable[[int, nn.Module], None] | None = None) -> nn.Module:
        teacher = teacher_copy(ctx.float_model, self.config)
        ctx, stage = level_setup(ctx, self.config)
        split = spectral.split_of(ctx.float_model, example_input(ctx.train_set), self.config.quant_config().substitutions)
        self.stages = stage_records(stage) + spectral.records(split)
        qmodel = prepare_qat_model(ctx, self.config, stage, split)
        return run_qat(qmodel, ctx, self.config, on_checkpoint, teacher, stage, split.stage if split else None)


__all__ = ["QATConfig", "VanillaQAT", "level_setup", "prepare_qat_model", "qat_objective", "run_qat", "teacher_copy"]
