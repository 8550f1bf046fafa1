"""Build every file of the comparison once, into a work folder (kept between runs).

A file is rebuilt only when missing (or with ``rebuild=True``): conversions
take from seconds to minutes each, and a second comparison run should time
the same files, not new ones.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from benchmarks.latency import BenchmarkError
from compressor.fileio import write_text_atomic

OUR_RECIPES = ("ptq", "vanilla", "fqse")


@dataclass(frozen=True)
class Method:
    """One row of the comparison: a model file and who made it."""

    name: str
    path: Path
    family: str  # "float" | "peer" | "ours"
    how: str


def _export_ours(checkpoint: Path, target: str, path: Path, chunk_seconds: float) -> None:
    """``compress export``, the command a user runs, with its default verification (every op within 1 LSB)."""
    report = path.with_name(path.name + ".export.json")
    command = [sys.executable, "-m", "compressor.cli.main", "export", str(checkpoint), "--target", target,
               "--out", str(path), "--chunk-seconds", str(chunk_seconds), "--report", str(report)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise BenchmarkError(f"compress export {checkpoint} --target {target} failed:\n{done.stderr[-2000:]}")


def build_all(work: Path, float_checkpoint: Path, quantized_dir: Path, chunk_seconds: float = 2.0,
              rebuild: bool = False) -> list[Method]:
    """The float baselines, the peers' files and ours, built where missing; their build times in build.json."""
    from benchmarks.peers.calibration import calibration_chunks
    from benchmarks.peers.float_files import float_onnx, float_tflite
    from benchmarks.peers.litert_pt2e import litert_pt2e_int8
    from benchmarks.peers.ort_static import CALIBRATION_METHODS, ort_quantize_static
    from compressor.checkpoint import load_model

    work.mkdir(parents=True, exist_ok=True)
    missing = [r for r in OUR_RECIPES if not (quantized_dir / f"{r}.pt").is_file()]
    if missing:
        raise BenchmarkError(f"{quantized_dir}: no {', '.join(r + '.pt' for r in missing)}; run `compress demo "
                             f"--out {quantized_dir}` first (or compress ptq / compress qat)")
    chunk = int(round(chunk_seconds * 16000))
    cache: dict[str, object] = {}

    def model():
        if "model" not in cache:
            cache["model"] = load_model(float_checkpoint).model.eval()
        return cache["model"]

    def chunks():
        if "chunks" not in cache:
            cache["chunks"] = calibration_chunks(chunk_seconds)
        return cache["chunks"]

    float_onnx_path = work / "float.onnx"
    steps: list[tuple[Method, Callable[[], object]]] = [
        (Method("float PyTorch eager", float_checkpoint, "float", "the float checkpoint, torch eager"), lambda: None),
        (Method("float ORT", float_onnx_path, "float", "torch.onnx.export, opset 17"),
         lambda: float_onnx(model(), chunk, float_onnx_path)),
        (Method("float LiteRT", work / "float.tflite", "float", "litert_torch.convert"),
         lambda: float_tflite(model(), chunk, work / "float.tflite")),
    ]
    for method in CALIBRATION_METHODS:
        path = work / f"ort_static_{method.lower()}.onnx"
        steps.append((Method(f"ORT quantize_static {method}", path, "peer",
                             f"onnxruntime quantize_static, QDQ, per-channel, {method} calibration"),
                      lambda path=path, method=method: ort_quantize_static(float_onnx_path, chunks(), method, path)))
    steps.append((Method("litert-torch PT2E int8", work / "litert_pt2e.tflite", "peer",
                         "litert-torch PT2EQuantizer, symmetric per-channel static int8"),
                  lambda: litert_pt2e_int8(model(), chunks(), work / "litert_pt2e.tflite")))
    labels = {"ptq": "PTQ", "vanilla": "vanilla QAT", "fqse": "FQSE"}
    for recipe in OUR_RECIPES:
        for target, runtime in (("tflite", "LiteRT"), ("onnx", "ORT")):
            path = work / f"ours_{recipe}.{target}"
            steps.append((Method(f"ours {labels[recipe]} {runtime}", path, "ours",
                                 f"compress export {quantized_dir / (recipe + '.pt')} --target {target}"),
                          lambda recipe=recipe, target=target, path=path:
                          _export_ours(quantized_dir / f"{recipe}.pt", target, path, chunk_seconds)))
    times_file = work / "build.json"
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    for method, build in tqdm(steps, desc="build files", leave=False):
        if method.path.is_file() and (not rebuild or method.path == float_checkpoint):
            continue
        start = time.perf_counter()
        build()
        times[method.path.name] = round(time.perf_counter() - start, 1)
        write_text_atomic(times_file, json.dumps(times, indent=2) + "\n")
    return [_with_verification(m) for m, _ in steps]


def _with_verification(method: Method) -> Method:
    """Our files: add what ``compress export`` measured against the simulation to ``how``."""
    report = method.path.with_name(method.path.name + ".export.json")
    if method.family != "ours" or not report.is_file():
        return method
    data = json.loads(report.read_text())
    v = data.get("verification") or {}
    if not v:
        return method
    return Method(method.name, method.path, method.family,
                  f"{method.how}; verified on {v['runtime']}: max {v['max_lsb']} LSB, mean {v['mean_lsb']} LSB "
                  f"vs the simulation over {v['inputs']} chunks; float compute ops {data['ops']['float_op_count']}")
