"""The robustness set: levels, SNRs, size, determinism and held-out voices (fast)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from compressor.data import open_dataset
from compressor.data.audio import read_audio
from compressor.data.robustness import CONDITIONS, LEVELS_DBFS, SNRS_DB, RobustnessSet, active_rms, robustness_root
from compressor.errors import DataError

ROOT = robustness_root()
MANIFEST = json.loads((ROOT / "manifest.json").read_text())


@pytest.fixture(scope="module")
def ds() -> RobustnessSet:
    return RobustnessSet()


def test_active_rms_of_bursts():
    # 1 s of a 0.1-amplitude sine, 1 s of silence: active RMS is the sine's, 0.1/sqrt(2)
    t = np.arange(16000) / 16000
    x = np.concatenate([0.1 * np.sin(2 * np.pi * 440 * t), np.zeros(16000)])
    assert 20 * math.log10(active_rms(x)) == pytest.approx(20 * math.log10(0.1 / math.sqrt(2)), abs=0.05)
    assert active_rms(3 * x) == pytest.approx(3 * active_rms(x), rel=1e-9)


def test_count_and_defaults(ds):
    assert LEVELS_DBFS == (-45, -40, -35, -30, -25, -20, -15, -10)
    assert len(ds.utterances) == len(MANIFEST["utterances"]) >= 12
    assert len(ds) == len(CONDITIONS) * len(LEVELS_DBFS) * len(ds.utterances)
    assert ds.sample_rate == 16000
    sub = RobustnessSet(levels=(-30, -20), conditions=("pink", "reverb"), max_utterances=3)
    assert len(sub) == 2 * 2 * 3
    assert {sub[i]["condition"] for i in range(len(sub))} == {"pink", "reverb"}


def test_levels_and_snrs(ds):
    nu, nl = len(ds.utterances), len(ds.levels)
    for condition in CONDITIONS:
        for li, level in enumerate(ds.levels):
            for u in (0, 5, nu - 1):
                item = ds[CONDITIONS.index(condition) * nu * nl + li * nu + u]
                assert (item["condition"], item["level_dbfs"]) == (condition, level)
                src, mix = item["sources"].numpy(), item["mixture"].numpy()
                assert src.shape == (1, mix.shape[0]) and mix.dtype == np.float32
                assert 20 * math.log10(active_rms(src[0])) == pytest.approx(level, abs=0.5)
                assert np.max(np.abs(mix)) <= 1.0
                if not item["clipped"]:
                    noise = mix.astype(np.float64) - src[0]
                    measured = 10 * math.log10(np.sum(src[0].astype(np.float64) ** 2) / np.sum(noise**2))
                    assert measured == pytest.approx(item["snr_db"], abs=0.01)
                    assert item["snr_db"] == pytest.approx(ds.snr_for(condition, u), abs=0.01)


def test_every_cell_has_the_same_snr_mix(ds):
    assert len(ds.utterances) % len(SNRS_DB) == 0
    for condition in CONDITIONS:
        snrs = sorted(ds.snr_for(condition, u) for u in range(len(ds.utterances)))
        assert snrs == sorted(list(SNRS_DB) * (len(ds.utterances) // len(SNRS_DB)))


def test_levels_differ_only_in_scale(ds):
    nu = len(ds.utterances)
    a, b = ds[2 * nu + 4], ds[3 * nu + 4]  # same condition and utterance, -35 and -30 dBFS
    assert not a["clipped"] and not b["clipped"]
    torch.testing.assert_close(b["mixture"], a["mixture"] * 10 ** (5 / 20), rtol=1e-4, atol=1e-7)


def test_deterministic(ds):
    other = RobustnessSet()
    for i in (0, 77, len(ds) - 1):
        x, y = ds[i], other[i]
        assert torch.equal(x["mixture"], y["mixture"]) and torch.equal(x["sources"], y["sources"])
        assert x["id"] == y["id"] and x["snr_db"] == y["snr_db"]


def test_clipping_is_counted():
    ds = RobustnessSet(levels=(-10,), conditions=("white",))
    items = [ds[i] for i in range(len(ds))]
    assert ds.clipped_count() == sum(it["clipped"] for it in items) > 0
    assert all(float(it["mixture"].abs().max()) <= 1.0 for it in items)
    quiet = RobustnessSet(levels=(-45,), conditions=("white",))
    assert not any(quiet[i]["clipped"] for i in range(len(quiet)))


def test_babble_uses_no_test_voice():
    test_voices = {u["voice"] for u in MANIFEST["utterances"]}
    babble = next(n for n in MANIFEST["noise_info"] if n["name"] == "babble")
    assert set(babble["talkers"]) == set(MANIFEST["babble_voices"]) and len(babble["talkers"]) >= 4
    assert not test_voices & set(babble["talkers"])
    # nor the same recorded speaker through another engine (festival kal = flite kal, slt = slt)
    assert not {_speaker(v) for v in test_voices} & {_speaker(v) for v in babble["talkers"]}


def _speaker(voice: str) -> str:
    engine, name = voice.split(":", 1)
    if engine not in ("festival", "flite"):
        return voice
    return {"kal_diphone": "kal", "kal16": "kal", "ked_diphone": "ked", "cmu_us_slt_arctic_hts": "slt"}.get(name, name)


def test_shipped_folder_is_small_and_clean():
    size = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert size < 5 * 2**20
    for name in ("ATTRIBUTION.md", "LICENSE.md", "README.md"):
        assert (ROOT / name).is_file()
    for u in MANIFEST["utterances"]:
        x = read_audio(ROOT / u["file"], 16000, resample=False, mono=False)
        assert 2.5 <= len(x) / 16000 <= 4.0 and u["source_rate"] in (8000, 16000, 22050, 32000, 44100)
    for f in set(MANIFEST["noises"].values()) | set(MANIFEST["rirs"]):
        read_audio(ROOT / f, 16000, resample=False, mono=False)


def test_open_dataset_and_bad_options():
    ds = open_dataset("robustness", max_utterances=2)
    assert isinstance(ds, RobustnessSet) and len(ds) == len(CONDITIONS) * len(LEVELS_DBFS) * 2
    with pytest.raises(DataError):
        RobustnessSet(conditions=("rain",))
    with pytest.raises(DataError):
        RobustnessSet(sample_rate=8000)
    with pytest.raises(IndexError):
        ds[len(ds)]
