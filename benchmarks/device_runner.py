"""Benchmark a model file with nothing but numpy and onnxruntime or ai-edge-litert.

    python runner.py MODEL [--clips DIR] [--threads 1,4] [--runs 20] [--json OUT.json]

This file is copied unchanged into the folders ``compress bench --pack``
writes, so it imports nothing from this project (torch would double the
memory it measures, and a phone has none). On the desk the benchmarks run
it in a child process per model for the same reason: the peak resident
memory it reports is that of a process holding one model and its runtime.

What it runs: an ``.onnx`` in onnxruntime (CPU) or a ``.tflite`` in LiteRT
(XNNPACK). A file written by ``compress export`` carries its int8 boundary,
its level stage and its FQSE splitter/combiner in embedded metadata (key
``audio_compress``); any other file (float, or another toolkit's) must take
float audio of shape (1, T) and return (1, T) or (1, sources, T).

It prints one JSON object: latency (median and p90 of ``--runs`` timed runs
after warm-up, at each thread count, for 1 s of audio and for one chunk),
real-time factor, peak resident memory and, with ``--clips``, SI-SNR by
input-SNR bucket on the clips there (the packed ones). Metrics that need
other packages (SDR, STOI, PESQ, DNSMOS) are null here; ``compress bench``
on a desk machine computes them.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import wave
from pathlib import Path

import numpy as np

METADATA_KEY = "audio_compress"
DEFAULT_SAMPLE_RATE = 16000
OVERLAP = 0.25  # of a chunk, as runtimes.base.DEFAULT_OVERLAP


class ModelFileError(Exception):
    """The model file cannot be opened or does not look like an audio model."""


def _sibling(name: str, repo_path: str, what: str):
    """A numpy-only module of ours: beside this file in a pack, else in the repository.

    Loaded by file path so that importing it does not import our packages
    (and with them torch).
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / name, here.parent / repo_path):
        if candidate.is_file():
            spec = importlib.util.spec_from_file_location(f"_packed_{candidate.stem}", candidate)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module  # dataclasses look their module up while it executes
            spec.loader.exec_module(module)
            return module
    raise ModelFileError(f"the runner needs {name} ({what}) beside it")


def _io_codec():
    return _sibling("io_codec.py", "compressor/fqse/io_codec.py", "FQSE's splitter/combiner")


def _level():
    return _sibling("level.py", "compressor/stages/level.py", "the level stage")


def _ort_cpu():
    return _sibling("ort_cpu.py", "exporters/ort_cpu.py", "the check of onnxruntime's int8 kernels on this CPU")


class _Boundary:
    """One tensor at the file's boundary and how its values map to real ones.

    int8/uint8: quantized with (scale, zero_point), from our embedded metadata
    or, in another toolkit's file, from the tensor's own quantization
    parameters; float32: passed through.
    """

    def __init__(self, dtype: str, shape: list[int], scale: float = 1.0, zero_point: int = 0) -> None:
        self.dtype = np.dtype(dtype)
        self.shape = [int(s) for s in shape]
        self.scale = np.float32(scale)
        self.zero_point = int(zero_point)
        self.integer = self.dtype.kind in "iu"
        if self.integer:
            info = np.iinfo(self.dtype)
            self.qmin, self.qmax = info.min, info.max
            if not self.scale > 0:
                raise ModelFileError(f"an {self.dtype} boundary tensor needs a positive scale, got {scale}")
        elif self.dtype != np.float32:
            raise ModelFileError(f"boundary tensors must be int8, uint8, int16 or float32, got {self.dtype}")

    @classmethod
    def from_metadata(cls, spec: dict) -> "_Boundary":
        return cls(spec["dtype"], spec["shape"], spec["scale"], spec["zero_point"])

    def quantize(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32).reshape(self.shape)
        if not self.integer:
            return x
        # the same rounding as the simulation: round-half-even(x * (1/s)) + zp
        codes = np.rint(x * (np.float32(1.0) / self.scale)) + self.zero_point
        return np.clip(codes, self.qmin, self.qmax).astype(self.dtype)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        if not self.integer:
            return np.asarray(codes, np.float32)
        return (codes.astype(np.float32) - np.float32(self.zero_point)) * self.scale


class FileModel:
    """An .onnx or .tflite file: ``run_chunk`` maps one chunk of float audio to (sources, chunk)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"{self.path}: no such file")
        suffix = self.path.suffix.lower()
        if suffix == ".onnx":
            self._open_onnx(threads)
        elif suffix == ".tflite":
            self._open_tflite(threads)
        else:
            raise ModelFileError(f"{self.path}: not an .onnx or .tflite file")
        self.metadata = json.loads(self._metadata_text) if self._metadata_text else None
        self.codec = None
        self.level = None  # the file's level stage (gain before the model, undone after)
        if self.metadata and self.metadata.get("stages"):
            if any(isinstance(st, dict) and st.get("kind") == "stft_mask" for st in self.metadata["stages"]):
                raise ModelFileError(f"{self.path}: a spectral model (STFT/iSTFT stage around the file); this device "
                                     "runner does not apply that stage yet: run it with `compress run` / runtimes.load")
            self._level = _level()
            try:
                self.level = self._level.level_stage_of(self.metadata["stages"])
            except ValueError as exc:
                raise ModelFileError(f"{self.path}: {exc}") from exc
        if self.metadata:
            self.inputs = [_Boundary.from_metadata(s) for s in self.metadata["inputs"]]
            self.outputs = [_Boundary.from_metadata(s) for s in self.metadata["outputs"]]
            self.chunk_samples = int(self.metadata["chunk_samples"])
            self.sample_rate = int(self.metadata["sample_rate"])
            self.num_sources = int(self.metadata["num_sources"])
            if self.metadata.get("splitter") or self.metadata.get("combiner"):
                self.codec = _io_codec()
        else:
            self.inputs, self.outputs = self._file_inputs, self._file_outputs
            shape = self.inputs[0].shape
            if len(shape) != 2 or shape[0] != 1 or shape[1] < 1:
                raise ModelFileError(f"{self.path}: without {METADATA_KEY!r} metadata the model must take audio of "
                                     f"shape (1, T); its input is {shape}")
            self.chunk_samples = shape[1]
            self.sample_rate = DEFAULT_SAMPLE_RATE
            out = self.outputs[0].shape
            self.num_sources = out[1] if len(out) == 3 else 1

    # -- opening -------------------------------------------------------------------------------
    def _open_onnx(self, threads: int | None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types
            raise ModelFileError(f"{self.path}: onnxruntime cannot load it ({exc})") from exc
        self._metadata_text = self._session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        if self._metadata_text and not _ort_cpu().int8_kernels_exact(
                json.loads(self._metadata_text).get("model", {}).get("quant_config")):
            # this CPU's int8 MAC kernels would saturate on the file's 8-bit weights: run its QDQ ops in float,
            # exact, as the product's runtimes do here (exporters/sessions.py)
            options.add_session_config_entry("session.disable_quant_qdq", "1")
            self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        first = self._session.get_inputs()[0]
        self._input_name = first.name
        for tensor in [first, *self._session.get_outputs()]:
            if tensor.type != "tensor(float)" or not all(isinstance(d, int) for d in tensor.shape):
                if not self._metadata_text:  # an ONNX tensor carries no qparams of its own
                    raise ModelFileError(f"{self.path}: without {METADATA_KEY!r} metadata every input and output "
                                         f"must be float32 of fixed shape; {tensor.name} is {tensor.type} {tensor.shape}")
        if not self._metadata_text:
            self._file_inputs = [_Boundary("float32", first.shape)]
            self._file_outputs = [_Boundary("float32", o.shape) for o in self._session.get_outputs()]
        self.runtime = f"onnxruntime {ort.__version__}"

        def invoke(x: np.ndarray) -> list[np.ndarray]:
            return list(self._session.run(None, {self._input_name: x}))

        self._invoke = invoke

    def _open_tflite(self, threads: int | None) -> None:
        from ai_edge_litert import schema_py_generated as schema
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        content = self.path.read_bytes()
        try:
            model = schema.Model.GetRootAs(content, 0)
            self._metadata_text = None
            for i in range(model.MetadataLength()):
                entry = model.Metadata(i)
                if entry.Name().decode() == METADATA_KEY:
                    self._metadata_text = bytes(model.Buffers(entry.Buffer()).DataAsNumpy()).decode()
            interpreter = Interpreter(model_content=content, num_threads=threads,
                                      experimental_op_resolver_type=OpResolverType.AUTO)
            interpreter.allocate_tensors()
        except Exception as exc:  # a truncated flatbuffer fails inside the generated parser
            raise ModelFileError(f"{self.path}: LiteRT cannot load it ({exc})") from exc
        detail = interpreter.get_input_details()[0]
        self._file_inputs = [_Boundary(np.dtype(detail["dtype"]).name, detail["shape"], *detail["quantization"])]
        self._file_outputs = [_Boundary(np.dtype(d["dtype"]).name, d["shape"], *d["quantization"])
                              for d in interpreter.get_output_details()]
        input_index = detail["index"]
        output_indices = [d["index"] for d in interpreter.get_output_details()]
        self.runtime = "litert (XNNPACK)"

        def invoke(x: np.ndarray) -> list[np.ndarray]:
            interpreter.set_tensor(input_index, x)
            interpreter.invoke()
            return [interpreter.get_tensor(i).copy() for i in output_indices]

        self._invoke = invoke

    # -- running -------------------------------------------------------------------------------
    def run_chunk(self, audio: np.ndarray) -> np.ndarray:
        """``chunk_samples`` float samples -> (sources, chunk_samples) float32.

        With FQSE metadata the splitter makes the two int8 input channels and
        the combiner adds the RQB's residual output back. A level stage goes around all of it.
        """
        if self.level is None:
            return self._run_boundary(audio)
        return self._level.run_with_gain(self.level, self._run_boundary, np.asarray(audio, np.float32))

    def _run_boundary(self, audio: np.ndarray) -> np.ndarray:
        x = np.asarray(audio, np.float32).reshape(1, -1)
        if self.metadata and self.metadata.get("splitter"):
            x = self.codec.split(x, np, axis=-2)
        values = [spec.dequantize(o) for spec, o in zip(self.outputs, self._invoke(self.inputs[0].quantize(x)))]
        if self.metadata and self.metadata.get("combiner"):
            out = self.codec.combine(values[0], values[1], self.metadata["combiner"]["gain"])
        else:
            out = values[0]
        return out.reshape(self.num_sources, -1)

    def process(self, audio: np.ndarray) -> np.ndarray:
        """Float audio of any length -> (sources, time), in cross-faded chunks."""
        return chunked(self.run_chunk, np.asarray(audio, np.float32), self.chunk_samples, self.num_sources)


def chunked(run_chunk, x: np.ndarray, chunk: int, sources: int, overlap: float = OVERLAP) -> np.ndarray:
    """``runtimes/chunking.py``'s overlap-add (copied beside the runner in a pack)."""
    chunking = _sibling("chunking.py", "runtimes/chunking.py", "the cross-faded chunking")
    return chunking.overlap_add(run_chunk, x, chunk, overlap, sources)


# -- measuring --------------------------------------------------------------------------------------
def time_runs(func, runs: int, warmup: int) -> list[float]:
    """Wall time of ``func()`` in ms, ``runs`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        func()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        func()
        times.append((time.perf_counter() - start) * 1000.0)
    return times


def percentile_summary(times_ms: list[float], audio_seconds: float) -> dict:
    median = float(np.median(times_ms))
    return {"median": round(median, 3), "p90": round(float(np.percentile(times_ms, 90)), 3),
            "runs": len(times_ms), "audio_seconds": audio_seconds,
            "rtf": round(median / 1000.0 / audio_seconds, 5)}


def latency(model, sample_rate: int, chunk_samples: int, runs: int, warmup: int) -> dict:
    """1 s of audio through ``process`` (a fixed-chunk file pads it to one chunk) and one chunk."""
    rng = np.random.default_rng(0)
    one_second = (rng.standard_normal(sample_rate) * 0.05).astype(np.float32)
    chunk = (rng.standard_normal(chunk_samples) * 0.05).astype(np.float32)
    return {
        "1s": percentile_summary(time_runs(lambda: model.process(one_second), runs, warmup), 1.0),
        "chunk": percentile_summary(time_runs(lambda: model.run_chunk(chunk), runs, warmup),
                                    chunk_samples / sample_rate),
    }


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return round(peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0, 1)
    except ImportError:
        return None


# -- quality on packed clips ------------------------------------------------------------------------
def si_snr(estimate: np.ndarray, reference: np.ndarray) -> float:
    """Scale-invariant SNR in dB (zero-mean signals, float64)."""
    est = estimate.astype(np.float64) - estimate.mean()
    ref = reference.astype(np.float64) - reference.mean()
    target = (est @ ref) / max(ref @ ref, 1e-12) * ref
    noise = est - target
    return float(10 * np.log10(max(target @ target, 1e-12) / max(noise @ noise, 1e-12)))


def read_wav(path: Path) -> np.ndarray:
    """16-bit mono WAV -> float32 in [-1, 1)."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2 or f.getnchannels() != 1:
            raise ModelFileError(f"{path}: expected 16-bit mono WAV")
        return np.frombuffer(f.readframes(f.getnframes()), "<i2").astype(np.float32) / 32768.0


def bucket(snr_db: float) -> str:
    """Input-SNR bucket, as compressor.metrics.snr_bucket: low < 2 dB <= mid <= 10 dB < high."""
    return "low" if snr_db < 2.0 else ("mid" if snr_db <= 10.0 else "high")


def clip_quality(model: FileModel, clips_dir: Path) -> dict:
    """SI-SNR over the clips listed in ``clips.json`` (noisy, clean, input SNR), per bucket."""
    listing = json.loads((clips_dir / "clips.json").read_text())
    scores: dict[str, list[float]] = {"all": [], "low": [], "mid": [], "high": []}
    for clip in listing:
        noisy, clean = read_wav(clips_dir / clip["noisy"]), read_wav(clips_dir / clip["clean"])
        value = si_snr(model.process(noisy)[0], clean)
        scores["all"].append(value)
        scores[bucket(clip["snr_db"])].append(value)
    means = {k: (round(float(np.mean(v)), 4) if v else None) for k, v in scores.items()}
    return {"si_snr": means, "sdr": None, "stoi": None, "pesq": None, "dnsmos_ovrl": None,
            "count": {k: len(v) for k, v in scores.items()}}


def benchmark(path: Path, threads: list[int], runs: int, warmup: int, clips: Path | None) -> dict:
    """The JSON object of one model file (``compress bench``'s keys; desk-only metrics null)."""
    per_threads = []
    model = None
    for n in threads:
        model = FileModel(path, threads=n)
        per_threads.append({"threads": n, **latency(model, model.sample_rate, model.chunk_samples, runs, warmup)})
    chunk = per_threads[-1]["chunk"]
    info_file = path.parent / "model_info.json"  # written by --pack: figures that need desk packages
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    entry = {
        "name": path.name, "format": path.suffix.lstrip(".").lower(), "runtime": model.runtime,
        "size_bytes": path.stat().st_size, "param_count_by_bits": info.get("param_count_by_bits"),
        "bops": info.get("bops"),
        "latency_ms": {"median": chunk["median"], "p90": chunk["p90"], "threads": threads[-1],
                       "input_seconds": chunk["audio_seconds"]},
        "rtf": chunk["rtf"], "latency": per_threads,
        "quality": clip_quality(model, clips) if clips else None,
        "delta_vs_float": None,
        "machine": {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
    }
    entry["peak_rss_mb"] = peak_rss_mb()
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, help=".onnx or .tflite file")
    parser.add_argument("--clips", type=Path, help="folder with clips.json and WAVs (a packed folder's clips/)")
    parser.add_argument("--threads", default=f"1,{os.cpu_count() or 1}",
                        help="comma-separated thread counts (default: 1 and all cores)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per measurement (at least 20 advised)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    parser.add_argument("--json", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    threads = sorted({int(t) for t in str(args.threads).split(",") if t.strip()})
    try:
        entry = benchmark(args.model, threads, args.runs, args.warmup, args.clips)
    except (ModelFileError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    text = json.dumps([entry], indent=2)
    if args.json:
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(text + "\n")
        os.replace(tmp, args.json)  # atomic: never a half-written result
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
