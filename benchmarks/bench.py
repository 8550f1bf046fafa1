"""``bench()``: size, BOPs, latency, memory and quality of model files, with the gap to a float reference.

    >>> from benchmarks import BenchConfig, bench
    >>> entries = bench(["fqse.tflite", "fqse.onnx"], BenchConfig(reference="float.pt"))

Every model runs with the same chunking (its fixed chunk, 25% cross-faded
overlap), so files and checkpoints are compared on the same computation.

The quality run goes through ``runtimes.load`` (the Runtime ``compress run``
uses; its output equals the device runner's, a test checks it), which counts
the int8 codes at the boundary limits: each entry records them as
``clipping`` ({"input", "output"} fractions; None for a float model or a file
without our metadata, run by the device runner's FileModel) and a warning
names the model when either is above 0.1 % (the audio is louder than its
calibration level).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks.bops import model_bops
from benchmarks.latency import BenchmarkError, measure_latency, thread_counts
from benchmarks.quality import Dnsmos, clip_rows, delta, summarize
from benchmarks.size import model_size
from compressor.configs import JsonConfig
from compressor.errors import CompressorError, ConfigError, RuntimeLoadError
from compressor.fileio import shown_path, write_text_atomic
from compressor.quant.clipping import CLIP_WARN_FRACTION

log = logging.getLogger(__name__)
FILE_SUFFIXES = (".onnx", ".tflite")


@dataclass(frozen=True)
class BenchConfig(JsonConfig):
    """What ``bench`` measures and how.

    data: 'demo' (the demo test split) or any dataset ``compress eval`` takes;
    reference: the float model every ``delta_vs_float`` is taken against (benched too);
    threads: 'all threads' for latency (default: the cores this process may use) and for quality runs;
    runs/warmup: timed and untimed runs per latency figure;
    chunk_seconds: the chunk a checkpoint runs in (deployed files have their own);
    per_layer: add the per-layer BOPs table;
    max_items: quality on the first N clips only (quick looks, tests);
    cache_dir: keep each file's per-clip quality here, keyed by the file's hash and the settings that
    change it, so a repeated run (e.g. for latency spread) does not recompute it.
    """

    data: str = "demo"
    reference: str | None = None
    threads: int | None = None
    runs: int = 20
    warmup: int = 5
    chunk_seconds: float = 2.0
    sample_rate: int = 16000
    per_layer: bool = False
    quality: bool = True
    latency: bool = True
    pesq: bool = True
    dnsmos: bool = True
    max_items: int | None = None
    progress: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.runs < 20 and self.latency:
            log.warning("fewer than 20 timed runs (%d): medians will be noisy", self.runs)
        if self.runs < 1 or self.warmup < 0 or self.chunk_seconds <= 0:
            raise ConfigError("BenchConfig needs runs >= 1, warmup >= 0 and chunk_seconds > 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"BenchConfig.threads must be >= 1, got {self.threads}")


def model_format(path: Path) -> str:
    suffix = path.suffix.lower()
    return suffix.lstrip(".") if suffix in FILE_SUFFIXES else "checkpoint"


def quality_model(path: Path, config: BenchConfig) -> Any:
    """What the quality run processes audio with: a Runtime (it counts boundary clipping), or, for an
    .onnx/.tflite without our metadata (a float or foreign file), the device runner's FileModel."""
    import runtimes

    if path.suffix.lower() in FILE_SUFFIXES:
        try:
            return runtimes.load(path, threads=config.threads)
        except RuntimeLoadError:
            from benchmarks.device_runner import FileModel

            return FileModel(path, threads=config.threads)
    return runtimes.load(path, threads=config.threads, chunk_seconds=config.chunk_seconds)


def processor(path: Path, config: BenchConfig) -> Callable[[np.ndarray], np.ndarray]:
    """Mono float audio -> the model's estimate, in the model's chunks (what quality is measured on)."""
    return quality_model(path, config).process


def boundary_clipping(model: Any) -> dict[str, float] | None:
    """Fractions of input/output int8 codes at the limits during the run; None without an int8 boundary."""
    from runtimes import Runtime

    if not isinstance(model, Runtime) or getattr(model, "quantized", True) is False:
        return None  # a float checkpoint (TorchRuntime) or a file the device runner ran
    return {k: round(v, 6) for k, v in model.clipping().items()}


def _latency_fields(latency: dict | None) -> dict[str, Any]:
    """The issue's flat keys, taken at all threads on the model's chunk; every figure under ``latency``."""
    if latency is None:
        return {"latency_ms": None, "rtf": None, "peak_rss_mb": None, "latency": None}
    top = latency["by_threads"][-1]
    return {"latency_ms": {"median": top["chunk"]["median"], "p90": top["chunk"]["p90"], "threads": top["threads"],
                           "input_seconds": top["chunk"]["audio_seconds"]},
            "rtf": top["chunk"]["rtf"], "peak_rss_mb": latency["peak_rss_mb"], "latency": latency["by_threads"]}


class _QualityCache:
    """Quality per file: a reference that is also benched is evaluated once; on disk with ``cache_dir``."""

    def __init__(self, config: BenchConfig) -> None:
        from compressor.cli.common import eval_set

        self.config = config
        self.dataset = eval_set(config.data)
        self.dnsmos = Dnsmos(config.dnsmos)
        self._done: dict[Path, tuple[dict, list[dict], dict | None]] = {}

    def _disk_key(self, path: Path) -> Path | None:
        if not self.config.cache_dir:
            return None
        digest = hashlib.sha256(path.read_bytes())
        c = self.config
        digest.update(json.dumps([c.data, c.max_items, c.pesq, c.dnsmos and self.dnsmos.available,
                                  c.chunk_seconds]).encode())
        return Path(c.cache_dir) / f"quality-{path.name}-{digest.hexdigest()[:16]}.json"

    def __call__(self, path: Path, name: str) -> tuple[dict, list[dict], dict | None]:
        """(quality summary, per-clip rows, boundary clipping during the run)."""
        key = path.resolve()
        if key in self._done:
            return self._done[key]
        disk = self._disk_key(path)
        stored = json.loads(disk.read_text()) if disk is not None and disk.is_file() else None
        if isinstance(stored, list):  # a cache file from before clipping was recorded
            stored = {"rows": stored, "clipping": None}
        if stored is None:
            model = quality_model(path, self.config)
            rows = clip_rows(model.process, self.dataset, pesq=self.config.pesq, dnsmos=self.dnsmos,
                             max_items=self.config.max_items, desc=f"quality {name}", progress=self.config.progress)
            stored = {"rows": rows, "clipping": boundary_clipping(model)}
            if disk is not None:
                write_text_atomic(disk, json.dumps(stored) + "\n")
        self._done[key] = (summarize(stored["rows"]), stored["rows"], stored["clipping"])
        return self._done[key]


def bench_one(path: Path, name: str, config: BenchConfig, quality: _QualityCache | None,
              reference: dict | None) -> dict[str, Any]:
    """The JSON object of one model (``rows``: per-clip metrics, kept for plots)."""
    if not path.is_file():
        raise BenchmarkError(f"{path}: no such model file")
    entry: dict[str, Any] = {"name": name, "path": shown_path(path), "format": model_format(path)}
    entry.update(model_size(path))
    entry["bops"] = model_bops(path, int(round(config.chunk_seconds * config.sample_rate)), config.sample_rate,
                               per_layer=config.per_layer)
    latency = measure_latency(path, config.threads, config.runs, config.warmup, config.chunk_seconds) \
        if config.latency else None
    entry["runtime"] = latency["runtime"] if latency else None
    entry.update(_latency_fields(latency))
    entry["quality"], entry["rows"], entry["clipping"] = quality(path, name) if quality else (None, [], None)
    clipped = entry["clipping"] or {}
    if max(clipped.get("input", 0.0), clipped.get("output", 0.0)) > CLIP_WARN_FRACTION:
        log.warning("%s: %.2f%% of the input and %.2f%% of the output int8 codes clipped during the quality run: "
                    "the audio is louder than the model's calibration level (README 'Clipping')", name,
                    100 * clipped["input"], 100 * clipped["output"])
    entry["delta_vs_float"] = delta(entry["quality"], reference) if entry["quality"] and reference else None
    return entry


def bench(models: Sequence[str | Path], config: BenchConfig | None = None,
          names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One entry per model (the reference first, when given and not listed), in the order given."""
    config = config or BenchConfig()
    paths = [Path(m) for m in models]
    names = list(names) if names else [p.name for p in paths]
    if len(names) != len(paths):
        raise ConfigError(f"bench: {len(paths)} models but {len(names)} names")
    if len(set(names)) != len(names):
        raise ConfigError(f"bench: model names must differ, got {names}")
    quality = _QualityCache(config) if config.quality else None
    reference_quality = None
    if config.reference:
        ref = Path(config.reference)
        if ref.resolve() not in {p.resolve() for p in paths}:
            paths, names = [ref, *paths], [f"{ref.name} (reference)", *names]
        if quality:
            reference_quality = quality(ref, ref.name)[0]
    log.info("latency at %s thread(s), %d runs after %d warm-up", thread_counts(config.threads), config.runs,
             config.warmup)
    entries = []
    for path, name in zip(paths, names):
        try:
            entries.append(bench_one(path, name, config, quality, reference_quality))
        except CompressorError:
            raise
        except Exception as exc:  # a runtime or converter library failing on one file: say which
            raise BenchmarkError(f"{path}: benchmark failed: {type(exc).__name__}: {exc}") from exc
    return entries
