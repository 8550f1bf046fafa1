"""``compress demo``: float -> PTQ -> vanilla QAT -> FQSE on the embedded data, with a report."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from compressor.checkpoint import load_model, save_quantized
from compressor.data import open_dataset
from compressor.configs import JsonConfig
from compressor.errors import CheckpointError
from compressor.evaluation import evaluate
from compressor.fileio import shown_path, write_text_atomic
from compressor.recipes import RecipeContext, get_recipe
from compressor.recipes.fqse import FQSE
from compressor.reporting import markdown_table, model_entry

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "examples" / "checkpoints" / "conv_tasnet_demo.pt"


@dataclass(frozen=True)
class DemoConfig(JsonConfig):
    float_checkpoint: str = str(DEMO_CHECKPOINT)
    qat_steps: int = 300  # vanilla QAT
    fqse_steps: int = 150  # fewer: the demo must stay under 10 minutes on 2 cores
    qat_batch_size: int = 4
    segment_seconds: float = 2.0
    ptq_calibration: str = "mse"
    ptq_calib_batches: int = 16
    max_items: int | None = None
    seed: int = 0


def run_demo(out_dir: Path, config: DemoConfig, progress: bool = True, log=print) -> dict[str, Any]:
    """Run the demo; writes checkpoints, report.json and report.md under ``out_dir``."""
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(config.float_checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"demo float checkpoint not found: {checkpoint}")
    loaded = load_model(checkpoint)
    test_set = open_dataset("demo:test")
    train_set = open_dataset("demo:train", segment_seconds=config.segment_seconds, seed=config.seed)
    valid_set = open_dataset("demo:valid")
    timings: dict[str, float] = {}

    def timed_eval(name: str, model: torch.nn.Module) -> dict[str, Any]:
        t0 = time.perf_counter()
        summary = evaluate(model, test_set, progress=progress, desc=f"eval {name}", max_items=config.max_items)
        timings[f"eval_{name}"] = time.perf_counter() - t0
        return summary

    log("1/4 float model")
    float_summary = timed_eval("float", loaded.model)
    entries = [model_entry("float", float_summary, float_summary, checkpoint=shown_path(checkpoint))]

    log("2/4 PTQ (8-bit weights and activations, input and output included)")
    t0 = time.perf_counter()
    ptq = get_recipe("ptq").from_options({"calibration": config.ptq_calibration, "seed": config.seed,
                                          "calib_batches": config.ptq_calib_batches})
    ptq_model = ptq.run(RecipeContext(loaded.model, train_set, None, out_dir / "ptq.run", progress=progress))
    timings["ptq"] = time.perf_counter() - t0
    save_quantized(out_dir / "ptq.pt", ptq_model, loaded.arch, ptq.describe(), {"float_model": str(checkpoint)})
    entries.append(model_entry("ptq", timed_eval("ptq", ptq_model), float_summary,
                               checkpoint=shown_path(out_dir / "ptq.pt"), recipe=ptq.describe()))

    log(f"3/4 vanilla QAT ({config.qat_steps} steps)")
    t0 = time.perf_counter()
    vanilla = get_recipe("vanilla").from_options({"steps": config.qat_steps, "batch_size": config.qat_batch_size,
                                                 "seed": config.seed, "checkpoint_every": config.qat_steps})
    float_again = load_model(checkpoint).model  # QAT trains in place; keep the float model intact
    qat_model = vanilla.run(RecipeContext(float_again, train_set, valid_set, out_dir / "vanilla.run", progress=progress))
    timings["vanilla_qat"] = time.perf_counter() - t0
    save_quantized(out_dir / "vanilla.pt", qat_model, loaded.arch, vanilla.describe(), {"float_model": str(checkpoint)})
    entries.append(model_entry("vanilla", timed_eval("vanilla", qat_model), float_summary,
                               checkpoint=shown_path(out_dir / "vanilla.pt"), recipe=vanilla.describe()))

    log(f"4/4 FQSE QAT ({config.fqse_steps} steps: SNR augmentation, input splitter, residual quantization block)")
    t0 = time.perf_counter()
    fqse = get_recipe("fqse").from_options({"steps": config.fqse_steps, "batch_size": config.qat_batch_size,
                                           "seed": config.seed, "checkpoint_every": config.fqse_steps})
    fqse_core = fqse.run(RecipeContext(load_model(checkpoint).model, train_set, valid_set, out_dir / "fqse.run",
                                       progress=progress))
    timings["fqse_qat"] = time.perf_counter() - t0
    save_quantized(out_dir / "fqse.pt", fqse_core, fqse.saved_arch(loaded.arch), fqse.describe(),
                   {"float_model": str(checkpoint)})
    fqse_model = FQSE.inference_model(fqse_core, fqse.describe())  # splitter -> int8 graph -> combiner
    entries.append(model_entry("fqse", timed_eval("fqse", fqse_model), float_summary,
                               checkpoint=shown_path(out_dir / "fqse.pt"), recipe=fqse.describe()))

    timings["total"] = time.perf_counter() - started
    report = {
        "models": entries,
        "data": "demo:test",
        "config": {**config.to_dict(), "float_checkpoint": shown_path(config.float_checkpoint)},
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
    }
    from compressor.cli.common import write_json

    write_json(out_dir / "report.json", report)
    md = (f"# compress demo\n\nConv-TasNet on the demo test split ({entries[0]['quality']['count']['all']} clips), "
          "every tensor 8-bit in the quantized rows (simulated; fqse: int8 input split into two channels and "
          "int8 output plus its int8 residual).\n\n" + markdown_table(entries)
          + f"\nTotal time {timings['total']:.0f} s on {report['machine']['threads']} threads.\n")
    write_text_atomic(out_dir / "report.md", md)
    return report
