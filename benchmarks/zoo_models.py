"""The zoo's user-style models (crn_gru, lstm_masker, dual_path): float, PTQ and QAT, deployed and timed.

    python -m benchmarks.zoo_models --out benchmarks/results/zoo [--models crn_gru lstm_masker dual_path]
        [--qat-steps 200] [--chunk-seconds 0.5] [--threads 1] [--work DIR]
    python -m benchmarks.zoo_models --out benchmarks/results/zoo --work DIR --time-only   # re-time DIR's files

For each model (its float checkpoint ``examples/checkpoints/NAME_demo.pt``, trained with the command in the
README's "Zoo" section):

1. ``compress ptq`` and ``compress qat --recipe vanilla`` with their defaults (QAT for ``--qat-steps``);
2. SI-SNR per input-SNR bucket on the demo test split for the float model, PTQ and QAT, each processed as
   deployed (``runtimes.load``: fixed chunks of ``--chunk-seconds`` with cross-fades);
3. the QAT model exported to both targets (``compress export``: conversion plus verification, timed), and
   each file's SI-SNR on the same chunks against the simulation's;
4. file size, BOPs and time per chunk of the int8 files against float files of the same network
   (``litert_torch.convert`` / ``torch.onnx.export`` of the float model; for a spectral model the network
   between its STFT and iSTFT, since the transforms run in numpy around either file and are not timed).

Writes ``zoo.json`` and ``zoo.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from compressor.fileio import write_text_atomic
from compressor.metrics import BUCKETS, si_snr_np, snr_bucket

MODELS = ("crn_gru", "lstm_masker", "dual_path")
CHECKPOINTS = Path("examples/checkpoints")
_FALLBACKS: list[str] = []  # files LiteRT ran without XNNPACK (it refused them)


def _cli(*args: Any) -> float:
    """Run ``compress ARGS`` in a child process; its wall time in seconds (raises on failure)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "compressor.cli.main", *map(str, args)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"compress {' '.join(map(str, args))} failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def _quality(path: Path, chunk_seconds: float, threads: int) -> dict[str, Any]:
    """SI-SNR (dB) per bucket of ``path`` processed as deployed on the demo test split, and its outputs."""
    import runtimes
    from compressor.cli.common import eval_set

    options = {"chunk_seconds": chunk_seconds} if path.suffix == ".pt" else {}
    runtime = runtimes.load(path, threads=threads, **options)
    dataset = eval_set("demo")
    scores: dict[str, list[float]] = {g: [] for g in ("all", *BUCKETS)}
    outputs = []
    for index in range(len(dataset)):
        item = dataset[index]
        mixture, clean = item["mixture"].numpy(), item["sources"].numpy().sum(axis=0)
        estimate = runtime.process(mixture).reshape(-1)
        outputs.append(estimate)
        score = float(si_snr_np(estimate, clean))
        scores["all"].append(score)
        scores[snr_bucket(float(si_snr_np(mixture, clean)))].append(score)
    return {"si_snr": {g: round(float(np.mean(v)), 3) if v else None for g, v in scores.items()},
            "outputs": outputs}


def _snr_db(reference: list[np.ndarray], estimate: list[np.ndarray]) -> float:
    signal = sum(float(np.sum(r.astype(np.float64) ** 2)) for r in reference)
    noise = sum(float(np.sum((r.astype(np.float64) - e) ** 2)) for r, e in zip(reference, estimate))
    return round(10 * np.log10(signal / noise), 2) if noise > 0 else float("inf")


def _float_network(name: str, chunk_samples: int):
    """(float module, its example input for one chunk): the model, or a spectral model's core."""
    import torch

    from compressor.checkpoint import load_model
    from compressor.recipes.spectral import split_of

    model = load_model(CHECKPOINTS / f"{name}_demo.pt").model.eval()
    example = torch.zeros(1, chunk_samples)
    split = split_of(model, torch.randn(2, chunk_samples) * 0.1, substitutions=())  # the layers as written
    if split is None:
        return model, example
    return split.core, split.features(torch.randn(1, chunk_samples) * 0.1)


def _time_per_chunk(path: Path, threads: int, runs: int = 30, warmup: int = 5) -> float:
    """Median ms of one invocation of the file on one chunk (random input of its own type)."""
    rng = np.random.default_rng(0)
    if path.suffix == ".tflite":
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        try:
            interpreter = Interpreter(model_path=str(path), num_threads=threads)
            interpreter.allocate_tensors()
        except RuntimeError:  # XNNPACK refuses some float graphs at prepare: the builtin kernels run them
            interpreter = Interpreter(model_path=str(path), num_threads=threads,
                                      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            interpreter.allocate_tensors()
            _FALLBACKS.append(path.name)
        detail = interpreter.get_input_details()[0]
        x = _random(detail["dtype"], detail["shape"], rng)

        def invoke() -> None:
            interpreter.set_tensor(detail["index"], x)
            interpreter.invoke()
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = threads, 1, 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        spec = session.get_inputs()[0]
        dtype = {"tensor(int8)": np.int8, "tensor(uint8)": np.uint8}.get(spec.type, np.float32)
        x = _random(dtype, spec.shape, rng)

        def invoke() -> None:
            session.run(None, {spec.name: x})
    from benchmarks.device_runner import time_runs

    return round(float(np.median(time_runs(invoke, runs, warmup))), 3)


def _random(dtype: Any, shape: Any, rng: np.random.Generator) -> np.ndarray:
    shape = [int(s) for s in shape]
    if np.dtype(dtype) in (np.int8, np.uint8):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max + 1, size=shape).astype(dtype)
    return (np.abs(rng.standard_normal(shape)) * 0.1).astype(np.float32)


def run_model(name: str, work: Path, qat_steps: int, chunk_seconds: float, threads: int) -> dict[str, Any]:
    from benchmarks.bops import model_bops
    from benchmarks.peers.float_files import float_onnx, float_tflite

    float_ckpt = CHECKPOINTS / f"{name}_demo.pt"
    ptq, qat = work / f"{name}_ptq.pt", work / f"{name}_qat.pt"
    row: dict[str, Any] = {"model": name, "chunk_seconds": chunk_seconds, "qat_steps": qat_steps}
    row["ptq_seconds"] = round(_cli("ptq", float_ckpt, "--data", "demo", "--threads", threads, "--out", ptq), 1)
    row["qat_seconds"] = round(_cli("qat", float_ckpt, "--recipe", "vanilla", "--steps", qat_steps, "--threads",
                                    threads, "--out", qat), 1)
    quality = {k: _quality(p, chunk_seconds, threads) for k, p in (("float", float_ckpt), ("ptq", ptq), ("qat", qat))}
    files: dict[str, Any] = {}
    for target in ("tflite", "onnx"):
        path = work / f"{name}_qat.{target}"
        seconds = _cli("export", qat, "--target", target, "--chunk-seconds", chunk_seconds, "--threads", threads,
                       "--report", work / f"{name}_{target}_report.json", "--out", path)
        report = json.loads((work / f"{name}_{target}_report.json").read_text())
        deployed = _quality(path, chunk_seconds, threads)
        files[target] = {
            "export_seconds": round(seconds, 1), "kib": round(path.stat().st_size / 1024, 1),
            "float_ops": report["ops"]["float_op_count"], "verification": report.get("verification"),
            "si_snr": deployed["si_snr"],
            "snr_vs_simulation_db": _snr_db(quality["qat"]["outputs"], deployed["outputs"]),
            "gbops": model_bops(path).get("gbops"),
            "ms_per_chunk": _time_per_chunk(path, threads),
        }
    chunk_samples = int(round(chunk_seconds * 16000))
    network, example = _float_network(name, chunk_samples)
    for target, build in (("tflite", float_tflite), ("onnx", float_onnx)):
        path = work / f"{name}_float.{target}"
        try:
            build(network, chunk_samples, path, example=example)
            files[f"float_{target}"] = {"kib": round(path.stat().st_size / 1024, 1),
                                        "ms_per_chunk": _time_per_chunk(path, threads),
                                        "xnnpack": path.name not in _FALLBACKS if target == "tflite" else None}
        except Exception as exc:  # a float converter that fails is a finding, not a crash
            files[f"float_{target}"] = {"error": str(exc).splitlines()[0][:300]}
    row["quality"] = {k: v["si_snr"] for k, v in quality.items()}
    row["files"] = files
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    groups = ("all", *BUCKETS)
    lines = ["# The zoo's user-style models: float, PTQ, QAT, deployed", "",
             "SI-SNR (dB) on the demo test split per input-SNR bucket, every model processed as deployed "
             "(fixed chunks with cross-fades). Files: the QAT model exported to each target.", "",
             "| model | chunk s | float | PTQ | QAT | QAT .tflite | QAT .onnx | .tflite / .onnx vs simulation (dB SNR) |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(q: dict[str, Any] | None) -> str:
        return " / ".join("–" if q is None or q.get(g) is None else f"{q[g]:.2f}" for g in groups)

    for r in rows:
        f = r["files"]
        lines.append(f"| {r['model']} | {r['chunk_seconds']:g} | {cell(r['quality']['float'])} | "
                     f"{cell(r['quality']['ptq'])} | {cell(r['quality']['qat'])} | {cell(f['tflite']['si_snr'])} | "
                     f"{cell(f['onnx']['si_snr'])} | {f['tflite']['snr_vs_simulation_db']} / "
                     f"{f['onnx']['snr_vs_simulation_db']} |")
    lines += ["", f"Each cell: {' / '.join(groups)}.", "",
              "| model | int8 .tflite KiB | float .tflite KiB | int8 .onnx KiB | float .onnx KiB | GBOPs int8 | "
              "LiteRT ms/chunk int8 / float (ratio) | ORT ms/chunk int8 / float (ratio) | export s tflite / onnx |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["files"]

        def timing(target: str) -> str:
            q, fl = f[target], f[f"float_{target}"]
            if "ms_per_chunk" not in fl:
                return f"{q['ms_per_chunk']} / failed: {fl.get('error', '?')}"
            note = " (float: builtin kernels, XNNPACK refused it)" if fl.get("xnnpack") is False else ""
            return f"{q['ms_per_chunk']} / {fl['ms_per_chunk']} ({q['ms_per_chunk'] / fl['ms_per_chunk']:.2f}x){note}"

        lines.append(f"| {r['model']} | {f['tflite']['kib']} | {f['float_tflite'].get('kib', '–')} | {f['onnx']['kib']} "
                     f"| {f['float_onnx'].get('kib', '–')} | {f['tflite']['gbops']} | {timing('tflite')} | "
                     f"{timing('onnx')} | {f['tflite']['export_seconds']} / {f['onnx']['export_seconds']} |")
    lines += ["", "Times: median of 30 invocations of one chunk, 1 thread, random input of the file's type; "
              "the spectral models' STFT/iSTFT (numpy, the same around either file) not included."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, help="where the checkpoints and files go (default: OUT/work)")
    parser.add_argument("--qat-steps", type=int, default=200)
    parser.add_argument("--chunk-seconds", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-only", action="store_true",
                        help="only measure again the size and time of the files a run left in --work (best run "
                             "on a quiet machine; e.g. files exported again by hand) and rewrite the tables")
    args = parser.parse_args(argv)
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    previous = args.out / "zoo.json"
    if args.time_only:
        rows = json.loads(previous.read_text())
        for row in rows:
            if row["model"] in args.models:
                for key, entry in row["files"].items():  # "tflite" -> NAME_qat.tflite, "float_onnx" -> NAME_float.onnx
                    kind, _, target = key.rpartition("_")
                    path = work / f"{row['model']}_{kind or 'qat'}.{target}"
                    if "ms_per_chunk" in entry and path.is_file():
                        entry["kib"] = round(path.stat().st_size / 1024, 1)
                        entry["ms_per_chunk"] = _time_per_chunk(path, args.threads)
        write_text_atomic(previous, json.dumps(rows, indent=2, default=str) + "\n")
        write_text_atomic(args.out / "zoo.md", markdown(rows))
        print((args.out / "zoo.md").read_text())
        return 0
    # rows of models not measured in this run are kept, so models can be measured one at a time
    rows = [r for r in (json.loads(previous.read_text()) if previous.is_file() else []) if r["model"] not in args.models]
    for name in args.models:
        rows.append(run_model(name, work, args.qat_steps, args.chunk_seconds, args.threads))
        print(json.dumps({k: v for k, v in rows[-1].items()}, default=str)[:2000], flush=True)
        rows.sort(key=lambda r: MODELS.index(r["model"]))
        write_text_atomic(previous, json.dumps(rows, indent=2, default=str) + "\n")
    write_text_atomic(args.out / "zoo.md", markdown(rows))
    print((args.out / "zoo.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
