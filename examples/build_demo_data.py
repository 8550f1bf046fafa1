#!/usr/bin/env python3
"""Rebuild the embedded demo data set (examples/demo_data) from Debian packages.

The demo set is a small speech-enhancement corpus made only from material that
Debian redistributes:

* speech: asterisk-core-sounds-en-g722 (Allison Smith, English) and
  asterisk-core-sounds-fr-g722 (June Wallack, French), CC-BY-SA-3.0;
* noise: a few recordings from sonic-pi-samples and lmms-common (licenses in
  ATTRIBUTION.md), generated white/pink/brown noise, and babble summed from
  training-split speech.

Layout written under --out::

    train/speech/*.flac  train/noise/*.flac        (for MixingDataset)
    valid/noisy/*.flac   valid/clean/*.flac  valid/metadata.csv
    test/noisy/*.flac    test/clean/*.flac   test/metadata.csv
    LICENSE.md  ATTRIBUTION.md  manifest.json

Everything is 16 kHz mono 16-bit FLAC.  The build is deterministic (fixed
seed): the same packages give the same files.  It needs ``apt-get`` (or
``--debs`` pointing at already downloaded .deb files), ``dpkg-deb`` and
``ffmpeg``.

    python examples/build_demo_data.py --out examples/demo_data
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import debian_packages  # noqa: E402  (examples/, beside this file)
from debian_packages import run  # noqa: E402
from compressor.data.audio import rms, snr_db, to_int16, write_audio, from_int16  # noqa: E402
from compressor.data.mixing import colored_noise, loop_crop, mix_at_snr  # noqa: E402

SR = 16000
SEED = 20240607

SPEECH_PACKAGES = {
    "en": ("asterisk-core-sounds-en-g722", "usr/share/asterisk/sounds/en_US_f_Allison"),
    "fr": ("asterisk-core-sounds-fr-g722", "usr/share/asterisk/sounds/fr_CA_f_June"),
}
NOISE_PACKAGES = ("sonic-pi-samples", "lmms-common")

# Speech preparation
MIN_SPEECH_S = 1.5  # shorter clips are skipped
MAX_TRAIN_CLIP_S = 10.0
SPEECH_RMS_DBFS = -33.0  # level of the active (non-silent) part (LibriMix uses -25..-33 LUFS)
SPEECH_PEAK = 0.9
TRAIN_SECONDS_PER_LANG = 138.0  # about 4.6 min of training speech in all

# Paired splits: (number of pairs per language, min clip length, max length)
PAIRED = {
    "valid": (10, 2.6, 3.0),
    "test": (20, 3.0, 3.2),
}
SNR_RANGE = (-5.0, 20.0)

# Noise recordings: (package, path in package, output name, license, copyright, source, splits)
# splits: which splits get a segment; time is cut train 40 % | valid 20 % | test 40 %.
ALL_SPLITS = ("train", "valid", "test")
REAL_NOISES = [
    (
        "sonic-pi-samples", "usr/share/sonic-pi/samples/vinyl_hiss.flac", "vinyl_hiss",
        "CC0-1.0", "2011 veezay", "http://freesound.org/people/veezay/sounds/130393/", ALL_SPLITS,
    ),
    (
        "sonic-pi-samples", "usr/share/sonic-pi/samples/loop_3d_printer.flac", "printer_3d",
        "MIT (Debian copyright, Files: *)", "2016 Samuel Aaron <samaaron@gmail.com>",
        "https://github.com/samaaron/sonic-pi (etc/samples/loop_3d_printer.flac)", ALL_SPLITS,
    ),
    (
        "sonic-pi-samples", "usr/share/sonic-pi/samples/ambi_sauna.flac", "sauna_ambience",
        "MIT (Debian copyright, Files: *); upstream README: CC0 from freesound",
        "2016 Samuel Aaron <samaaron@gmail.com>; recording by hullum",
        "https://freesound.org/people/hullum/sounds/415551/", ALL_SPLITS,
    ),
    (
        "lmms-common", "usr/share/lmms/samples/misc/raving_crowd01.ogg", "crowd",
        "GPL-2+", "LMMS developers (see debian/copyright, Files: *)",
        "https://lmms.io (data/samples/misc/raving_crowd01.ogg)", ALL_SPLITS,
    ),
    (
        "lmms-common", "usr/share/lmms/samples/misc/applause01.ogg", "applause",
        "GPL-2+", "LMMS developers (see debian/copyright, Files: *)",
        "https://lmms.io (data/samples/misc/applause01.ogg)", ("train",),
    ),
]
SPLIT_FRACTIONS = {"train": (0.0, 0.4), "valid": (0.4, 0.6), "test": (0.6, 1.0)}
NOISE_RMS_DBFS = -36.0
COLORED_SECONDS = {"train": 3.0, "valid": 2.0, "test": 3.0}
BABBLE_SECONDS = {"train": 6.0, "valid": 3.0, "test": 4.0}
BABBLE_TALKERS = (4, 6)


# ----------------------------------------------------------------------------- helpers


def ffmpeg_decode(path: Path, fmt: str | None = None) -> np.ndarray:
    """Decode any file ffmpeg reads to 16 kHz mono float32."""
    cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin"]
    if fmt:
        cmd += ["-f", fmt]
    cmd += ["-i", str(path), "-ac", "1", "-ar", str(SR), "-f", "f32le", "-"]
    out = run(cmd, stdout=subprocess.PIPE).stdout
    return np.frombuffer(out, dtype="<f4").astype(np.float32)


def fetch_packages(work: Path, debs: Path | None) -> dict[str, Path]:
    """Download (or reuse) and unpack the .deb files; return package -> root."""
    names = [p for p, _ in SPEECH_PACKAGES.values()] + list(NOISE_PACKAGES)
    return {name: root for name, (root, _) in debian_packages.fetch_packages(names, work, debs).items()}


def trim_silence(x: np.ndarray, rel_db: float = -40.0, margin_s: float = 0.08) -> np.ndarray:
    """Cut leading/trailing frames quieter than rel_db below the loudest frame."""
    frame = int(0.02 * SR)
    n = len(x) // frame
    if n == 0:
        return x
    e = np.sqrt(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1)) + 1e-12
    thr = max(e.max() * 10 ** (rel_db / 20), 10 ** (-60 / 20))
    active = np.flatnonzero(e > thr)
    if active.size == 0:
        return x[:0]
    m = int(margin_s * SR)
    start = max(active[0] * frame - m, 0)
    stop = min((active[-1] + 1) * frame + m, len(x))
    return x[start:stop]


def active_rms(x: np.ndarray) -> float:
    frame = int(0.02 * SR)
    n = len(x) // frame
    if n == 0:
        return rms(x)
    e = np.sqrt(np.mean(x[: n * frame].reshape(n, frame).astype(np.float64) ** 2, axis=1))
    act = e[e > e.max() * 10 ** (-35 / 20)]
    return float(np.sqrt(np.mean(act**2))) if act.size else rms(x)


def normalise(x: np.ndarray, rms_dbfs: float, peak: float, active: bool = True) -> np.ndarray:
    r = active_rms(x) if active else rms(x)
    if r <= 0:
        return x
    y = x * (10 ** (rms_dbfs / 20) / r)
    p = float(np.max(np.abs(y)))
    if p > peak:
        y = y * (peak / p)
    return y.astype(np.float32)


def quantise(x: np.ndarray) -> np.ndarray:
    """What the 16-bit file will hold (so stored SNRs are exact)."""
    return from_int16(to_int16(x))


def debian_paragraphs(copyright_file: Path) -> list[dict[str, str]]:
    """Parse a machine-readable debian/copyright into its paragraphs (field -> value)."""
    paras, cur, field = [], {}, None
    for line in copyright_file.read_text(errors="replace").splitlines():
        if not line.strip():
            if cur:
                paras.append(cur)
            cur, field = {}, None
        elif line[0] in " \t" and field:
            cur[field] += "\n" + line.strip()
        elif ":" in line:
            field, _, value = line.partition(":")
            cur[field] = value.strip()
    if cur:
        paras.append(cur)
    return paras


def debian_copyright(roots: dict[str, Path], pkg: str, pattern: str = "*") -> str:
    """The Copyright field of the ``Files: pattern`` paragraph of a package's copyright file."""
    f = roots[pkg] / "usr" / "share" / "doc" / pkg / "copyright"
    for para in debian_paragraphs(f):
        if para.get("Files", "").split() == [pattern]:
            return para.get("Copyright", "").strip()
    return ""


def debian_license_text(roots: dict[str, Path], pkg: str, name: str) -> str:
    """The full text of a stand-alone ``License: name`` paragraph."""
    f = roots[pkg] / "usr" / "share" / "doc" / pkg / "copyright"
    for para in debian_paragraphs(f):
        if "Files" not in para and para.get("License", "").startswith(name) and "\n" in para["License"]:
            body = para["License"].split("\n", 1)[1]
            return "\n".join("" if ln == "." else ln for ln in body.splitlines())
    return ""


@dataclass
class Clip:
    lang: str
    key: str  # prompt name, same across languages (e.g. "vm-deleted", "digits-1")
    source: str  # package:path
    audio: np.ndarray

    @property
    def seconds(self) -> float:
        return len(self.audio) / SR

    @property
    def uid(self) -> str:
        return f"{self.lang}__{self.key}"


def load_speech(roots: dict[str, Path]) -> list[Clip]:
    clips = []
    for lang, (pkg, sub) in SPEECH_PACKAGES.items():
        base = roots[pkg] / sub
        files = sorted(base.rglob("*.g722"))
        print(f"decoding {len(files)} {lang} prompts", flush=True)
        for f in files:
            rel = f.relative_to(base).with_suffix("")
            key = str(rel).replace("/", "-")
            x = trim_silence(ffmpeg_decode(f, fmt="g722"))
            if len(x) < MIN_SPEECH_S * SR or rms(x) < 1e-4:
                continue
            x = normalise(x, SPEECH_RMS_DBFS, SPEECH_PEAK)
            clips.append(Clip(lang, key, f"{pkg}:/{sub}/{rel}.g722", x))
    return clips


def assign_splits(clips: list[Clip], rng: np.random.Generator):
    """Choose valid/test clips, then train; prompts (keys) never cross splits."""
    keys = sorted({c.key for c in clips})
    order = [keys[i] for i in rng.permutation(len(keys))]
    by = {(c.lang, c.key): c for c in clips}
    taken: dict[str, str] = {}  # key -> split
    chosen: dict[str, list[Clip]] = {"valid": [], "test": []}
    for split in ("test", "valid"):
        per_lang, lo, hi = PAIRED[split]
        for lang in SPEECH_PACKAGES:
            got = 0
            for key in order:
                if got == per_lang:
                    break
                if taken.get(key, split) != split:
                    continue
                c = by.get((lang, key))
                if c is None or c.seconds < lo:
                    continue
                taken[key] = split
                c.audio = c.audio[: int(hi * SR)]
                chosen[split].append(c)
                got += 1
            if got < per_lang:
                sys.exit(f"not enough {lang} clips for {split}")
    pool = [by[(lang, key)] for key in order for lang in SPEECH_PACKAGES if key not in taken and (lang, key) in by]
    train, leftover = [], []
    total = {lang: 0.0 for lang in SPEECH_PACKAGES}
    for c in pool:
        if c.seconds <= MAX_TRAIN_CLIP_S and total[c.lang] + c.seconds <= TRAIN_SECONDS_PER_LANG:
            train.append(c)
            total[c.lang] += c.seconds
        else:
            leftover.append(c)
    return chosen["valid"], chosen["test"], train, leftover


def make_babble(pool: list[Clip], seconds: float, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    n = int(seconds * SR)
    k = int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))
    out = np.zeros(n)
    used = []
    for _ in range(k):
        c = pool.pop(int(rng.integers(len(pool))))
        out += loop_crop(c.audio / max(rms(c.audio), 1e-9), n, int(rng.integers(len(c.audio))))
        used.append(c.uid)
    return out.astype(np.float32), used


def stratified_snrs(n: int, rng: np.random.Generator) -> np.ndarray:
    lo, hi = SNR_RANGE
    u = (rng.permutation(n) + rng.uniform(size=n)) / n
    return lo + (hi - lo) * u


# ----------------------------------------------------------------------------- build


def build(out: Path, work: Path, debs: Path | None) -> dict:
    rng = np.random.default_rng(SEED)
    roots = fetch_packages(work, debs)
    clips = load_speech(roots)
    valid, test, train, leftover = assign_splits(clips, rng)

    if out.exists():
        for sub in ("train", "valid", "test"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    # --- noises, cut into disjoint segments per split
    noises: dict[str, dict[str, np.ndarray]] = {s: {} for s in ALL_SPLITS}
    noise_info = []
    for pkg, rel, name, lic, holder, src, splits in REAL_NOISES:
        x = trim_silence(ffmpeg_decode(roots[pkg] / rel), rel_db=-50)
        x = normalise(x, NOISE_RMS_DBFS, 0.9, active=False)
        for s in splits:
            a, b = SPLIT_FRACTIONS[s] if len(splits) > 1 else (0.0, 1.0)
            noises[s][name] = x[int(a * len(x)) : int(b * len(x))]
        noise_info.append(
            {"name": name, "package": pkg, "file": "/" + rel, "license": lic, "copyright": holder,
             "source": src, "splits": list(splits), "seconds": round(len(x) / SR, 2)}
        )
    for s in ALL_SPLITS:
        for kind in ("white", "pink", "brown"):
            x = colored_noise(kind, int(COLORED_SECONDS[s] * SR), rng)
            noises[s][f"{kind}_noise"] = x * np.float32(10 ** (NOISE_RMS_DBFS / 20))
    babble_sources = {}
    for s in ALL_SPLITS:
        b, used = make_babble(leftover, BABBLE_SECONDS[s], rng)
        noises[s]["babble"] = normalise(b, NOISE_RMS_DBFS, 0.9, active=False)
        babble_sources[s] = used

    # --- train: speech + noise files for on-the-fly mixing
    for c in train:
        write_audio(out / "train" / "speech" / f"{c.uid}.flac", c.audio, SR)
    for name, x in noises["train"].items():
        write_audio(out / "train" / "noise" / f"{name}.flac", x, SR)

    # --- valid / test: fixed mixtures
    summary = {}
    for split, chosen in (("valid", valid), ("test", test)):
        prefix = split[0]
        order = [chosen[i] for i in rng.permutation(len(chosen))]
        snrs = stratified_snrs(len(order), rng)
        names = sorted(noises[split])
        noise_order = [names[i % len(names)] for i in rng.permutation(len(order))]
        rows = []
        for i, (c, target, nname) in enumerate(zip(order, snrs, noise_order)):
            nz = noises[split][nname]
            off = int(rng.integers(len(nz)))
            mix, clean, _ = mix_at_snr(c.audio, loop_crop(nz, len(c.audio), off), float(target))
            mix, clean = quantise(mix), quantise(clean)
            pid = f"{prefix}{i:03d}__{c.uid}"
            write_audio(out / split / "noisy" / f"{pid}.flac", mix, SR)
            write_audio(out / split / "clean" / f"{pid}.flac", clean, SR)
            rows.append({
                "id": pid, "utterance": c.uid, "language": c.lang, "speech_source": c.source,
                "noise": nname, "noise_offset_s": round(off / SR, 4), "target_snr_db": round(float(target), 3),
                "snr_db": round(snr_db(clean, mix), 3), "seconds": round(len(mix) / SR, 3),
            })
        with open(out / split / "metadata.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
        s = np.array([r["snr_db"] for r in rows])
        summary[split] = {
            "pairs": len(rows),
            "seconds": round(sum(r["seconds"] for r in rows), 1),
            "languages": {lang: sum(r["language"] == lang for r in rows) for lang in SPEECH_PACKAGES},
            "snr_buckets": {"low(<2dB)": int((s < 2).sum()), "mid(2-10dB)": int(((s >= 2) & (s <= 10)).sum()),
                            "high(>10dB)": int((s > 10).sum())},
        }
    summary["train"] = {
        "speech_files": len(train),
        "seconds": round(sum(c.seconds for c in train), 1),
        "languages": {lang: round(sum(c.seconds for c in train if c.lang == lang), 1) for lang in SPEECH_PACKAGES},
        "noise_files": sorted(f"{n}.flac" for n in noises["train"]),
    }
    manifest = {
        "sample_rate": SR, "seed": SEED, "splits": summary, "noises": noise_info,
        "babble_talkers_from_train_pool": babble_sources,
        "packages": {p: sorted(x.name for x in (debs or work / "debs").glob(f"{p}_*.deb"))[-1:]
                     for p in [v[0] for v in SPEECH_PACKAGES.values()] + list(NOISE_PACKAGES)},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    write_docs(out, noise_info, manifest, roots)
    return manifest


def write_docs(out: Path, noise_info: list[dict], manifest: dict, roots: dict[str, Path]) -> None:
    pk = manifest["packages"]
    mit = debian_license_text(roots, "sonic-pi-samples", "MIT")
    lines = [
        "# Licenses of the demo data",
        "",
        "The demo data are a derivative of the Debian packages listed in ATTRIBUTION.md and are",
        "built by `examples/build_demo_data.py`. They are NOT covered by the toolkit's Apache-2.0",
        "license. Each file keeps the license of the material it was made from:",
        "",
        "| files | made from | license |",
        "|---|---|---|",
        "| `train/speech/*`, `valid/clean/*`, `test/clean/*` | asterisk-core-sounds-en-g722 / -fr-g722 | CC-BY-SA-3.0 |",
        "| `train/noise/babble.flac` | asterisk-core-sounds-en-g722 / -fr-g722 (training speech) | CC-BY-SA-3.0 |",
        "| `train/noise/{white,pink,brown}_noise.flac` | generated by the build script | CC0-1.0 |",
    ]
    for n in noise_info:
        lines.append(f"| `train/noise/{n['name']}.flac` | {n['package']} `{n['file']}` | {n['license']} |")
    lines += [
        "| `valid/noisy/*`, `test/noisy/*` | clean speech mixed with the noises above | CC-BY-SA-3.0, and the "
        "license of the noise named in the split's `metadata.csv` (CC0, MIT or GPL-2+) |",
        "",
        "Sharing the speech-derived files requires attribution (see ATTRIBUTION.md) and that",
        "adaptations are shared under the same license (CC-BY-SA-3.0,",
        "https://creativecommons.org/licenses/by-sa/3.0/).",
        "Files derived from lmms-common samples are GPL-2+ (https://www.gnu.org/licenses/old-licenses/gpl-2.0.html);",
        "the sample itself is its preferred form for modification, and `build_demo_data.py` is",
        "the script that made the derived files.",
        "",
        "## MIT license of the Sonic Pi files marked MIT above",
        "",
        "Copyright: " + debian_copyright(roots, "sonic-pi-samples"),
        "",
        "```",
        mit,
        "```",
        "",
    ]
    (out / "LICENSE.md").write_text("\n".join(lines))

    att = [
        "# Attribution",
        "",
        "All audio here was made by `examples/build_demo_data.py` from these Debian packages",
        "(Debian 12 \"bookworm\"), resampled to 16 kHz mono, trimmed, level-normalised and mixed.",
        "",
        "## Speech",
        "",
        f"- **asterisk-core-sounds-en-g722** ({', '.join(pk.get('asterisk-core-sounds-en-g722', []))}):",
        "  English prompts recorded by Allison Smith (http://www.theivrvoice.com), copyright",
        "  2003-2010 Allison Smith, financial contributions by Digium, Inc. License: CC-BY-SA-3.0.",
        "  Files used: `/usr/share/asterisk/sounds/en_US_f_Allison/**/*.g722`; the exact prompts",
        "  are the `en__*` names in `train/speech/` and the `utterance`/`speech_source` columns of",
        "  `valid/metadata.csv` and `test/metadata.csv` (babble talkers: `manifest.json`).",
        f"- **asterisk-core-sounds-fr-g722** ({', '.join(pk.get('asterisk-core-sounds-fr-g722', []))}):",
        "  French (Canadian) prompts recorded by June Wallack (http://www.junewallack.com),",
        "  copyright 2006-2008 June Wallack, translated by Clod Patry, Kristopher Lalletti and",
        "  June Wallack; financial contributions by Digium, Inc., Unlimitel, BGM Informatique.",
        "  License: CC-BY-SA-3.0. Files used: `/usr/share/asterisk/sounds/fr_CA_f_June/**/*.g722`",
        "  (`fr__*` names, as above).",
        "",
        "Changes: decoded from G.722, leading/trailing silence trimmed, loudness normalised,",
        "valid/test clips cut to at most 3 s / 3.2 s, noise added at a stated SNR.",
        "",
        "## Noise",
        "",
    ]
    for n in noise_info:
        att.append(
            f"- `{n['name']}`: {n['package']} ({', '.join(pk.get(n['package'], []))}) file `{n['file']}`; "
            f"copyright {n['copyright']}; source {n['source']}; license {n['license']}; "
            + (f"used in splits {', '.join(n['splits'])} as disjoint time segments (train 0-40 %, "
               "valid 40-60 %, test 60-100 % of the file)." if len(n["splits"]) > 1
               else f"used whole, in the {n['splits'][0]} split only.")
        )
    att += [
        "- `white_noise`, `pink_noise`, `brown_noise`: generated (numpy, fixed seed), independent per split; CC0-1.0.",
        "- `babble`: sums of 4-6 training-split prompts (never a valid or test prompt, and none",
        "  of the `train/speech` files); CC-BY-SA-3.0 as the speech.",
        "",
        "sonic-pi-samples: per Debian's copyright file, files without their own stanza are",
        "`Copyright: 2016 Samuel Aaron`, `License: MIT`; `vinyl_hiss.flac` has its own stanza",
        "(2011 veezay, CC0). Sonic Pi's samples/README.md states its samples come from",
        "freesound.org under CC0. lmms-common: Debian's copyright file lists `Files: *` (which",
        "covers the samples used) as GPL-2+ with these copyright holders:",
        "",
        "```",
        debian_copyright(roots, "lmms-common"),
        "```",
        "",
        "The build script's outputs were checked against each package's",
        "`/usr/share/doc/<package>/copyright`; only files whose license allows redistribution",
        "(CC-BY-SA-3.0, CC0-1.0, MIT, GPL-2+) were used.",
        "",
    ]
    (out / "ATTRIBUTION.md").write_text("\n".join(att))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "examples" / "demo_data", help="output folder (default: %(default)s)")
    ap.add_argument("--debs", type=Path, default=None, help="folder with already downloaded .deb files (skips apt-get download)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary folder, removed at the end)")
    args = ap.parse_args(argv)
    for tool in ("dpkg-deb", "ffmpeg"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required (apt-get install {'dpkg' if tool == 'dpkg-deb' else tool})")
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        manifest = build(args.out, args.work, args.debs)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = build(args.out, Path(tmp), args.debs)
    print(json.dumps(manifest["splits"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
