"""What every audio recipe does about input level: augmentation, and the level stage it fits.

The level stage (compressor/stages/level.py) is fitted here: its target is
the median peak of the calibration items, the level the float model was
trained and the quantizers are calibrated at. From then on calibration and
QAT see each item through the stage, as the deployed file will, and the
checkpoint's recipe record carries the stage (``stages``) to the exporters.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch.utils.data import Dataset

from compressor.data.augment import ClipAugmented, LevelAugmented, TiltAugmented
from compressor.errors import RecipeError
from compressor.module_mode import set_training
from compressor.quant.precision import OUTPUT_ROLE, PrecisionOverride
from compressor.stages.level import LevelStage, level_stage_of
from compressor.stages.level_model import target_peak_of

log = logging.getLogger(__name__)


#: PTQ's share of ADC-clipped calibration items behind a level stage. Paired with the default (0) over four
#: calibration seeds (benchmarks/results/level/clip_aug/seeds_*.md, simulation, -10 and -30 dBFS): -10 dBFS -0.38 ->
#: -0.09 dB and brown noise -0.88 -> -0.34 against float on average, better in brown noise for every seed, at
#: -0.06 dB on the demo split (-0.16 -> -0.22).
PTQ_CLIP_AUG = 0.25


def clip_share(clip_aug: float | None, stage: LevelStage | None, default: float) -> float:
    """The share of items to hard-clip: the user's (``clip_aug``), else ``default`` behind a level stage and 0
    without one (a file at the input's own level would get ranges for full-scale audio it never sees)."""
    if clip_aug is not None:
        return float(clip_aug)
    return default if stage is not None else 0.0


def augmented(train_set: Dataset, cfg: Any, clip_aug: float = 0.0) -> Dataset:
    """``train_set`` with the config's level (``level_aug_db``: +-dB) and tilt (``tilt_aug``) augmentation, and
    ``clip_aug`` (the share of items hard-clipped like an ADC), outermost."""
    if cfg.level_aug_db < 0:
        raise RecipeError(f"level_aug_db must be >= 0 (a +- range in dB), got {cfg.level_aug_db}")
    if cfg.tilt_aug:
        train_set = TiltAugmented(train_set, seed=cfg.seed)
    if cfg.level_aug_db > 0:
        train_set = LevelAugmented(train_set, (-cfg.level_aug_db, cfg.level_aug_db), seed=cfg.seed)
    return clip_augmented(train_set, clip_aug, cfg.seed)


def clip_augmented(train_set: Dataset, share: float, seed: int) -> Dataset:
    return ClipAugmented(train_set, share, seed=seed) if share > 0 else train_set


#: Below this SNR of f(g x)/g against f(x) (g = 1/4 and 4) the float model is not scale-equivariant
#: and a level stage would change what it computes. The demo Conv-TasNet measures 85.5 dB; a small
#: user-written masker trained with (mean-free) SI-SNR, with a bias on its output layer, measured
#: -9.4 dB: its DC offset (half its peak) became steps between chunks, -4.6 dB against float.
EQUIVARIANCE_DB = 30.0
PROBE_GAINS = (0.25, 4.0)
#: An output whose float peak behind the stage stays below this fraction of the target (-12 dB) keeps a
#: calibrated grid: pinned to +-target it would use a few codes (an untrained model's output sits 27-35 dB
#: below its input; asteroid's models with random weights, benchmarks/third_party_models.py).
PINNED_OUTPUT_MIN_RATIO = 0.25


@torch.no_grad()
def equivariance_db(model: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    """The worst, over the probe gains, of the SNR (dB) of f(g x)/g against f(x) on ``batches``."""
    set_training(model, False)
    references = [model(x) for x in batches]
    signal = sum(float(r.double().pow(2).sum()) for r in references)
    worst = math.inf
    for g in PROBE_GAINS:
        error = sum(float((model(x * g) / g - r).double().pow(2).sum()) for x, r in zip(batches, references))
        worst = min(worst, 10 * math.log10(max(signal, 1e-30) / max(error, 1e-30)))
    return worst


def fit_level_stage(batches: Any, enabled: bool, float_model: torch.nn.Module | None = None) -> LevelStage | None:
    """The stage for a model calibrated on ``batches`` (None when the recipe runs without one).

    With ``float_model``, a model that is not scale-equivariant gets no stage, and a warning says why.
    """
    if not enabled:
        return None
    batches = list(batches)
    if float_model is not None:
        measured = equivariance_db(float_model, batches[:4])
        if measured < EQUIVARIANCE_DB:
            log.warning("no level stage: the float model is not scale-equivariant (f(g x)/g against f(x) for "
                        "g = 1/4 and 4: %.1f dB, below %g dB; e.g. a bias in its output layer), so scaling each "
                        "chunk would change what it computes; the file runs at the input's own level (make its "
                        "ranges wider with --level-aug)", measured, EQUIVARIANCE_DB)
            return None
    try:
        return LevelStage(target_peak=target_peak_of(batches))
    except ValueError as exc:
        raise RecipeError(f"level stage: {exc}") from exc


def input_range_rule(qmodel: Any, stage: LevelStage) -> PrecisionOverride:
    """The precision rule that fixes the model input's grid behind ``stage`` (see ``pin_io_ranges``)."""
    from compressor.fqse.io_config import io_quantizers

    inputs, _ = io_quantizers(qmodel)
    return _peak_grid_rule(qmodel, inputs[0], stage)


def output_range_rules(qmodel: Any, stage: LevelStage, output_peaks: list[float] | None = None
                       ) -> list[PrecisionOverride]:
    """The precision rules that give each model output the input's grid behind ``stage`` (see ``pin_io_ranges``);
    with ``output_peaks`` (the float model's, behind the stage), not to an output far quieter than the target."""
    from compressor.fqse.io_config import io_quantizers

    _, outputs = io_quantizers(qmodel)
    rules = []
    for i, name in enumerate(outputs):
        peak = output_peaks[i] if output_peaks is not None and i < len(output_peaks) else None
        if peak is not None and peak < PINNED_OUTPUT_MIN_RATIO * stage.target_peak:
            log.info("output %d peaks at %.1f dB below the level stage's target: its grid is calibrated, not pinned "
                     "to +-target", i, 20 * math.log10(stage.target_peak / max(peak, 1e-30)))
            continue
        rules.append(_peak_grid_rule(qmodel, name, stage))
    return rules


@torch.no_grad()
def output_peaks(float_model: torch.nn.Module, batches: list[torch.Tensor], stage: LevelStage) -> list[float]:
    """The median, over items, of each output's peak when ``float_model`` runs behind ``stage``."""
    set_training(float_model, False)
    peaks: list[list[torch.Tensor]] = []
    for batch in batches[:4]:
        out = float_model(batch * stage.gain(batch))
        outs = out if isinstance(out, (tuple, list)) else [out]
        for i, o in enumerate(o for o in outs if isinstance(o, torch.Tensor)):
            if len(peaks) <= i:
                peaks.append([])
            peaks[i].append(o.detach().abs().reshape(o.shape[0], -1).amax(dim=1) if o.dim() > 1 else o.abs().max()[None])
    return [float(torch.cat(p).median()) for p in peaks]


OUTPUT_BITS = (8, 16)


def check_output_bits(bits: int) -> None:
    if bits not in OUTPUT_BITS:
        raise RecipeError(f"output_bits must be one of {OUTPUT_BITS}, got {bits!r}")


def output_rules(bits: int, level_stage: bool) -> tuple[PrecisionOverride, ...]:
    """The recipe's precision rule for the model's outputs: ``bits`` wide behind a level stage.

    Behind the stage an output's grid spans the stage's target peak (``pin_io_ranges``), the peak of the
    mixture; an estimate far below it (speech in brown noise, any quiet source) gets few of 8 bits' codes, and
    that step was the largest single share of the int8 files' loss against float. At 16 bits the step is 256x
    finer and nothing else in the file changes: the last op runs 16x8 (TFLite) or before an int16
    QuantizeLinear (ONNX), the file gives int16 audio, and its latency was unchanged within noise
    (benchmarks/results/level/int16_output/). Without a stage the output keeps the activation bits.
    """
    check_output_bits(bits)
    return (PrecisionOverride(op=OUTPUT_ROLE, activation_bits=bits),) if level_stage and bits != 8 else ()


def _peak_grid_rule(qmodel: Any, name: str, stage: LevelStage) -> PrecisionOverride:
    quantizer = qmodel.quantizers()[name]
    return PrecisionOverride(tensor=name, scale=stage.target_peak / (quantizer.qmax - 1), zero_point=0)


def pin_io_ranges(qmodel: Any, stage: LevelStage | None, output_peaks: list[float] | None = None) -> None:
    """Behind the stage no chunk peaks above ``target_peak``: the input grid covers exactly +-target_peak,
    and so does each output's, in PTQ and in QAT (not learned).

    Scale target/126 with zero-point 0: the peak lands on code +-126, nothing
    clips, and no code is spent on values the stage never lets through (a
    calibrated range clips the top samples or wastes codes). One code is kept
    free at each end so that "codes at the int8 limits" counts real clipping.

    An enhancer's or separator's output stays within its input's range, but
    not within the range calibration saw: on loud speech hard-clipped by the
    ADC (the robustness set's -10 dBFS items) the stage brings a block of low
    crest factor to the target peak, and a calibrated output grid (MSE or
    learned, about 0.06) clipped 0.34 % of the output codes there. QAT used
    to learn the input grid from this start: it narrowed it, and the same
    flat-topped blocks clipped 1.9 % of the input codes at -10 dBFS; held
    fixed, vanilla QAT read +0.01 dB against float on the robustness set
    (learned: +0.08), -0.22 at -10 dBFS (-0.28), brown noise -0.42 (-0.75),
    the demo split +0.03 (+0.04), and no input or output code at the limits
    anywhere (benchmarks/results/level/exact_variance/).

    An output that stays far below the input (``output_peaks``, the float
    model's behind the stage, under ``PINNED_OUTPUT_MIN_RATIO`` x target)
    keeps a calibrated grid instead.

    The grids are fixed-qparams precision rules (``#<quantizer>``, added to
    the model's QuantConfig and so saved with it); call this before
    ``calibrate``, which then leaves them alone.
    """
    if stage is None:
        return
    qmodel.add_overrides([input_range_rule(qmodel, stage), *output_range_rules(qmodel, stage, output_peaks)])


def stage_records(stage: LevelStage | None) -> list[dict[str, Any]]:
    return [stage.to_dict()] if stage is not None else []


def recorded_stage(recipe_info: dict[str, Any] | None) -> LevelStage | None:
    """The level stage a checkpoint's recipe record declares, or None (checkpoints before it: None)."""
    try:
        return level_stage_of((recipe_info or {}).get("stages"))
    except ValueError as exc:
        raise RecipeError(f"the checkpoint's recipe record: {exc}") from exc


__all__ = ["EQUIVARIANCE_DB", "OUTPUT_BITS", "PTQ_CLIP_AUG", "augmented", "clip_augmented", "clip_share", "check_output_bits", "output_rules", "equivariance_db", "fit_level_stage", "input_range_rule",
           "output_peaks", "output_range_rules", "pin_io_ranges", "recorded_stage", "stage_records"]
