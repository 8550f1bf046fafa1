"""``compress qat`` and ``compress ptq``: make a quantized checkpoint from a float model."""
from __future__ import annotations

from pathlib import Path

import click
import torch

from compressor.checkpoint import arch_of, save_quantized
from compressor.cli.common import (
    data_option, handle_errors, load, model_options, set_threads, setup_logging, training_sets,
)
from compressor.errors import RecipeError
from compressor.recipes import RecipeContext, get_recipe, list_recipes
from compressor.training import distributed


def _level_options(no_level_stage, level_aug, tilt_aug, output_bits, clip_aug) -> dict:
    """The level switches as recipe options; None where not given (recipes without them refuse set ones)."""
    return dict(level_stage=False if no_level_stage else None, level_aug_db=level_aug, tilt_aug=tilt_aug,
                output_bits=int(output_bits) if output_bits else None, clip_aug=clip_aug)


def _run(model, model_factory, trust_pickle, recipe_name, options, data, strict_audio, valid_data,
         segment_seconds, out, run_dir, resume, seed):
    recipe_cls = get_recipe(recipe_name)
    recipe = recipe_cls.from_options({**options, "seed": seed})
    loaded = load(model, model_factory, trust_pickle)
    if loaded.quantized:
        raise RecipeError(f"{model} is already quantized (recipe {loaded.recipe and loaded.recipe.get('name')}); "
                          "give the float model")
    train_set, valid_set = training_sets(data, valid_data, segment_seconds, seed, strict_audio)
    arch = arch_of(loaded)
    run_dir = run_dir or out.with_suffix(".run")
    ctx = RecipeContext(loaded.model, train_set, valid_set, run_dir, resume=resume,
                        progress=distributed.is_main_process())
    info = {"float_model": str(model), "data": data, "segment_seconds": segment_seconds}

    def on_checkpoint(step: int, qmodel: torch.nn.Module) -> None:
        save_quantized(out, qmodel, recipe.saved_arch(arch), recipe.describe(), {**info, "step": step})

    if recipe_name == "ptq":
        qmodel = recipe.run(ctx)
    else:
        qmodel = recipe.run(ctx, on_checkpoint=on_checkpoint)
    if distributed.is_main_process():
        save_quantized(out, qmodel, recipe.saved_arch(arch), recipe.describe(), info)
        s = qmodel.summary
        click.echo(f"wrote {out}: recipe {recipe_name}, {s['activation_quantizers']} activation, "
                   f"{s['weight_quantizers']} weight, {s['bias_quantizers']} bias and "
                   f"{s['constant_quantizers']} constant quantizers")


def _common(func):
    for opt in reversed([
        data_option(help_extra="Training data; calibration data for ptq."),
        click.option("--valid-data", help="Validation dataset (default: the demo's valid split with --data demo)."),
        click.option("--segment-seconds", default=2.0, show_default=True, help="Length of training/calibration crops."),
        click.option("--weight-bits", type=click.IntRange(2, 8), help="Weight bits (default 8; 7 for onnxruntime on x86 without VNNI)."),
        click.option("--activation-bits", type=click.IntRange(2, 8), help="Activation bits, input and output included (default 8)."),
        click.option("--precision", "precision", multiple=True, metavar="MODULE[:OP]=SPEC",
                     help="Per-layer precision rule, repeatable, later ones win: SPEC is a comma list of a16/a8 "
                          "(activation bits), w2..w8 (weight bits), per-tensor/per-channel. MODULE is a pattern on "
                          "the module path, OP on the op name: 'separator.blocks.7.*=a16', '*:mean=a16'; "
                          "'#NAME=a16' names one tensor as `compress eval --sensitivity` lists it (and says where "
                          "16 bits pay). By default ('*:variance=a32') a norm's averaged squares get no grid: the "
                          "files sum them exactly in an int8 matmul's int32 accumulator; '*:variance=a8' or "
                          "'=a16' gives them one again (README 'Per-layer precision')."),
        click.option("--seed", default=0, show_default=True),
        click.option("--no-level-stage", is_flag=True,
                     help="No level stage: the file runs at the input's own level (default: every chunk is scaled "
                          "to the calibration level before the int8 model and back after it, so loud audio does "
                          "not clip and quiet audio keeps its resolution; README 'Level')."),
        click.option("--level-aug", type=click.FloatRange(0, 60), metavar="DB",
                     help="Random gain of +-DB on each training/calibration item (default 0)."),
        click.option("--tilt-aug/--no-tilt-aug", default=None,
                     help="Random spectral tilt (white to brown and blue) of each training/calibration item's noise "
                          "(default: on)."),
        click.option("--clip-aug", type=click.FloatRange(0, 1), metavar="SHARE",
                     help="Share of the training/calibration items driven 0-12 dB past full scale and hard-clipped, "
                          "as an ADC clips loud speech (ptq: 0.25 behind a level stage, 0 without one; qat: 0; "
                          "README 'Level' for what it costs and buys)."),
        click.option("--output-bits", type=click.Choice(["8", "16"]),
                     help="ptq/vanilla: bits of the model's output behind the level stage (default 16: the file "
                          "gives int16 audio; its grid spans the stage's target peak, and 8 bits leave a quiet "
                          "estimate few codes; README 'Level'). 8: int8 audio out, as before."),
        click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Quantized checkpoint to write."),
        click.option("--threads", type=int, help="torch threads (default: all cores)."),
        click.option("-v", "--verbose", is_flag=True),
    ]):
        func = opt(func)
    return model_options(func)


@click.command("qat")
@_common
@click.option("--recipe", "recipe_name", default="vanilla", show_default=True,
              help=f"Recipe: {', '.join(list_recipes())}.")
@click.option("--steps", type=int, help="QAT optimizer steps (vanilla default 200).")
@click.option("--batch-size", type=int, help="Items per batch (default 4).")
@click.option("--lr", type=float, help="Learning rate of the weights (default 3e-5).")
@click.option("--quantizer-lr", type=float, help="Learning rate of each LSQ step size, relative to the step size (default 5e-3).")
@click.option("--checkpoint-every", type=int, help="Steps between resumable state writes (default 50).")
@click.option("--distill", type=click.FloatRange(0, 1), metavar="WEIGHT",
              help="vanilla/fqse: weight of distillation from the float model (negative SI-SNR to its output "
                   "on the same mixture) against the task loss; 0 = off (default).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the resumable training state goes (default: OUT without suffix + '.run').")
@click.option("--resume", is_flag=True, help="Continue bit-for-bit from the state in --run-dir.")
@click.option("--no-snr-aug", is_flag=True, help="fqse: no SNR augmentation.")
@click.option("--snr-range", type=float, nargs=2, metavar="LOW HIGH",
              help="fqse: SNR augmentation range in dB (default -6 18).")
@click.option("--no-splitter", is_flag=True, help="fqse: no input splitter (8-bit input).")
@click.option("--no-rqb", is_flag=True, help="fqse: no residual quantization block (8-bit output).")
@click.option("--input-precision", type=click.Choice(["8bit", "split", "16bit"]),
              help="fqse: model input as one int8 tensor, split into two int8 channels (default), or 16-bit unquantized.")
@click.option("--output-precision", type=click.Choice(["8bit", "rqb", "16bit"]),
              help="fqse: model output as one int8 tensor, int8 plus the RQB's int8 residual (default), or 16-bit unquantized.")
@click.option("--splitter-init", type=click.Choice(["preserve", "paper"]),
              help="fqse: second encoder channel keeps the float function (default) or is Gaussian (the paper's).")
@click.option("--split-encoder", type=click.Choice(["two_convs", "one_conv"]),
              help="fqse: the grown encoder as one conv per byte, each with its own weight scales (default), "
                   "or one two-channel conv (the paper's; its low-byte weights round to 0 at int8).")
@click.option("--tight-split-range", is_flag=True, default=None,
              help="fqse: clip the high-byte encoder conv's range at -max(low byte) before QAT (exact under the "
                   "encoder's ReLU; measured within noise of the default min/max range).")
@click.option("--learned-output-range", is_flag=True, default=None,
              help="fqse: calibrate, then learn, the coarse output's grid instead of fixing it at the level stage's "
                   "target peak (better on the demo split, clips on loud or flat-topped audio: README 'Level').")
@click.option("--rqb-init", type=click.Choice(["pinv", "fit", "paper"]),
              help="fqse: RQB encoder from the decoder's pseudo-inverse, that fitted on data, or the model's encoder (the paper's).")
@click.option("--epochs", type=int, help="bam: training epochs from scratch (default 6).")
@click.option("--beta", type=float, help="bam: SuperSpike surrogate steepness (default 5).")
@click.option("--binary-weights", is_flag=True, default=None, help="bam: conv weights binary too (sign times a scale).")
@handle_errors
def qat_cmd(model, model_factory, trust_pickle, data, strict_audio, valid_data, segment_seconds, weight_bits, activation_bits,
            precision, seed, no_level_stage, level_aug, tilt_aug, clip_aug, output_bits, out, threads, verbose, recipe_name, steps, batch_size, lr, quantizer_lr, checkpoint_every,
            distill, run_dir, resume, no_snr_aug, snr_range, no_splitter, no_rqb, input_precision, output_precision,
            splitter_init, split_encoder, tight_split_range, learned_output_range, rqb_init, epochs, beta,
            binary_weights):
    """Quantization-aware training of MODEL into a fully quantized model.

    Every weight and every activation, input and output included, is
    quantized (int8 by default) the way the TFLite/ONNX int8 runtimes compute.
    MODEL is our float checkpoint, a .pt2 program, or a state_dict with
    --model-factory. Launch with torchrun for multi-process (DDP) training.
    """
    setup_logging(verbose)
    set_threads(threads)
    options = dict(weight_bits=weight_bits, activation_bits=activation_bits, precision=precision or None, steps=steps, batch_size=batch_size,
                   lr=lr, quantizer_lr=quantizer_lr, checkpoint_every=checkpoint_every, distill=distill,
                   epochs=epochs, beta=beta, binary_weights=binary_weights or None)
    options.update(_level_options(no_level_stage, level_aug, tilt_aug, output_bits, clip_aug))
    options.update(_fqse_options(no_snr_aug, snr_range, no_splitter, no_rqb, input_precision, output_precision,
                                 splitter_init, rqb_init, split_encoder, tight_split_range, learned_output_range))
    _run(model, model_factory, trust_pickle, recipe_name, options, data, strict_audio, valid_data,
         segment_seconds, out, run_dir, resume, seed)


def _fqse_options(no_snr_aug, snr_range, no_splitter, no_rqb, input_precision, output_precision,
                  splitter_init, rqb_init, split_encoder, tight_split_range, learned_output_range=None) -> dict:
    """The fqse switches as recipe options; None where not given (other recipes refuse set ones)."""
    if no_splitter and input_precision not in (None, "8bit"):
        raise RecipeError(f"--no-splitter contradicts --input-precision {input_precision}")
    if no_rqb and output_precision not in (None, "8bit"):
        raise RecipeError(f"--no-rqb contradicts --output-precision {output_precision}")
    return dict(
        snr_aug=False if no_snr_aug else None,
        snr_low_db=snr_range[0] if snr_range else None,
        snr_high_db=snr_range[1] if snr_range else None,
        input_precision="8bit" if no_splitter else input_precision,
        output_precision="8bit" if no_rqb else output_precision,
        splitter_init=splitter_init,
        split_encoder=split_encoder,
        tight_split_range=tight_split_range,
        pin_output_range=False if learned_output_range else None,
        rqb_init=rqb_init,
    )


@click.command("ptq")
@_common
@click.option("--calibration", type=click.Choice(["minmax", "mse"]), default="mse", show_default=True,
              help="Range per tensor: EMA of min/max, or the MSE-optimal clipping.")
@click.option("--calib-batches", default=16, show_default=True, help="Calibration batches.")
@click.option("--batch-size", default=4, show_default=True)
@handle_errors
def ptq_cmd(model, model_factory, trust_pickle, data, strict_audio, valid_data, segment_seconds, weight_bits, activation_bits,
            precision, seed, no_level_stage, level_aug, tilt_aug, clip_aug, output_bits, out, threads, verbose, calibration, calib_batches, batch_size):
    """Post-training quantization of MODEL: calibrate ranges on data, no retraining."""
    setup_logging(verbose)
    set_threads(threads)
    options = dict(weight_bits=weight_bits, activation_bits=activation_bits, calibration=calibration,
                   calib_batches=calib_batches, batch_size=batch_size, precision=precision or None)
    options.update(_level_options(no_level_stage, level_aug, tilt_aug, output_bits, clip_aug))
    _run(model, model_factory, trust_pickle, "ptq", options, data, strict_audio, valid_data,
         segment_seconds, out, None, False, seed)
