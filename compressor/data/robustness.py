"""The robustness set: unseen voices and noises at every input level a device hears.

Why it exists: the demo model was trained on two voices (English and French
asterisk prompts) at about -33 dBFS, with a handful of noises.  An int8 model
has a fixed input grid, so it can behave well at the training level and badly
at -45 dBFS (few LSBs of signal) or -10 dBFS (saturated activations).  This set
checks that, on voices and noises that never reached training or calibration.

What ships (examples/robustness_data, built by examples/build_robustness_data.py)
are only the sources: clean utterances, one noise recording per condition and
room impulse responses.  Items are mixed on the fly, deterministically: one
item per condition x level x utterance.  The clean speech is scaled so that its
*active* RMS (:func:`active_rms`) is the item's level; the noise is then scaled
so that the whole-item SNR is one of :data:`SNRS_DB`, chosen by utterance and
condition (rotated by condition, so each voice meets every SNR, and every
condition x level cell holds the same SNR mix when the utterance count is a
multiple of four).  SNR and noise offset do not depend on the level, so the
levels of one condition and utterance differ only in scale, until the mixture
passes full scale: then it is hard-clipped at +-1, as an ADC would, and the item
says so (``clipped``); the target ``sources`` is never clipped.

``reverb`` convolves the speech with a room impulse response and adds pink
noise; its target is the *reverberant* speech (a denoiser is tested, not a
dereverberator).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy.signal import fftconvolve
from torch.utils.data import Dataset

from compressor.data.audio import read_audio, rms, snr_db
from compressor.data.mixing import loop_crop
from compressor.errors import DataError

SAMPLE_RATE = 16000
#: Active-speech levels of the clean speech, dBFS.
LEVELS_DBFS: tuple[int, ...] = tuple(range(-45, -9, 5))
#: Noise conditions, in the order their index seeds the noise offsets.
CONDITIONS: tuple[str, ...] = ("white", "pink", "brown", "blue", "babble", "music", "hum", "reverb")
#: Whole-item input SNRs, cycled over utterances.
SNRS_DB: tuple[float, ...] = (0.0, 5.0, 10.0, 15.0)
#: Noise added to the reverberant speech of the ``reverb`` condition.
REVERB_NOISE = "pink"

#: Active-level meter: 20 ms frames, active = within 35 dB of the loudest frame.
ACTIVE_FRAME_S = 0.02
ACTIVE_RANGE_DB = 35.0


def active_rms(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """RMS over the active frames of ``x`` (those within 35 dB of the loudest 20 ms frame).

    Scale-invariant in which frames it keeps, so scaling ``x`` by ``g`` scales the
    result by exactly ``|g|``.  Signals shorter than a frame use the plain RMS.
    """
    x = np.asarray(x, dtype=np.float64)
    frame = int(ACTIVE_FRAME_S * sample_rate)
    n = len(x) // frame
    if n == 0:
        return rms(x)
    e = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))
    act = e[e > e.max() * 10 ** (-ACTIVE_RANGE_DB / 20)]
    return float(np.sqrt(np.mean(act**2))) if act.size else 0.0


def robustness_root() -> Path:
    """The shipped sources, found from the repository root (editable install)."""
    root = Path(__file__).resolve().parents[2] / "examples" / "robustness_data"
    if not (root / "manifest.json").is_file():
        raise DataError(
            f"robustness data not found at {root}: it ships with the repository "
            "(examples/robustness_data); rebuild it with `python examples/build_robustness_data.py`"
        )
    return root


@dataclass(frozen=True)
class _Utterance:
    name: str
    voice: str
    path: Path


class RobustnessSet(Dataset):
    """One item per condition x level x utterance, mixed on the fly from the shipped sources.

    Items: ``{"mixture": FloatTensor[T], "sources": FloatTensor[1, T], "snr_db": float,
    "id": str, "level_dbfs": float, "condition": str, "voice": str, "clipped": bool}``
    with ``snr_db`` measured on the returned arrays (the project's convention; for a
    clipped item it includes the clipping error).  Items are whole utterances
    (2.5-4 s, batch size 1).  ``clipped_count()`` counts clipped items.
    """

    num_sources = 1
    strict_audio = False

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        *,
        levels: Sequence[float] = LEVELS_DBFS,
        conditions: Sequence[str] = CONDITIONS,
        max_utterances: int | None = None,
        seed: int = 0,
        sample_rate: int = SAMPLE_RATE,
        segment_seconds: float | None = None,
    ):
        if int(sample_rate) != SAMPLE_RATE:
            raise DataError(f"the robustness set is {SAMPLE_RATE} Hz only, got sample_rate={sample_rate}")
        if segment_seconds is not None:
            raise DataError("the robustness set gives whole utterances; segment_seconds must be None")
        self.root = Path(root) if root is not None else robustness_root()
        self.sample_rate = SAMPLE_RATE
        self.segment_seconds = None
        self.seed = int(seed)
        try:
            manifest = json.loads((self.root / "manifest.json").read_text())
            utts = manifest["utterances"]
            self._noise_files = {c: self.root / f for c, f in manifest["noises"].items()}
            self._rir_files = [self.root / f for f in manifest["rirs"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"cannot read robustness manifest {self.root / 'manifest.json'}: {exc}") from exc
        bad = [c for c in conditions if c not in CONDITIONS]
        if bad or not conditions:
            raise DataError(f"unknown robustness condition(s) {bad or conditions}; choose from {', '.join(CONDITIONS)}")
        self.conditions = tuple(conditions)
        self.levels = tuple(float(v) for v in levels)
        if not self.levels or not all(math.isfinite(v) and v < 0 for v in self.levels):
            raise DataError(f"levels must be finite negative dBFS values, got {levels}")
        self.utterances = [_Utterance(u["name"], u["voice"], self.root / u["file"]) for u in utts]
        if max_utterances is not None:
            if max_utterances <= 0:
                raise DataError(f"max_utterances must be positive, got {max_utterances}")
            self.utterances = self.utterances[:max_utterances]
        if not self.utterances:
            raise DataError(f"robustness set {self.root} lists no utterances")
        self._cache: dict[Path, np.ndarray] = {}
        self._clipped: set[int] = set()

    # ------------------------------------------------------------------ helpers

    def __len__(self) -> int:
        return len(self.conditions) * len(self.levels) * len(self.utterances)

    def _load(self, path: Path) -> np.ndarray:
        x = self._cache.get(path)
        if x is None:
            x = self._cache[path] = read_audio(path, SAMPLE_RATE, resample=False, mono=False).astype(np.float64)
        return x

    def locate(self, index: int) -> tuple[str, float, int]:
        """(condition, level, utterance index) of item ``index`` (utterance fastest)."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        nu, nl = len(self.utterances), len(self.levels)
        return self.conditions[index // (nu * nl)], self.levels[(index // nu) % nl], index % nu

    def snr_for(self, condition: str, utterance: int) -> float:
        """The input SNR of every item of this condition and utterance (any level)."""
        return SNRS_DB[(utterance + CONDITIONS.index(condition)) % len(SNRS_DB)]

    def clean(self, condition: str, utterance: int) -> np.ndarray:
        """The target before level scaling: the utterance, reverberant for ``reverb``."""
        x = self._load(self.utterances[utterance].path)
        if condition != "reverb":
            return x
        rir = self._load(self._rir_files[utterance % len(self._rir_files)])
        start = int(np.argmax(np.abs(rir)))  # direct path: keep the target time-aligned
        return fftconvolve(x, rir[start:])[: len(x)]

    def clipped_count(self) -> int:
        """How many items read so far were clipped (``__getitem__`` records them)."""
        return len(self._clipped)

    # ------------------------------------------------------------------ items

    def __getitem__(self, index: int) -> dict:
        condition, level, u = self.locate(index)
        utt = self.utterances[u]
        speech = self.clean(condition, u)
        speech = speech * (10 ** (level / 20) / active_rms(speech))
        noise_name = REVERB_NOISE if condition == "reverb" else condition
        noise_full = self._load(self._noise_files[noise_name])
        # Offset from (seed, condition, utterance) in the full lists: subsets and levels share it.
        rng = np.random.default_rng([self.seed, CONDITIONS.index(condition), u])
        noise = loop_crop(noise_full, len(speech), int(rng.integers(len(noise_full))))
        snr = self.snr_for(condition, u)
        noise = noise * (rms(speech) / rms(noise) / 10 ** (snr / 20))
        mixture = speech + noise
        clipped = bool(np.max(np.abs(mixture)) > 1.0)
        if clipped:
            mixture = np.clip(mixture, -1.0, 1.0)
            self._clipped.add(index)
        return {
            "mixture": torch.from_numpy(mixture.astype(np.float32)),
            "sources": torch.from_numpy(speech.astype(np.float32)[None]),
            "snr_db": float(snr_db(speech.astype(np.float32), mixture.astype(np.float32))),
            "id": f"{condition}__{level:+.0f}dBFS__{utt.name}",
            "level_dbfs": level,
            "condition": condition,
            "voice": utt.voice,
            "clipped": clipped,
        }
