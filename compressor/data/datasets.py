"""Datasets for enhancement and separation.

Every dataset is a ``torch.utils.data.Dataset`` whose items are dicts::

    {"mixture": FloatTensor[T], "sources": FloatTensor[S, T],
     "snr_db": float, "id": str}

``snr_db`` is the input SNR of the mixture, computed from the arrays returned:
``10*log10(sum target^2 / sum (mixture - target)^2)`` with the target the sum
of the sources (NaN when undefined, e.g. for noise-free separation).  ``segment_seconds=None`` gives whole
files (batch size 1); a number gives fixed-length crops (random offset,
zero-padded when the file is shorter) so the default collate can batch.

All randomness comes from ``np.random.default_rng([seed, epoch, index])``, so
item ``index`` of epoch ``epoch`` is the same in every run and in every worker
(needed for bit-for-bit training resume); call ``set_epoch`` each epoch.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from compressor.data.audio import read_audio, snr_db
from compressor.data.mixing import crop_or_pad, loop_crop, mix_at_snr
from compressor.errors import DataError

log = logging.getLogger("compressor.data")

AUDIO_EXTENSIONS = (".wav", ".flac")


def list_audio(folder: Path) -> list[Path]:
    """Sorted audio files (.wav, .flac) directly in ``folder``."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


class _AudioDataset(Dataset):
    """Shared machinery: epoch/seed handling, cropping, item building."""

    num_sources: int = 1
    #: refuse (DataError) files at another sample rate or with several
    #: channels instead of resampling / down-mixing them with a warning
    strict_audio: bool = False

    def __init__(self, sample_rate: int, segment_seconds: float | None, seed: int):
        if segment_seconds is not None and not segment_seconds > 0:
            raise DataError(f"segment_seconds must be positive or None, got {segment_seconds}")
        self.sample_rate = int(sample_rate)
        self.segment_seconds = segment_seconds
        self.seed = int(seed)
        self.epoch = 0

    @property
    def segment_samples(self) -> int | None:
        if self.segment_seconds is None:
            return None
        return int(round(self.segment_seconds * self.sample_rate))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random choices the next items use."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _read(self, path: Path) -> np.ndarray:
        lenient = not self.strict_audio
        return read_audio(path, self.sample_rate, resample=lenient, mono=lenient)

    def _crop(self, arrays: Sequence[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
        """Same random crop of every array (last axis); zero-pad if shorter."""
        seg = self.segment_samples
        if seg is None:
            return list(arrays)
        n = arrays[0].shape[-1]
        off = int(rng.integers(0, n - seg + 1)) if n > seg else 0
        return [crop_or_pad(a, seg, off) for a in arrays]

    @staticmethod
    def _item(mixture: np.ndarray, sources: np.ndarray, item_id: str) -> dict:
        sources = np.atleast_2d(sources)
        return {
            "mixture": torch.from_numpy(np.ascontiguousarray(mixture, dtype=np.float32)),
            "sources": torch.from_numpy(np.ascontiguousarray(sources, dtype=np.float32)),
            "snr_db": float(snr_db(sources.sum(axis=0), mixture)),
            "id": item_id,
        }


# ----------------------------------------------------------------------------- LibriMix

#: task -> (mixture type in the csv name, source columns, target description)
LIBRIMIX_TASKS = {
    "enh_single": ("mix_single", ("source_1_path",)),
    "enh_both": ("mix_both", ("source_1_path", "source_2_path")),  # target = s1 + s2, summed
    "sep_clean": ("mix_clean", ("source_1_path", "source_2_path")),
    "sep_noisy": ("mix_both", ("source_1_path", "source_2_path")),
}


def _find_librimix_csv(root: Path, task: str, split: str | None) -> Path:
    mixtype = LIBRIMIX_TASKS[task][0]
    pattern = f"mixture_{split or '*'}_{mixtype}.csv"
    hits = sorted(root.glob(pattern)) + sorted(root.glob(f"metadata/{pattern}"))
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise DataError(
            f"no LibriMix metadata {pattern} in {root} or {root / 'metadata'} "
            f"(task {task!r} needs the {mixtype} csv)"
        )
    raise DataError(f"several LibriMix csv files match {pattern} in {root}: {[h.name for h in hits]}; pass split=")


class LibriMixDataset(_AudioDataset):
    """LibriMix from its metadata csv (``metadata/mixture_{split}_{mix_type}.csv``).

    ``root_or_csv`` is the csv itself, or a LibriMix folder (e.g.
    ``Libri2Mix/wav16k/min``) holding ``metadata/`` (pass ``split`` when it
    holds several splits).  Tasks: ``enh_single`` (mix_single, target
    source_1), ``sep_clean`` (mix_clean, sources 1 and 2), ``sep_noisy``
    (mix_both, sources 1 and 2), ``enh_both`` (mix_both, target s1 + s2).
    Paths in the csv may be absolute or relative to the csv's folder.
    """

    def __init__(
        self,
        root_or_csv: str | os.PathLike,
        task: str = "enh_single",
        sample_rate: int = 16000,
        segment_seconds: float | None = None,
        *,
        split: str | None = None,
        seed: int = 0,
        max_items: int | None = None,
    ):
        super().__init__(sample_rate, segment_seconds, seed)
        if task not in LIBRIMIX_TASKS:
            raise DataError(f"unknown LibriMix task {task!r}; one of {sorted(LIBRIMIX_TASKS)}")
        self.task = task
        path = Path(root_or_csv)
        if not path.exists():
            raise DataError(f"LibriMix path not found: {path}")
        self.csv_path = path if path.is_file() else _find_librimix_csv(path, task, split)
        cols = LIBRIMIX_TASKS[task][1]
        self.num_sources = 1 if task.startswith("enh") else len(cols)
        self._summed = task == "enh_both"
        base = self.csv_path.parent
        self.rows: list[tuple[str, Path, list[Path]]] = []
        try:
            with open(self.csv_path, newline="") as fh:
                reader = csv.DictReader(fh)
                need = ("mixture_ID", "mixture_path") + cols
                missing = [c for c in need if c not in (reader.fieldnames or [])]
                if missing:
                    raise DataError(
                        f"{self.csv_path} is not a LibriMix {LIBRIMIX_TASKS[task][0]} csv: "
                        f"missing columns {missing} (has {reader.fieldnames})"
                    )
                for row in reader:
                    res = lambda p: Path(p) if os.path.isabs(p) else base / p  # noqa: E731
                    self.rows.append((row["mixture_ID"], res(row["mixture_path"]), [res(row[c]) for c in cols]))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"cannot read LibriMix csv {self.csv_path}: {exc}") from exc
        if max_items is not None:
            self.rows = self.rows[:max_items]
        if not self.rows:
            raise DataError(f"LibriMix csv {self.csv_path} lists no mixtures")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        mid, mpath, spaths = self.rows[index]
        mix = self._read(mpath)
        srcs = [self._read(p) for p in spaths]
        for p, s in zip(spaths, srcs):
            if len(s) != len(mix):
                raise DataError(f"LibriMix {mid}: {p} has {len(s)} samples, mixture {mpath} has {len(mix)}")
        sources = np.stack(srcs)
        if self._summed:
            sources = sources.sum(axis=0, keepdims=True)
        mix, sources = self._crop([mix, sources], self.rng(index))
        item = self._item(mix, sources, mid)
        if self.task == "sep_clean":
            item["snr_db"] = float("nan")  # no noise: the input SNR is not defined
        return item


# ----------------------------------------------------------------------------- paired folders


class PairedFolderDataset(_AudioDataset):
    """``root/noisy/*`` and ``root/clean/*`` (.wav/.flac) matched by file name."""

    def __init__(
        self,
        root: str | os.PathLike,
        sample_rate: int = 16000,
        segment_seconds: float | None = None,
        *,
        seed: int = 0,
        noisy_dir: str = "noisy",
        clean_dir: str = "clean",
    ):
        super().__init__(sample_rate, segment_seconds, seed)
        self.root = Path(root)
        nd, cd = self.root / noisy_dir, self.root / clean_dir
        for d in (nd, cd):
            if not d.is_dir():
                raise DataError(f"paired dataset {self.root}: folder {d} not found (need {noisy_dir}/ and {clean_dir}/)")
        noisy = {p.stem: p for p in list_audio(nd)}
        clean = {p.stem: p for p in list_audio(cd)}
        only_noisy = sorted(set(noisy) - set(clean))
        only_clean = sorted(set(clean) - set(noisy))
        if only_noisy:
            raise DataError(f"paired dataset {self.root}: {noisy[only_noisy[0]]} has no clean partner in {cd}"
                            + (f" (and {len(only_noisy) - 1} more)" if len(only_noisy) > 1 else ""))
        if only_clean:
            raise DataError(f"paired dataset {self.root}: {clean[only_clean[0]]} has no noisy partner in {nd}"
                            + (f" (and {len(only_clean) - 1} more)" if len(only_clean) > 1 else ""))
        if not noisy:
            raise DataError(f"paired dataset {self.root}: no .wav/.flac files in {nd}")
        self.pairs = [(k, noisy[k], clean[k]) for k in sorted(noisy)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        name, npath, cpath = self.pairs[index]
        noisy, clean = self._read(npath), self._read(cpath)
        if len(noisy) != len(clean):
            raise DataError(f"{npath} has {len(noisy)} samples but its partner {cpath} has {len(clean)}")
        noisy, clean = self._crop([noisy, clean], self.rng(index))
        return self._item(noisy, clean[None], name)


# ----------------------------------------------------------------------------- on-the-fly mixing


class MixingDataset(_AudioDataset):
    """Speech + noise mixed on the fly at a random (or fixed) SNR.

    Item ``index`` of epoch ``e`` draws, from ``default_rng([seed, e, index])``
    and in this order: the speech file (file ``index % n`` when
    ``items_per_epoch`` is None, else a random one), the speech crop, the
    noise file, the noise offset (the noise loops if short), the SNR (uniform
    over ``snr_range_db`` unless ``snr_db`` is fixed).  The noise is scaled by
    ``rms(speech) / rms(noise) / 10^(snr/20)``; if the mixture's peak is above
    0.99 speech and noise are scaled down together.  Files are cached in
    memory after their first read (``cache=False`` to turn that off).
    """

    def __init__(
        self,
        speech_dir: str | os.PathLike,
        noise_dir: str | os.PathLike,
        snr_range_db: tuple[float, float] = (-5.0, 20.0),
        sample_rate: int = 16000,
        segment_seconds: float | None = None,
        *,
        snr_db: float | None = None,
        seed: int = 0,
        items_per_epoch: int | None = None,
        cache: bool = True,
    ):
        super().__init__(sample_rate, segment_seconds, seed)
        self.speech_dir, self.noise_dir = Path(speech_dir), Path(noise_dir)
        for d in (self.speech_dir, self.noise_dir):
            if not d.is_dir():
                raise DataError(f"mixing dataset: folder {d} not found")
        self.speech_files = list_audio(self.speech_dir)
        self.noise_files = list_audio(self.noise_dir)
        if not self.speech_files:
            raise DataError(f"mixing dataset: no .wav/.flac speech files in {self.speech_dir}")
        if not self.noise_files:
            raise DataError(f"mixing dataset: no .wav/.flac noise files in {self.noise_dir}")
        lo, hi = (float(v) for v in snr_range_db)
        if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
            raise DataError(f"snr_range_db must be (low, high) with low <= high, got {snr_range_db}")
        self.snr_range_db = (lo, hi)
        self.snr_db = None if snr_db is None else float(snr_db)
        if items_per_epoch is not None and items_per_epoch <= 0:
            raise DataError(f"items_per_epoch must be positive, got {items_per_epoch}")
        self.items_per_epoch = items_per_epoch
        self.cache = cache
        self._cache: dict[Path, np.ndarray] = {}

    def __len__(self) -> int:
        return self.items_per_epoch if self.items_per_epoch is not None else len(self.speech_files)

    def _load(self, path: Path) -> np.ndarray:
        if not self.cache:
            return self._read(path)
        x = self._cache.get(path)
        if x is None:
            x = self._cache[path] = self._read(path)
        return x

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        rng = self.rng(index)
        if self.items_per_epoch is None:
            si = index % len(self.speech_files)
        else:
            si = int(rng.integers(len(self.speech_files)))
        spath = self.speech_files[si]
        speech = self._load(spath)
        (speech,) = self._crop([speech], rng)
        ni = int(rng.integers(len(self.noise_files)))
        npath = self.noise_files[ni]
        noise_full = self._load(npath)
        noise = loop_crop(noise_full, len(speech), int(rng.integers(len(noise_full))))
        snr = self.snr_db if self.snr_db is not None else float(rng.uniform(*self.snr_range_db))
        mixture, target, _ = mix_at_snr(speech, noise, snr)
        item = self._item(mixture, target[None], f"{spath.stem}+{npath.stem}@{snr:.2f}dB#{self.epoch}.{index}")
        return item


# ----------------------------------------------------------------------------- factory

LAYOUTS = """accepted layouts:
  "demo" or "demo:train|valid|test"     the embedded demo set (examples/demo_data)
  "robustness"                          held-out voices and noises at -45..-10 dBFS (examples/robustness_data)
  a LibriMix metadata csv               mixture_{split}_{mix_clean|mix_both|mix_single}.csv
  a LibriMix folder                     holding metadata/mixture_*_*.csv
  a paired folder                       with noisy/ and clean/ subfolders (files matched by name)
  a mixing folder                       with speech/ and noise/ subfolders (mixed on the fly)"""


def open_dataset(path_or_name: str | os.PathLike, **kw) -> Dataset:
    """Open a dataset, detecting its layout (see ``LAYOUTS``).

    Keyword arguments go to the dataset class (``segment_seconds``,
    ``sample_rate``, ``seed``, ``task`` for LibriMix, ``snr_range_db`` for
    mixing, ``split`` for the demo set and LibriMix folders...).
    """
    strict_audio = bool(kw.pop("strict_audio", False))
    dataset = _open_dataset(path_or_name, **kw)
    dataset.strict_audio = strict_audio
    return dataset


def _open_dataset(path_or_name: str | os.PathLike, **kw) -> Dataset:
    name = str(path_or_name)
    if name == "demo" or name.startswith("demo:"):
        from compressor.data.demo import demo_dataset

        split = name.partition(":")[2] or kw.pop("split", "train")
        kw.pop("split", None)
        return demo_dataset(split, **kw)
    if name == "robustness":  # held-out voices/noises at -45..-10 dBFS (compressor/data/robustness.py)
        from compressor.data.robustness import RobustnessSet

        return RobustnessSet(**kw)
    path = Path(path_or_name)
    if not path.exists():
        raise DataError(f"dataset not found: {path}\n{LAYOUTS}")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            task = kw.pop("task", None)
            if task is None:
                task = next((t for t, (mt, _) in LIBRIMIX_TASKS.items() if path.stem.endswith(mt)), "enh_single")
            return LibriMixDataset(path, task=task, **kw)
        if path.suffix.lower() == ".npz":  # a speech-quality split (examples/bam_build_data.py)
            from compressor.bam.data import QualityDataset

            return QualityDataset(path)
        raise DataError(f"{path} is a file but not a LibriMix csv or a quality split (.npz)\n{LAYOUTS}")
    if (path / "noisy").is_dir() and (path / "clean").is_dir():
        return PairedFolderDataset(path, **kw)
    if (path / "speech").is_dir() and (path / "noise").is_dir():
        return MixingDataset(path / "speech", path / "noise", **kw)
    if list(path.glob("mixture_*_mix_*.csv")) or list(path.glob("metadata/mixture_*_mix_*.csv")):
        kw.setdefault("task", "enh_single")
        return LibriMixDataset(path, **kw)
    raise DataError(f"cannot tell the layout of {path}\n{LAYOUTS}")
