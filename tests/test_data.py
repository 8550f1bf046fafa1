"""Tests of compressor.data: audio I/O, datasets, the embedded demo set."""

from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from compressor.data import (
    LibriMixDataset,
    MixingDataset,
    PairedFolderDataset,
    demo_dataset,
    demo_root,
    from_int16,
    open_dataset,
    read_audio,
    to_int16,
    write_audio,
)
from compressor.data.audio import snr_db
from compressor.errors import DataError

SR = 16000


def tone(seconds=0.5, sr=SR, freq=440.0, amp=0.3, seed=None):
    t = np.arange(int(seconds * sr)) / sr
    x = amp * np.sin(2 * np.pi * freq * t)
    if seed is not None:
        x = x + 0.05 * np.random.default_rng(seed).standard_normal(len(t))
    return x.astype(np.float32)


def write_raw(path: Path, data, sr=SR, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, sr, subtype=subtype)
    return path


# ----------------------------------------------------------------------------- read_audio


def test_read_audio_roundtrip_mono(tmp_path):
    p = write_raw(tmp_path / "a.wav", tone())
    x = read_audio(p)
    assert x.dtype == np.float32 and x.shape == (SR // 2,)
    np.testing.assert_allclose(x, tone(), atol=1 / 32768)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothere.wav"):
        read_audio(tmp_path / "nothere.wav")


def test_non_audio_file(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("this is not audio at all\n" * 20)
    with pytest.raises(DataError, match="notes.wav"):
        read_audio(p)


def test_empty_audio(tmp_path):
    p = write_raw(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32))
    assert sf.info(str(p)).frames == 0
    with pytest.raises(DataError, match="empty.wav"):
        read_audio(p)


def test_nan_samples(tmp_path):
    x = tone()
    x[100] = np.nan
    p = write_raw(tmp_path / "nan.wav", x, subtype="FLOAT")
    with pytest.raises(DataError, match="nan.wav"):
        read_audio(p)


def test_wrong_rate_without_resample(tmp_path):
    p = write_raw(tmp_path / "eight.wav", tone(sr=8000), sr=8000)
    with pytest.raises(DataError, match="eight.wav") as ei:
        read_audio(p, 16000, resample=False)
    assert "8000" in str(ei.value) and "16000" in str(ei.value)


def test_resample_8k_to_16k_logs_warning(tmp_path, caplog):
    p = write_raw(tmp_path / "eight.wav", tone(1.0, sr=8000), sr=8000)
    with caplog.at_level(logging.WARNING, logger="compressor.data"):
        x = read_audio(p, 16000)
    assert x.shape == (16000,)
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("eight.wav" in m and "8000" in m and "16000" in m for m in msgs), msgs
    # Still the same 440 Hz tone.
    spec = np.abs(np.fft.rfft(x))
    assert abs(np.argmax(spec) * 16000 / len(x) - 440) <= 2


def test_stereo_downmix_and_refusal(tmp_path, caplog):
    left, right = tone(freq=300), tone(freq=500)
    p = write_raw(tmp_path / "stereo.wav", np.stack([left, right], axis=1))
    with caplog.at_level(logging.WARNING, logger="compressor.data"):
        x = read_audio(p)
    np.testing.assert_allclose(x, (left + right) / 2, atol=2 / 32768)
    assert any("stereo.wav" in r.getMessage() for r in caplog.records)
    with pytest.raises(DataError, match="stereo.wav"):
        read_audio(p, mono=False)


# ----------------------------------------------------------------------------- write_audio


def test_int16_helpers():
    x = np.array([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0 - 1 / 32768, 1.0, 2.0])
    q = to_int16(x)
    assert q.dtype == np.int16
    assert q.tolist() == [-32768, -32768, -16384, 0, 16384, 32767, 32767, 32767]
    assert to_int16(np.array([1.4 / 32768, 1.6 / 32768])).tolist() == [1, 2]
    np.testing.assert_array_equal(to_int16(from_int16(q)), q)


@pytest.mark.parametrize("ext", [".flac", ".wav"])
def test_write_audio_roundtrip_exact(tmp_path, ext):
    q = np.random.default_rng(0).integers(-32768, 32768, size=4000).astype(np.int16)
    x = from_int16(q)
    p = write_audio(tmp_path / "sub" / "dir" / f"x{ext}", x, SR)  # creates parents
    assert p.exists()
    info = sf.info(str(p))
    assert info.samplerate == SR and info.subtype == "PCM_16"
    np.testing.assert_array_equal(to_int16(read_audio(p)), q)
    assert [f.name for f in p.parent.iterdir()] == [p.name]  # no temp file left
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_write_audio_refuses_nan_and_leaves_nothing(tmp_path):
    x = tone()
    x[5] = np.nan
    with pytest.raises(DataError, match="bad.flac"):
        write_audio(tmp_path / "bad.flac", x, SR)
    assert list(tmp_path.iterdir()) == []


def test_write_audio_atomic_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "keep.flac"
    write_audio(target, tone(), SR)
    before = target.read_bytes()

    def broken(path, data, *a, **k):
        Path(path).write_bytes(b"partial")  # half-written temp file
        raise RuntimeError("disk full")

    monkeypatch.setattr(sf, "write", broken)
    with pytest.raises(DataError, match="keep.flac"):
        write_audio(target, tone(freq=1000), SR)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.flac"]


def test_write_audio_clips_with_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="compressor.data"):
        p = write_audio(tmp_path / "loud.wav", np.array([0.0, 1.7, -2.0, 0.5]), SR)
    assert any("loud.wav" in r.getMessage() for r in caplog.records)
    x = read_audio(p)
    assert x.max() <= 1.0 and x.min() >= -1.0 and x[1] > 0.99


# ----------------------------------------------------------------------------- MixingDataset


@pytest.fixture
def mix_dirs(tmp_path):
    for i in range(3):
        write_audio(tmp_path / "speech" / f"s{i}.wav", tone(1.0 + 0.25 * i, freq=200 + 100 * i, seed=i), SR)
    rng = np.random.default_rng(5)
    write_audio(tmp_path / "noise" / "white.wav", 0.1 * rng.standard_normal(SR // 3), SR)  # shorter: loops
    write_audio(tmp_path / "noise" / "hum.flac", tone(2.0, freq=50, amp=0.2, seed=9), SR)
    return tmp_path


@pytest.mark.parametrize("target", [-5.0, 0.0, 7.5, 20.0])
def test_mixing_fixed_snr(mix_dirs, target):
    ds = MixingDataset(mix_dirs / "speech", mix_dirs / "noise", snr_db=target, segment_seconds=0.8)
    for i in range(len(ds)):
        it = ds[i]
        mix, src = it["mixture"].numpy(), it["sources"].numpy()
        assert src.shape == (1, len(mix)) == (1, int(0.8 * SR))
        measured = 10 * np.log10(np.sum(src[0].astype(np.float64) ** 2) / np.sum((mix - src[0]).astype(np.float64) ** 2))
        assert abs(measured - target) < 0.1
        assert abs(it["snr_db"] - target) < 0.1
        assert np.abs(mix).max() <= 0.99 + 1e-6


def test_mixing_random_snr_range_and_determinism(mix_dirs):
    make = lambda seed: MixingDataset(  # noqa: E731
        mix_dirs / "speech", mix_dirs / "noise", snr_range_db=(-5, 20), seed=seed, items_per_epoch=12, segment_seconds=0.5
    )
    a, b = make(3), make(3)
    snrs = []
    for i in range(12):
        x, y = a[i], b[i]
        assert torch.equal(x["mixture"], y["mixture"]) and torch.equal(x["sources"], y["sources"])
        assert x["id"] == y["id"]
        assert -5.1 < x["snr_db"] < 20.1
        snrs.append(x["snr_db"])
    assert np.std(snrs) > 2  # really random over the range
    # Order of access does not matter (each item has its own generator).
    assert torch.equal(make(3)[7]["mixture"], a[7]["mixture"])
    # Another epoch or another seed gives other items; going back gives the same.
    first = a[4]["mixture"].clone()
    a.set_epoch(1)
    assert not torch.equal(a[4]["mixture"], first)
    a.set_epoch(0)
    assert torch.equal(a[4]["mixture"], first)
    assert not torch.equal(make(4)[4]["mixture"], first)


def test_mixing_batches_with_default_collate(mix_dirs):
    ds = MixingDataset(mix_dirs / "speech", mix_dirs / "noise", segment_seconds=2.0)  # longer than files: padded
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=3)))
    assert batch["mixture"].shape == (3, 2 * SR) and batch["sources"].shape == (3, 1, 2 * SR)
    assert ds.sample_rate == SR and ds.num_sources == 1


# ----------------------------------------------------------------------------- PairedFolderDataset


def make_pairs(root: Path, n=3, lengths=None):
    for i in range(n):
        clean = tone(0.5, freq=300 + 50 * i)
        noise = 0.05 * np.random.default_rng(i).standard_normal(len(clean)).astype(np.float32)
        write_audio(root / "clean" / f"u{i}.wav", clean, SR)
        noisy = clean + noise
        if lengths and i in lengths:
            noisy = noisy[: lengths[i]]
        write_audio(root / "noisy" / f"u{i}.wav", noisy, SR)


def test_paired_folder_ok(tmp_path):
    make_pairs(tmp_path)
    ds = open_dataset(tmp_path)
    assert isinstance(ds, PairedFolderDataset) and len(ds) == 3
    it = ds[1]
    assert it["id"] == "u1" and it["sources"].shape == (1, SR // 2)
    expected = snr_db(it["sources"][0].numpy(), it["mixture"].numpy())
    assert math.isfinite(it["snr_db"]) and abs(it["snr_db"] - expected) < 1e-6
    assert 10 < it["snr_db"] < 20


def test_paired_folder_missing_partner(tmp_path):
    make_pairs(tmp_path)
    write_audio(tmp_path / "noisy" / "orphan.wav", tone(), SR)
    with pytest.raises(DataError, match="orphan.wav"):
        PairedFolderDataset(tmp_path)


def test_paired_folder_length_mismatch(tmp_path):
    make_pairs(tmp_path, lengths={2: 4000})
    ds = PairedFolderDataset(tmp_path)
    ds[0]
    with pytest.raises(DataError, match="u2.wav"):
        ds[2]


# ----------------------------------------------------------------------------- LibriMix


def make_librimix(root: Path, relative: bool) -> Path:
    """A tiny Libri2Mix-like tree: wav16k/min/{metadata,test/{s1,s2,noise,mix_*}}."""
    base = root / "Libri2Mix" / "wav16k" / "min"
    meta = base / "metadata"
    rows = {"mix_clean": [], "mix_single": [], "mix_both": []}
    for i in range(2):
        mid = f"{100 + i}-1-0000_{200 + i}-2-0000"
        s1, s2 = tone(0.4, freq=300 + i * 10), tone(0.4, freq=700, amp=0.2)
        noise = 0.05 * np.random.default_rng(i).standard_normal(len(s1)).astype(np.float32)
        paths = {}
        for name, x in (("s1", s1), ("s2", s2), ("noise", noise), ("mix_clean", s1 + s2),
                        ("mix_single", s1 + noise), ("mix_both", s1 + s2 + noise)):
            p = base / "test" / name / f"{mid}.wav"
            write_audio(p, x, SR)
            paths[name] = os.path.relpath(p, meta) if relative else str(p)
        n = len(s1)
        rows["mix_clean"].append([mid, paths["mix_clean"], paths["s1"], paths["s2"], n])
        rows["mix_single"].append([mid, paths["mix_single"], paths["s1"], paths["noise"], n])
        rows["mix_both"].append([mid, paths["mix_both"], paths["s1"], paths["s2"], paths["noise"], n])
    meta.mkdir(parents=True, exist_ok=True)
    heads = {
        "mix_clean": ["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "length"],
        "mix_single": ["mixture_ID", "mixture_path", "source_1_path", "noise_path", "length"],
        "mix_both": ["mixture_ID", "mixture_path", "source_1_path", "source_2_path", "noise_path", "length"],
    }
    for kind, rs in rows.items():
        with open(meta / f"mixture_test_{kind}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(heads[kind])
            w.writerows(rs)
    return base


@pytest.mark.parametrize("relative", [False, True])
def test_librimix_enh_single(tmp_path, relative):
    base = make_librimix(tmp_path, relative)
    ds = LibriMixDataset(base / "metadata" / "mixture_test_mix_single.csv", task="enh_single")
    assert len(ds) == 2 and ds.num_sources == 1 and ds.sample_rate == SR
    it = ds[0]
    assert it["id"] == "100-1-0000_200-2-0000"
    assert it["sources"].shape == (1, int(0.4 * SR)) == (1, it["mixture"].shape[0])
    np.testing.assert_allclose(it["sources"][0].numpy(), tone(0.4, freq=300), atol=1e-4)
    assert 10 < it["snr_db"] < 20  # s1 at 0.3 amplitude over noise at 0.05 rms


def test_librimix_sep_clean_from_folder_and_factory(tmp_path):
    base = make_librimix(tmp_path, relative=True)
    ds = LibriMixDataset(base, task="sep_clean", segment_seconds=0.25)
    assert ds.num_sources == 2 and ds.csv_path.name == "mixture_test_mix_clean.csv"
    it = ds[1]
    assert it["sources"].shape == (2, 4000) and it["mixture"].shape == (4000,)
    np.testing.assert_allclose(it["mixture"].numpy(), it["sources"].sum(0).numpy(), atol=3 / 32768)
    assert math.isnan(it["snr_db"])  # no noise in mix_clean
    noisy = LibriMixDataset(base, task="sep_noisy")[0]
    assert noisy["sources"].shape[0] == 2 and 5 < noisy["snr_db"] < 30
    ds2 = open_dataset(base / "metadata" / "mixture_test_mix_clean.csv")
    assert isinstance(ds2, LibriMixDataset) and ds2.task == "sep_clean"


def test_librimix_bad_csv(tmp_path):
    p = tmp_path / "mixture_test_mix_clean.csv"
    p.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(DataError, match="mixture_test_mix_clean.csv"):
        LibriMixDataset(p, task="sep_clean")


def test_unknown_layout(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DataError, match="noisy/ and clean/"):
        open_dataset(tmp_path)


# ----------------------------------------------------------------------------- demo set


def read_meta(split):
    with open(demo_root() / split / "metadata.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_demo_splits_exist_and_are_16k():
    root = demo_root()
    for sub in ("train/speech", "train/noise", "valid/noisy", "valid/clean", "test/noisy", "test/clean"):
        files = sorted((root / sub).glob("*.flac"))
        assert files, sub
        for f in files[:: max(1, len(files) // 8)]:
            info = sf.info(str(f))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16"), f
    assert (root / "LICENSE.md").exists() and (root / "ATTRIBUTION.md").exists()
    size = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    assert size < 12e6


def test_demo_test_split_covers_snr_buckets():
    ds = demo_dataset("test")
    assert isinstance(ds, PairedFolderDataset) and 35 <= len(ds) <= 45
    rows = {r["id"]: r for r in read_meta("test")}
    snrs = []
    for i in range(len(ds)):
        it = ds[i]
        assert 2.5 <= it["mixture"].shape[0] / SR <= 4.5
        assert abs(it["snr_db"] - float(rows[it["id"]]["snr_db"])) < 0.01  # metadata is true
        snrs.append(it["snr_db"])
    snrs = np.array(snrs)
    low, mid, high = (snrs < 2).sum(), ((snrs >= 2) & (snrs <= 10)).sum(), (snrs > 10).sum()
    assert min(low, mid, high) >= 0.2 * len(snrs), (low, mid, high)
    assert {r["language"] for r in rows.values()} == {"en", "fr"}


def test_demo_utterances_disjoint_across_splits():
    train = {p.stem for p in (demo_root() / "train" / "speech").glob("*.flac")}
    valid = {r["utterance"] for r in read_meta("valid")}
    test = {r["utterance"] for r in read_meta("test")}
    assert len(train) > 50 and len(valid) >= 15 and len(test) >= 35
    assert not (train & valid) and not (train & test) and not (valid & test)
    # Also no prompt text (same prompt name in the other language) crosses splits.
    prompt = lambda u: u.split("__", 1)[1]  # noqa: E731
    tp, vp, sp = ({prompt(u) for u in s} for s in (train, valid, test))
    assert not (tp & vp) and not (tp & sp) and not (vp & sp)
    # Files are named after their utterance.
    assert all(p.stem.split("__", 1)[1] in test for p in (demo_root() / "test" / "clean").glob("*.flac"))
    for lang in ("en", "fr"):
        assert any(u.startswith(lang) for u in train) and any(u.startswith(lang) for u in test)


def test_demo_train_mixing():
    ds = demo_dataset("train", segment_seconds=1.0, seed=1, items_per_epoch=4)
    assert isinstance(ds, MixingDataset) and len(ds) == 4
    it = ds[2]
    assert it["mixture"].shape == (SR,) and -5.1 <= it["snr_db"] <= 20.1 or math.isnan(it["snr_db"])
    assert isinstance(open_dataset("demo:valid"), PairedFolderDataset)
