"""Speech-quality data: degraded 9 s clips from the demo set, labelled with PESQ-WB.

Each split draws clean references from its own utterances only (the demo's
train/speech, valid/clean and test/clean hold disjoint utterances): random
utterances joined with short pauses until the clip is 9 s long, at a random
level. Every reference gets ``variants_per_ref`` degradations, each of one
kind (see ``KINDS``): noise at an SNR from a sweep (nine noise types),
the output of our float Conv-TasNet or of a 4-bit PTQ of it (badly
quantized enhancement) on a noisy input, clipping, band-limiting, or near
clean. The label is PESQ-WB (``pesq`` package) of the degraded clip against
its clean reference. Features are the model's log-mel input, computed once.

Everything is drawn from one seeded generator per split, so a split is a
pure function of (split, config).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from scipy import signal
from tqdm import tqdm

from compressor.bam.frontend import MelConfig, log_mel
from compressor.configs import JsonConfig
from compressor.data.audio import read_audio, rms
from compressor.data.demo import demo_root
from compressor.data.mixing import loop_crop, mix_at_snr
from compressor.errors import ConfigError, DataError
from compressor.fileio import atomic_path

KINDS = ("noise", "enhanced", "quantized", "clipping", "bandlimit", "clean")
KIND_WEIGHTS = (0.36, 0.12, 0.12, 0.14, 0.16, 0.10)
CLEAN_FOLDER = {"train": "train/speech", "valid": "valid/clean", "test": "test/clean"}
ENHANCER_CHECKPOINT = "examples/checkpoints/conv_tasnet_demo.pt"


@dataclass(frozen=True)
class QualityDataConfig(JsonConfig):
    """How many clips each split gets, and the degradation ranges."""

    train_refs: int = 100
    valid_refs: int = 15
    test_refs: int = 40
    variants_per_ref: int = 3
    seed: int = 6
    snr_db: tuple[float, float] = (-5.0, 30.0)  # the "noise" sweep
    enhancer_snr_db: tuple[float, float] = (-5.0, 10.0)  # inputs of the enhancers
    level_dbfs: tuple[float, float] = (-32.0, -18.0)

    def __post_init__(self) -> None:
        if min(self.train_refs, self.valid_refs, self.test_refs, self.variants_per_ref) < 1:
            raise ConfigError("QualityDataConfig: every count must be >= 1")
        for name in ("snr_db", "enhancer_snr_db", "level_dbfs"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    def refs(self, split: str) -> int:
        return {"train": self.train_refs, "valid": self.valid_refs, "test": self.test_refs}[split]


def _load_folder(folder: Path, sample_rate: int) -> list[tuple[str, np.ndarray]]:
    files = sorted(folder.glob("*.flac"))
    if not files:
        raise DataError(f"no .flac files in {folder}")
    return [(f.stem, read_audio(f, sample_rate)) for f in files]


def clean_reference(pool: list[tuple[str, np.ndarray]], length: int, rng: np.random.Generator,
                    sample_rate: int) -> tuple[np.ndarray, list[str]]:
    """Random utterances joined by 0.1-0.4 s pauses, cut to ``length`` samples."""
    pieces, names, total = [], [], 0
    while total < length:
        name, audio = pool[int(rng.integers(len(pool)))]
        pause = np.zeros(int(rng.uniform(0.1, 0.4) * sample_rate), np.float32)
        pieces += [audio, pause]
        names.append(name)
        total += audio.size + pause.size
    return np.concatenate(pieces)[:length].astype(np.float32), names


class Degrader:
    """Applies one degradation kind; holds the noises and the two enhancers."""

    def __init__(self, sample_rate: int, enhancers: dict[str, Callable[[np.ndarray], np.ndarray]]) -> None:
        self.sample_rate = sample_rate
        self.noises = _load_folder(demo_root() / "train" / "noise", sample_rate)
        self.enhancers = enhancers

    def noisy(self, clean: np.ndarray, snr_db: float, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        name, noise = self.noises[int(rng.integers(len(self.noises)))]
        noise = loop_crop(noise, clean.size, int(rng.integers(noise.size)))
        return mix_at_snr(clean, noise, snr_db)[0], name

    def apply(self, kind: str, clean: np.ndarray, cfg: QualityDataConfig,
              rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        sr = self.sample_rate
        if kind == "noise":
            snr = float(rng.uniform(*cfg.snr_db))
            out, noise = self.noisy(clean, snr, rng)
            return out, {"snr_db": snr, "noise": noise}
        if kind in ("enhanced", "quantized"):
            snr = float(rng.uniform(*cfg.enhancer_snr_db))
            noisy, noise = self.noisy(clean, snr, rng)
            return self.enhancers[kind](noisy), {"snr_db": snr, "noise": noise}
        if kind == "clipping":
            level = float(np.quantile(np.abs(clean), rng.uniform(0.7, 0.99)))
            out, noise = self.noisy(np.clip(clean, -level, level), float(rng.uniform(25, 45)), rng)
            return out, {"clip_level": level, "noise": noise}
        if kind == "bandlimit":
            if rng.random() < 0.3:
                low, high = 300.0, 3400.0  # telephone band
                sos = signal.butter(8, [low, high], "bandpass", fs=sr, output="sos")
            else:
                low, high = 0.0, float(rng.uniform(1000, 5000))
                sos = signal.butter(8, high, "lowpass", fs=sr, output="sos")
            filtered = signal.sosfiltfilt(sos, clean).astype(np.float32)
            out, noise = self.noisy(filtered, float(rng.uniform(15, 45)), rng)
            return out, {"band_hz": [low, high], "noise": noise}
        if kind == "clean":
            snr = float(rng.uniform(40, 60))
            out, noise = self.noisy(clean, snr, rng)
            return out, {"snr_db": snr, "noise": noise}
        raise ConfigError(f"unknown degradation kind {kind!r}; one of {KINDS}")


def pesq_wb(reference: np.ndarray, degraded: np.ndarray, sample_rate: int) -> float | None:
    """PESQ-WB (ITU-T P.862.2) of ``degraded``; None where PESQ finds no speech."""
    from pesq import PesqError, pesq

    try:
        return float(pesq(sample_rate, reference.astype(np.float64), degraded.astype(np.float64), "wb"))
    except PesqError:
        return None


def default_enhancers(progress: bool = True) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Our shipped float Conv-TasNet, and a 4-bit weight/activation PTQ of it (the badly quantized one)."""
    from compressor.checkpoint import load_model
    from compressor.data.demo import demo_dataset
    from compressor.recipes.base import RecipeContext
    from compressor.recipes.ptq import PTQ, PTQConfig

    root = Path(__file__).resolve().parents[2]
    float_model = load_model(root / ENHANCER_CHECKPOINT).model.eval()
    calib = demo_dataset("train", segment_seconds=2.0, seed=0, items_per_epoch=64)
    ptq = PTQ(PTQConfig(weight_bits=4, activation_bits=4, calibration="minmax", calib_batches=4,
                              batch_size=4))
    bad = ptq.run(RecipeContext(float_model, calib, None, Path("."), progress=progress)).eval()

    def run(model: torch.nn.Module) -> Callable[[np.ndarray], np.ndarray]:
        def enhance(audio: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(audio).reshape(1, -1)).reshape(-1).numpy()
        return enhance

    return {"enhanced": run(float_model), "quantized": run(bad)}


def build_split(split: str, cfg: QualityDataConfig, enhancers: dict[str, Callable[[np.ndarray], np.ndarray]],
                mel: MelConfig = MelConfig(), progress: bool = True,
                keep_audio: int = 0) -> dict[str, Any]:
    """Features, PESQ labels and per-clip info of one split (``keep_audio`` clips keep their waveform)."""
    if split not in CLEAN_FOLDER:
        raise ConfigError(f"unknown split {split!r}; one of {sorted(CLEAN_FOLDER)}")
    sr = mel.sample_rate
    rng = np.random.default_rng([cfg.seed, list(CLEAN_FOLDER).index(split)])
    pool = _load_folder(demo_root() / CLEAN_FOLDER[split], sr)
    degrader = Degrader(sr, enhancers)
    feats, labels, info, audio = [], [], [], []
    for r in tqdm(range(cfg.refs(split)), desc=f"bam data {split}", disable=not progress):
        clean, utterances = clean_reference(pool, mel.clip_samples, rng, sr)
        clean = clean * np.float32(10 ** (rng.uniform(*cfg.level_dbfs) / 20) / max(rms(clean), 1e-9))
        for _ in range(cfg.variants_per_ref):
            kind = str(rng.choice(KINDS, p=KIND_WEIGHTS))
            degraded, params = degrader.apply(kind, clean, cfg, rng)
            degraded = np.clip(degraded, -1.0, 1.0).astype(np.float32)
            label = pesq_wb(clean, degraded, sr)
            if label is None:
                continue
            feats.append(log_mel(degraded, mel))
            labels.append(label)
            info.append({"ref": r, "kind": kind, "utterances": utterances, **params})
            if len(audio) < keep_audio:
                audio.append(degraded)
    return {"features": np.stack(feats), "labels": np.asarray(labels, np.float32), "info": info,
            "audio": np.stack(audio) if audio else np.zeros((0, mel.clip_samples), np.float32)}


def save_split(path: str | Path, data: dict[str, Any], cfg: QualityDataConfig, mel: MelConfig) -> None:
    meta = {"data_config": cfg.to_dict(), "mel_config": mel.to_dict(), "info": data["info"]}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, features=data["features"], labels=data["labels"], audio=data["audio"],
                     meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))


def load_split(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"quality data {path} not found; build it with `python examples/bam_build_data.py`")
    with np.load(path) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        return {"features": z["features"], "labels": z["labels"], "audio": z["audio"], **meta}


class QualityDataset(torch.utils.data.Dataset):
    """(features, label) pairs of a saved split; items are dicts like the other datasets'."""

    def __init__(self, path: str | Path) -> None:
        data = load_split(path)
        self.features = torch.from_numpy(data["features"])
        self.labels = torch.from_numpy(data["labels"])
        self.info = data["info"]
        self.mel_config = MelConfig.from_dict(data["mel_config"])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"mixture": self.features[i], "target": self.labels[i].reshape(1)}
