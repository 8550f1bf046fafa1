"""Time of one QAT training step against one float training step.

Same model (the demo Conv-TasNet), same batch, same optimizer (Adam), same
loss (negative SI-SNR); the QAT model has a quantizer on every weight and
activation. Goal: QAT step <= 2.5 x float step.

    python -m benchmarks.qat_step_time [--steps 12] [--batch-size 4] [--seconds 2]

Writes benchmarks/results/qat_step_time.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from compressor.checkpoint import load_model
from compressor.demo import DEMO_CHECKPOINT
from compressor.losses import neg_si_snr_loss
from compressor.quant import calibrate, quantize

RESULTS = Path(__file__).resolve().parent / "results"


def _step_times(model: torch.nn.Module, batch: torch.Tensor, target: torch.Tensor, steps: int) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    times = []
    for _ in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        loss = neg_si_snr_loss(model(batch), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times[2:]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = load_model(DEMO_CHECKPOINT).model
    batch = torch.randn(args.batch_size, int(args.seconds * 16000)) * 0.1
    target = batch.unsqueeze(1) * 0.5
    qmodel = quantize(load_model(DEMO_CHECKPOINT).model, batch[:2])
    calibrate(qmodel, [batch])
    # interleave the two so machine load affects both alike
    float_times, qat_times = [], []
    for _ in range(3):
        float_times += _step_times(model, batch, target, args.steps // 3)
        qat_times += _step_times(qmodel, batch, target, args.steps // 3)
    f, q = statistics.median(float_times), statistics.median(qat_times)
    result = {
        "float_step_s": round(f, 4), "qat_step_s": round(q, 4), "ratio": round(q / f, 3), "goal_ratio": 2.5,
        "float_step_times_s": [round(t, 4) for t in float_times], "qat_step_times_s": [round(t, 4) for t in qat_times],
        "batch": [args.batch_size, int(args.seconds * 16000)], "threads": args.threads,
        "machine": {"cpu": cpu_name(), "cores": torch.get_num_threads(), "torch": torch.__version__},
        "model": str(DEMO_CHECKPOINT.name),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qat_step_time.json").write_text(json.dumps(result, indent=2) + "\n")
    md = (f"# QAT step time vs float step time\n\nDemo Conv-TasNet, batch {args.batch_size} x {args.seconds:g} s, "
          f"Adam, negative SI-SNR, {args.threads} threads on {result['machine']['cpu']}, torch {torch.__version__}.\n\n"
          f"| step | median s |\n|---|---|\n| float | {f:.3f} |\n| QAT (every tensor 8-bit) | {q:.3f} |\n\n"
          f"Ratio QAT / float: **{q / f:.2f}** (goal <= 2.5), medians of {len(float_times)} steps each.\n")
    (RESULTS / "qat_step_time.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
