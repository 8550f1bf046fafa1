"""``compress bench --pack DIR MODEL``: a folder that benchmarks MODEL on a device with Python.

The folder holds the model file, ``runner.py`` (``benchmarks/device_runner.py``:
numpy plus onnxruntime or ai-edge-litert, nothing else), ``io_codec.py``
(the FQSE splitter/combiner), ``level.py`` (the level stage),
``chunking.py`` (all numpy only) and ``ort_cpu.py`` (whether onnxruntime's int8
kernels are exact on the device's CPU; standard library), a few test clips as 16-bit WAVs
with their input SNRs, and ``model_info.json`` (size by bit width and BOPs,
computed here since they do not depend on the device). On the device::

    pip install numpy ai-edge-litert      # or onnxruntime for an .onnx
    python runner.py MODEL --clips clips --json result.json

prints the JSON ``compress bench`` writes for one model (latency, RTF, peak
memory, SI-SNR on the packed clips; metrics that need desk packages null).
"""
from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np

from benchmarks import device_runner
from benchmarks.bops import model_bops
from benchmarks.latency import BenchmarkError
from benchmarks.size import model_size
from compressor.fileio import atomic_path, write_text_atomic
from compressor.metrics import BUCKETS, snr_bucket

RUNNER = Path(device_runner.__file__)
IO_CODEC = Path(__file__).resolve().parent.parent / "compressor" / "fqse" / "io_codec.py"
CHUNKING = Path(__file__).resolve().parent.parent / "runtimes" / "chunking.py"
LEVEL = Path(__file__).resolve().parent.parent / "compressor" / "stages" / "level.py"
ORT_CPU = Path(__file__).resolve().parent.parent / "exporters" / "ort_cpu.py"


def write_wav(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    """16-bit mono WAV (what the runner's stdlib reader takes), written atomically."""
    pcm = np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype("<i2")
    with atomic_path(path) as tmp:
        with wave.open(str(tmp), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(sample_rate)
            f.writeframes(pcm.tobytes())


def pick_clips(dataset, count: int) -> list[int]:
    """``count`` clip indices spread over the input-SNR buckets (round-robin low, mid, high)."""
    by_bucket: dict[str, list[int]] = {b: [] for b in BUCKETS}
    for i in range(len(dataset)):
        by_bucket[snr_bucket(float(dataset[i]["snr_db"]))].append(i)
    picked: list[int] = []
    while len(picked) < min(count, len(dataset)):
        for bucket in BUCKETS:
            if by_bucket[bucket] and len(picked) < count:
                picked.append(by_bucket[bucket].pop(0))
    return sorted(picked)


def pack(model: str | Path, folder: str | Path, data: str = "demo", clips: int = 6) -> Path:
    """Write the device benchmark folder for ``model`` (an .onnx or .tflite file); returns the folder."""
    from compressor.cli.common import eval_set

    model, folder = Path(model), Path(folder)
    if model.suffix.lower() not in (".onnx", ".tflite"):
        raise BenchmarkError(f"{model}: --pack takes a deployed .onnx or .tflite file (export a checkpoint first)")
    if not model.is_file():
        raise BenchmarkError(f"{model}: no such model file")
    try:
        probe = device_runner.FileModel(model, threads=1)  # a file the runner cannot run is refused before writing
    except device_runner.ModelFileError as exc:  # the runner stays free of our imports, so its error is its own
        raise BenchmarkError(str(exc)) from exc
    if folder.exists() and any(folder.iterdir()):
        raise BenchmarkError(f"{folder}: exists and is not empty; give a new folder")
    (folder / "clips").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, folder / model.name)
    shutil.copyfile(RUNNER, folder / "runner.py")
    shutil.copyfile(IO_CODEC, folder / "io_codec.py")
    shutil.copyfile(CHUNKING, folder / "chunking.py")
    shutil.copyfile(LEVEL, folder / "level.py")
    shutil.copyfile(ORT_CPU, folder / "ort_cpu.py")
    dataset = eval_set(data)
    listing = []
    for index in pick_clips(dataset, clips):
        item = dataset[index]
        name = str(item["id"])
        write_wav(folder / "clips" / f"{name}_noisy.wav", item["mixture"].numpy(), probe.sample_rate)
        write_wav(folder / "clips" / f"{name}_clean.wav", item["sources"].numpy().reshape(-1, item["mixture"].shape[-1])[0],
                  probe.sample_rate)
        listing.append({"id": name, "noisy": f"{name}_noisy.wav", "clean": f"{name}_clean.wav",
                        "snr_db": round(float(item["snr_db"]), 3)})
    write_text_atomic(folder / "clips" / "clips.json", json.dumps(listing, indent=2) + "\n")
    info = {**model_size(model), "bops": model_bops(model)}
    write_text_atomic(folder / "model_info.json", json.dumps(info, indent=2) + "\n")
    runtime = "onnxruntime" if model.suffix.lower() == ".onnx" else "ai-edge-litert"
    write_text_atomic(folder / "README.txt", (
        f"Benchmark of {model.name} on this device.\n\n"
        f"  pip install numpy {runtime}\n"
        f"  python runner.py {model.name} --clips clips --json result.json\n\n"
        "Prints latency (median/p90 of 20 runs after warm-up, 1 thread and all cores), real-time factor,\n"
        "peak memory and SI-SNR on the clips here, as JSON (the keys of `compress bench`).\n"))
    return folder
