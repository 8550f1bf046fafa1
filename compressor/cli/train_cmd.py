"""``compress train``: train a float model from the zoo (e.g. the shipped demo checkpoint)."""
from __future__ import annotations

from pathlib import Path

import click

from compressor.checkpoint import ArchSpec, save_float
from compressor.cli.common import data_option, handle_errors, parse_json_option, set_threads, setup_logging, training_sets
from compressor.losses import neg_si_snr_loss
from compressor.training import TrainConfig, distributed, train
from compressor.zoo import build_model, list_models


@click.command("train")
@click.option("--model", "model_name", default="conv_tasnet", show_default=True,
              help=f"Zoo model to build: {', '.join(list_models())}.")
@click.option("--config", "config_json", help="Model config as JSON (inline or a .json file); missing keys take defaults.")
@data_option()
@click.option("--valid-data", help="Validation dataset (default: the demo's valid split with --data demo).")
@click.option("--steps", default=2000, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", default=8, show_default=True, help="Items per batch (per process under torchrun).")
@click.option("--segment-seconds", default=2.0, show_default=True, help="Length of the training crops.")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--lr-schedule", type=click.Choice(["constant", "cosine"]), default="cosine", show_default=True)
@click.option("--grad-clip", default=5.0, show_default=True, help="Max gradient norm (0 = off).")
@click.option("--seed", default=0, show_default=True)
@click.option("--checkpoint-every", default=100, show_default=True, help="Steps between resumable state writes.")
@click.option("--validate-every", default=200, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Float checkpoint to write.")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where the resumable training state goes (default: OUT without suffix + '.run').")
@click.option("--resume", is_flag=True, help="Continue bit-for-bit from the state in --run-dir.")
@click.option("--threads", type=int, help="torch threads (default: all cores).")
@click.option("-v", "--verbose", is_flag=True)
@handle_errors
def train_cmd(model_name, config_json, data, strict_audio, valid_data, steps, batch_size, segment_seconds, lr, lr_schedule,
              grad_clip, seed, checkpoint_every, validate_every, out, run_dir, resume, threads, verbose):
    """Train a float zoo model with negative SI-SNR (PIT for several sources).

    Launch with torchrun for multi-process (DDP) training, e.g.
    `torchrun --nproc_per_node 2 $(which compress) train ...`.
    """
    setup_logging(verbose)
    set_threads(threads)
    model_config = parse_json_option(config_json, "--config")
    model = build_model(model_name, model_config)
    arch = ArchSpec(kind="zoo", name=model_name, config=model.config.to_dict())
    train_set, valid_set = training_sets(data, valid_data, segment_seconds, seed, strict_audio)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, grad_clip=grad_clip or None, seed=seed,
                         checkpoint_every=checkpoint_every, validate_every=validate_every, lr_schedule=lr_schedule)
    run_dir = run_dir or out.with_suffix(".run")
    info = {"train_config": config.to_dict(), "data": data}

    def on_checkpoint(step: int, trained) -> None:
        save_float(out, trained, arch, {**info, "step": step})

    result = train(model, train_set, valid_set, neg_si_snr_loss, config, run_dir, resume=resume,
                   on_checkpoint=on_checkpoint)
    if distributed.is_main_process():
        info.update(step=result.step, best_valid_loss=result.best_valid_loss, last_valid_loss=result.last_valid_loss)
        save_float(out, model, arch, info)
        click.echo(f"wrote {out} (step {result.step}, valid SI-SNR {-(result.last_valid_loss or 0):.2f} dB)")
