"""Our int8 files beside the peers' quantizers and the float model: same model, same data, same machine.

    python -m benchmarks.compare [--quantized demo_out] [--rounds 2] [--threads N]

Builds (once, into --work) the float model as ONNX and TFLite, onnxruntime's
``quantize_static`` (QDQ, per-channel; MinMax, Entropy and Percentile
calibration) on the float ONNX, litert-torch's PT2E int8 TFLite, and our
PTQ, vanilla QAT and FQSE checkpoints (``compress demo``'s, in --quantized)
exported to both targets with ``compress export``. Then benches all of them
with ``compress bench``'s code (quality on the demo test split against the
float PyTorch model; latency at 1 thread and all threads, each model in its
own process), times every model --rounds times in all (alternating the
order) to show how well latency medians repeat, and writes
benchmarks/RESULTS.md, benchmarks/results/compare.json and the figures in
benchmarks/results/plots/.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from tqdm import tqdm

from benchmarks.bench import BenchConfig, bench
from benchmarks.latency import measure_latency
from benchmarks.peers.build import Method, build_all
from benchmarks.plots import write_plots
from benchmarks.report import document, fmt, models_table, quality_table
from compressor.fileio import write_text_atomic

HERE = Path(__file__).resolve().parent
FQSE_TFLITE, FLOAT_EAGER, FLOAT_LITERT = "ours FQSE LiteRT", "float PyTorch eager", "float LiteRT"
SI_SNR_GOAL_DB = 0.1


def repeat_latency(entries: list[dict], methods: list[Method], config: BenchConfig, rounds: int) -> None:
    """Time every model ``rounds - 1`` more times (reversed order on even rounds); adds ``latency_rounds``."""
    for e in entries:
        e["latency_rounds"] = [e["latency"]]
    for r in range(1, rounds):
        order = list(zip(entries, methods))
        if r % 2:
            order.reverse()  # so that drift in machine load does not always favour the same models
        for entry, method in tqdm(order, desc=f"latency round {r + 1}", leave=False):
            again = measure_latency(method.path, config.threads, config.runs, config.warmup, config.chunk_seconds)
            entry["latency_rounds"].append(again["by_threads"])


def add_previous_rounds(entries: list[dict], previous: Path) -> int:
    """Put an earlier run's latency rounds before this run's (matched by model name); returns their count."""
    earlier = {m["name"]: m.get("latency_rounds", []) for m in json.loads(previous.read_text())["models"]}
    counts = set()
    for e in entries:
        if e["name"] not in earlier:
            raise SystemExit(f"{previous}: no model named {e['name']!r}; was it a run of the same comparison?")
        counts.add(len(earlier[e["name"]]))
        e["latency_rounds"] = earlier[e["name"]] + e["latency_rounds"]
    return counts.pop() if len(counts) == 1 else 0


def round_medians(entry: dict, threads: int, length: str = "chunk") -> list[float]:
    return [next(t[length]["median"] for t in rnd if t["threads"] == threads) for rnd in entry["latency_rounds"]]


def spread_table(entries: list[dict], threads: list[int]) -> str:
    head = ["model"] + [f"{t} thr: chunk medians by round (ms)" for t in threads] + [f"{t} thr spread" for t in threads]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        meds = [round_medians(e, t) for t in threads]
        spread = [f"{(max(m) - min(m)) / statistics.mean(m) * 100:.1f} %" for m in meds]
        lines.append("| " + " | ".join([e["name"], *(" / ".join(f"{v:.1f}" for v in m) for m in meds), *spread])
                     + " |")
    return "\n".join(lines) + "\n"


def goals(entries: list[dict], threads: list[int]) -> tuple[list[dict], str]:
    """The issue's targets for the deployed FQSE int8 TFLite, each with its measured value."""
    by_name = {e["name"]: e for e in entries}
    fqse, eager, litert = by_name[FQSE_TFLITE], by_name[FLOAT_EAGER], by_name[FLOAT_LITERT]
    checks = []
    for t in threads:
        mine = statistics.median(round_medians(fqse, t))
        for other, limit, aim in ((eager, 0.5, None), (litert, 1.0, 0.7)):
            theirs = statistics.median(round_medians(other, t))
            checks.append({"goal": f"median latency / {other['name']} at {t} thread(s) <= {limit}"
                                   + (f" (aim {aim})" if aim else ""),
                           "value": round(mine / theirs, 3), "limit": limit, "met": mine / theirs <= limit,
                           "detail": f"{mine:.1f} ms vs {theirs:.1f} ms per chunk"})
    float_tflite = by_name[FLOAT_LITERT]["size_bytes"]
    ratio = fqse["size_bytes"] / float_tflite
    checks.append({"goal": "file size / float TFLite <= 0.3", "value": round(ratio, 3), "limit": 0.3,
                   "met": ratio <= 0.3, "detail": f"{fqse['size_bytes']} vs {float_tflite} bytes"})
    d = fqse.get("delta_vs_float")
    if d:
        for bucket in ("all", "low", "mid", "high"):
            delta = d["si_snr"][bucket]
            checks.append({"goal": f"SI-SNR {bucket} within {SI_SNR_GOAL_DB} dB of float", "value": delta,
                           "limit": -SI_SNR_GOAL_DB, "met": delta is not None and delta >= -SI_SNR_GOAL_DB,
                           "detail": f"{fmt(fqse['quality']['si_snr'][bucket])} vs "
                                     f"{fmt(eager['quality']['si_snr'][bucket])} dB"})
    lines = ["| goal | measured | met | detail |", "|---|---|---|---|"]
    lines += [f"| {c['goal']} | {fmt(c['value'], 3, signed='SI-SNR' in c['goal'])} | "
              f"{'yes' if c['met'] else '**no**'} | {c['detail']} |" for c in checks]
    return checks, "\n".join(lines) + "\n"


def results_markdown(doc: dict, entries: list[dict], methods: list[Method], checks_md: str, threads: list[int],
                     build_times: dict, seconds: float, previous_rounds: int = 0) -> str:
    m, c = doc["machine"], doc["config"]
    how = "\n".join(f"- **{meth.name}**: {meth.how}" + (f" (built in {build_times[meth.path.name]} s)"
                                                        if meth.path.name in build_times else "")
                    for meth in methods)
    return "\n".join([
        "# Benchmarks: our int8 files beside the peers' quantizers", "",
        f"Machine: {m['cpu']}, {m['cores_usable']} usable cores (shared with other jobs; every timing ran while "
        f"holding a lock that kept other heavy jobs of this project off the CPU); {m['os']}; Python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".", "",
        f"Command: `python -m benchmarks.compare` ({seconds / 60:.1f} min). Same float model "
        "(examples/checkpoints/conv_tasnet_demo.pt), same calibration audio (our PTQ's draw: 64 chunks of the demo "
        f"train split), same test data ({c['data']} test split, {entries[0]['quality']['count']['all']} clips); every "
        f"model runs in chunks of {c['chunk_seconds']:g} s with 25% cross-faded overlap (files have that input length "
        "built in; 1 s of audio is padded to one chunk). Latency: "
        f"{c['warmup']} warm-up runs, then {c['runs']} timed runs per figure, median / p90 in ms, each model in its "
        f"own process (its peak resident memory is that process's VmHWM). Latency rounds: "
        f"{len(entries[0]['latency_rounds']) - previous_rounds} in this run"
        + (f", after {previous_rounds} of an earlier run of the same command on the same files (`--previous`); "
           "the goals use the median over all rounds" if previous_rounds else "") + ".",
        "", "## How each file was made", "", how, "",
        "## Goals for the deployed FQSE int8 TFLite", "", checks_md,
        "## Size, BOPs, latency, memory (first round)", "", models_table(entries),
        "## Quality against the clean references, and the gap to float (PyTorch eager)", "", quality_table(entries),
        "## Repeatability: latency medians of each round"
        + (" (the earlier run's rounds first)" if previous_rounds else ""), "",
        "Spread: (largest - smallest) / mean of the round medians.", "", spread_table(entries, threads),
        "## Figures", "",
        "![SI-SNR vs input SNR](results/plots/si_snr_vs_input_snr.png)", "",
        "![latency](results/plots/latency.png) ![size](results/plots/size.png)", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--float-checkpoint", type=Path, default=Path("examples/checkpoints/conv_tasnet_demo.pt"))
    parser.add_argument("--quantized", type=Path, default=Path("demo_out"),
                        help="folder with compress demo's ptq.pt, vanilla.pt, fqse.pt")
    parser.add_argument("--work", type=Path, default=Path("runs/compare"), help="built files and caches")
    parser.add_argument("--out", type=Path, default=HERE, help="RESULTS.md goes here, JSON and plots in results/")
    parser.add_argument("--data", default="demo")
    parser.add_argument("--threads", type=int, help="'all threads' (default: usable cores)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="latency rounds per model")
    parser.add_argument("--chunk-seconds", type=float, default=2.0)
    parser.add_argument("--max-items", type=int, help="quality on the first N clips (quick looks)")
    parser.add_argument("--rebuild", action="store_true", help="rebuild every file")
    parser.add_argument("--previous", type=Path,
                        help="compare.json of an earlier run of the same files: its latency rounds come first in the "
                             "repeatability table and count in the goals (shows run-to-run spread)")
    args = parser.parse_args()
    start = time.perf_counter()
    methods = build_all(args.work, args.float_checkpoint, args.quantized, args.chunk_seconds, args.rebuild)
    # the simulation of the FQSE checkpoint: separates what training costs from what deployment costs
    methods.append(Method("ours FQSE simulation", args.quantized / "fqse.pt", "ours",
                          "the FQSE checkpoint run as its PyTorch simulation"))
    config = BenchConfig(data=args.data, reference=str(args.float_checkpoint), threads=args.threads, runs=args.runs,
                         warmup=args.warmup, chunk_seconds=args.chunk_seconds, max_items=args.max_items,
                         cache_dir=str(args.work / "cache"))
    entries = bench([m.path for m in methods], config, names=[m.name for m in methods])
    repeat_latency(entries, methods, config, args.rounds)
    previous_rounds = add_previous_rounds(entries, args.previous) if args.previous else 0
    threads = sorted({t["threads"] for t in entries[0]["latency"]})
    checks, checks_md = goals(entries, threads)
    doc = document(entries, config.to_dict())
    doc["goals"] = checks
    for model, method in zip(doc["models"], methods):
        model["family"], model["how"] = method.family, method.how
    seconds = time.perf_counter() - start
    doc["seconds"] = round(seconds, 1)
    doc["rounds_from_previous_run"] = previous_rounds
    results = args.out / "results"
    write_text_atomic(results / "compare.json", json.dumps(doc, indent=2) + "\n")
    write_plots(entries, results / "plots")
    build_file = args.work / "build.json"
    build_times = json.loads(build_file.read_text()) if build_file.is_file() else {}
    text = results_markdown(doc, entries, methods, checks_md, threads, build_times, seconds, previous_rounds)
    write_text_atomic(args.out / "RESULTS.md", text)
    print(text)


if __name__ == "__main__":
    main()
