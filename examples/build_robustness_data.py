#!/usr/bin/env python3
"""Build the robustness set's sources (examples/robustness_data) from Debian/PyPI packages.

The robustness set (compressor/data/robustness.py) checks how float and int8
models behave on voices and noises they never saw, at active-speech levels from
-45 to -10 dBFS.  Nothing here may reach training or calibration: no
asterisk-core-sounds voice is used (es_MX_f_Allison, the Spanish set, is Allison
Smith, the English training voice), and no noise of the demo set
(vinyl_hiss, printer_3d, sauna_ambience, crowd, applause).

Speech (16 utterances, 2.5-4 s, trimmed, stored at active level -26 dBFS):

* recorded, genuinely 16 kHz: pocketsphinx-testdata (LibriVox reading, CMU test
  prompts), codec2-examples ``raw/speech_orig_16k.wav``;
* recorded, 8 kHz (band-limited to 4 kHz, upsampled): codec2-examples ``hts1``
  and ``kristoff``;
* synthetic: festival (kal, ked diphone voices at 16 kHz; slt HTS at 32 kHz),
  flite (rms, 16 kHz), espeak-ng (two variants, 22.05 kHz), varied in rate and pitch.

The speech is not compressed or limited: its peaks are 13-21 dB above its
active RMS, so at the set's loudest levels (-10, often -15 dBFS) the mixtures
pass full scale and RobustnessSet clips them, as an ADC would, and marks them.

Noise (10 s each, 16 kHz): white, pink, brown and blue (+3 dB/octave) noise
(generated); babble (5 synthetic talkers that are not test voices); music (a
generated MIDI piece rendered by fluidsynth with fluid-soundfont-gm); hum
(sonic-pi-samples ``ambi_haunted_hum``).  Reverb: three room impulse responses
from pyroomacoustics (image method).

Written under --out: ``speech/*.flac noise/*.flac rir/*.flac manifest.json
ATTRIBUTION.md LICENSE.md README.md``, all 16 kHz mono 16-bit FLAC.  The build is
deterministic (fixed seed).  Needs apt-get (or --debs), dpkg-deb, espeak-ng,
flite, festival with festvox-kallpc16k / festvox-kdlpc16k / festvox-us-slt-hts,
fluidsynth with fluid-soundfont-gm, and the PyPI packages pyroomacoustics and
mido.

    python examples/build_robustness_data.py --out examples/robustness_data
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version as pip_version
from pathlib import Path

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import debian_packages  # noqa: E402  (examples/, beside this file)
from debian_packages import run  # noqa: E402
from compressor.data.audio import resample, rms, write_audio  # noqa: E402
from compressor.data.mixing import colored_noise, loop_crop  # noqa: E402
from compressor.data.robustness import REVERB_NOISE, SAMPLE_RATE as SR, active_rms  # noqa: E402

SEED = 20250117
DATA_PACKAGES = ("pocketsphinx-testdata", "codec2-examples", "sonic-pi-samples")
TOOL_PACKAGES = ("espeak-ng", "flite", "festival", "festvox-kallpc16k", "festvox-kdlpc16k",
                 "festvox-us-slt-hts", "fluidsynth", "fluid-soundfont-gm")
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")

MIN_S, MAX_S = 2.5, 4.0
SPEECH_DBFS = -26.0  # stored active level (the dataset rescales); peaks stay below -4 dBFS
NOISE_S = 10.0
NOISE_RMS_DBFS = -30.0

PS = "usr/share/pocketsphinx/test/data"
C2 = "usr/share/codec2"
#: Recorded speech: (name, voice, package, path, sample rate of a .raw file, clips to take)
RECORDED = [
    ("ps_librivox_0880", "pocketsphinx:librivox", "pocketsphinx-testdata",
     f"{PS}/librivox/sense_and_sensibility_01_austen_64kb-0880.wav", None, 1),
    ("ps_librivox_0930", "pocketsphinx:librivox", "pocketsphinx-testdata",
     f"{PS}/librivox/sense_and_sensibility_01_austen_64kb-0930.wav", None, 1),
    ("ps_goforward", "pocketsphinx:goforward", "pocketsphinx-testdata", f"{PS}/goforward.raw", 16000, 1),
    ("ps_numbers", "pocketsphinx:numbers", "pocketsphinx-testdata", f"{PS}/numbers.raw", 16000, 1),
    ("ps_something", "pocketsphinx:something", "pocketsphinx-testdata", f"{PS}/something.raw", 16000, 1),
    ("ps_cards_005", "pocketsphinx:cards", "pocketsphinx-testdata", f"{PS}/cards/005.wav", None, 1),
    ("c2_speech_orig_16k", "codec2:speech_orig_16k", "codec2-examples", f"{C2}/raw/speech_orig_16k.wav", None, 2),
    ("c2_hts1", "codec2:hts", "codec2-examples", f"{C2}/raw/hts1.raw", 8000, 1),
    ("c2_kristoff", "codec2:kristoff", "codec2-examples", f"{C2}/raw/kristoff.raw", 8000, 1),
]

TEST_TEXTS = [
    "Please set the kitchen timer for twelve minutes.",
    "The train to the coast leaves at half past nine.",
    "She painted the old fence a bright shade of green.",
    "Turn the volume down before the meeting starts.",
    "Our neighbours found a small grey cat in the garden.",
    "Remind me to call the dentist on Thursday morning.",
]


@dataclass(frozen=True)
class Voice:
    """A synthetic voice: engine, voice name and prosody settings."""

    engine: str  # festival | flite | espeak-ng
    name: str
    stretch: float = 1.0  # duration stretch (festival, flite)
    pitch: int | None = None  # espeak-ng -p (0-99) or flite f0 mean (Hz)
    speed: int | None = None  # espeak-ng words per minute

    @property
    def id(self) -> str:
        return f"{self.engine}:{self.name}"


TEST_VOICES = [
    Voice("festival", "kal_diphone", stretch=0.95),
    Voice("festival", "ked_diphone", stretch=1.05),
    Voice("festival", "cmu_us_slt_arctic_hts", stretch=1.0),
    Voice("flite", "rms", stretch=0.9, pitch=95),
    Voice("espeak-ng", "en-us+f3", pitch=70, speed=165),
    Voice("espeak-ng", "en-gb+m3", pitch=30, speed=150),
]
#: Babble talkers: (voice, sentences); none of them is a test voice.
BABBLE = [
    (Voice("flite", "awb", stretch=1.0, pitch=110), [
        "The committee will publish its report next week.",
        "Bring a warm coat because the evening gets cold.",
        "He parked the blue van outside the library."]),
    (Voice("espeak-ng", "de+m1", pitch=45, speed=160), [
        "Das Wetter ist heute sehr schön und warm.",
        "Wir fahren morgen früh mit dem Zug nach Berlin.",
        "Kannst du mir bitte das Salz geben?"]),
    (Voice("espeak-ng", "it+f2", pitch=60, speed=170), [
        "Domani andiamo al mare con tutta la famiglia.",
        "Il caffè in questo bar è davvero buono.",
        "Non ho ancora letto il giornale di oggi."]),
    (Voice("espeak-ng", "nl+m4", pitch=40, speed=155), [
        "De fiets staat achter het huis bij de schuur.",
        "Morgen gaan we samen boodschappen doen.",
        "Het regent al de hele dag in Amsterdam."]),
    (Voice("espeak-ng", "pt-br+f4", pitch=65, speed=165), [
        "O almoço está pronto em cima da mesa.",
        "Vamos ao cinema no sábado à noite.",
        "Ela comprou flores frescas no mercado."]),
]
#: Rooms for the reverb condition: (name, size in m, RT60 s, source, microphone)
ROOMS = [
    ("office", (4.0, 3.5, 2.6), 0.3, (1.2, 1.5, 1.5), (2.9, 2.1, 1.2)),
    ("living_room", (6.0, 5.0, 3.0), 0.5, (1.5, 3.5, 1.6), (4.2, 1.6, 1.1)),
    ("hall", (10.0, 8.0, 3.5), 0.8, (2.0, 2.5, 1.7), (7.1, 5.3, 1.4)),
]
HUM = ("sonic-pi-samples", "usr/share/sonic-pi/samples/ambi_haunted_hum.flac")


# ----------------------------------------------------------------------------- helpers


def read_any(path: Path, raw_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Mono float64 and its true sample rate (.raw files are 16-bit little-endian)."""
    if raw_rate is not None:
        return np.fromfile(path, dtype="<i2").astype(np.float64) / 32768.0, raw_rate
    x, sr = sf.read(str(path), dtype="float64", always_2d=True)
    return x.mean(axis=1), int(sr)


def fetch_packages(work: Path, debs: Path | None) -> tuple[dict[str, Path], dict[str, str]]:
    """Download (or reuse) and unpack the data .deb files; return package -> root, package -> .deb."""
    found = debian_packages.fetch_packages(DATA_PACKAGES, work, debs)
    return {k: root for k, (root, _) in found.items()}, {k: deb for k, (_, deb) in found.items()}


def trim(x: np.ndarray, rel_db: float = -40.0, margin_s: float = 0.08) -> np.ndarray:
    """Cut leading/trailing 20 ms frames quieter than rel_db below the loudest one."""
    frame = int(0.02 * SR)
    n = len(x) // frame
    e = np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1)) + 1e-12
    active = np.flatnonzero(e > e.max() * 10 ** (rel_db / 20))
    m = int(margin_s * SR)
    return x[max(active[0] * frame - m, 0) : min((active[-1] + 1) * frame + m, len(x))]


def clips(x: np.ndarray, count: int) -> list[np.ndarray]:
    """Up to ``count`` trimmed clips of MIN_S..MAX_S, cut at the quietest frame."""
    out, frame = [], int(0.02 * SR)
    x = trim(x)
    while len(out) < count and len(x) >= MIN_S * SR:
        if len(x) <= MAX_S * SR:
            out.append(x)
            break
        lo, hi = int(MIN_S * SR) // frame, int(MAX_S * SR) // frame
        e = [rms(x[i * frame : (i + 1) * frame]) for i in range(lo, hi)]
        # the quietest frame whose clip, once trimmed, is still long enough
        cuts = [(lo + int(i)) * frame + frame // 2 for i in np.argsort(e, kind="stable")]
        cut = next((c for c in cuts if len(trim(x[:c])) >= MIN_S * SR), None)
        if cut is None:
            break
        out.append(trim(x[:cut]))
        x = trim(x[cut:])
    return [c for c in out if MIN_S * SR <= len(c) <= MAX_S * SR]


def fade(x: np.ndarray, seconds: float = 0.005) -> np.ndarray:
    n = int(seconds * SR)
    ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(n) / n)
    y = x.copy()
    y[:n] *= ramp
    y[-n:] *= ramp[::-1]
    return y


def synth(voice: Voice, text: str, work: Path) -> tuple[np.ndarray, int]:
    """Speak ``text`` with a synthetic voice; mono float64 and the engine's true rate."""
    work.mkdir(parents=True, exist_ok=True)
    txt, wav = work / "say.txt", work / "say.wav"
    txt.write_text(text + "\n")
    if voice.engine == "festival":
        ev = f"(begin (voice_{voice.name}) (Parameter.set 'Duration_Stretch {voice.stretch}))"
        run(["text2wave", "-eval", ev, str(txt), "-o", str(wav)], stdout=subprocess.DEVNULL)
    elif voice.engine == "flite":
        cmd = ["flite", "-voice", voice.name, "--setf", f"duration_stretch={voice.stretch}"]
        if voice.pitch is not None:
            cmd += ["--setf", f"int_f0_target_mean={voice.pitch}"]
        run(cmd + ["-f", str(txt), "-o", str(wav)])
    elif voice.engine == "espeak-ng":
        run(["espeak-ng", "-v", voice.name, "-p", str(voice.pitch), "-s", str(voice.speed), "-w", str(wav),
             "-f", str(txt)])
    else:
        raise ValueError(voice.engine)
    return read_any(wav)


def to16k(x: np.ndarray, sr: int) -> np.ndarray:
    return resample(x, sr, SR).astype(np.float64)


def unit(x: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale to ``dbfs`` RMS, then down to peak 0.9 if needed."""
    y = x * (10 ** (dbfs / 20) / rms(x))
    return y * min(1.0, 0.9 / np.max(np.abs(y)))


def blue_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """+3 dB/octave noise (power ~ f), unit RMS; made here so mixing.colored_noise stays as it is."""
    spec = np.fft.rfft(rng.standard_normal(length))
    spec *= np.sqrt(np.arange(len(spec), dtype=np.float64))
    x = np.fft.irfft(spec, n=length)
    return (x - x.mean()) / rms(x - x.mean())


@dataclass
class Built:
    utterances: list[dict] = field(default_factory=list)
    noises: dict[str, str] = field(default_factory=dict)
    noise_info: list[dict] = field(default_factory=list)
    rirs: list[str] = field(default_factory=list)
    rir_info: list[dict] = field(default_factory=list)


# ----------------------------------------------------------------------------- parts


def build_speech(out: Path, roots: dict[str, Path], work: Path, b: Built) -> None:
    def store(name: str, voice: str, x: np.ndarray, sr: int, source: str, kind: str, text: str | None = None):
        y = fade(x) * (10 ** (SPEECH_DBFS / 20) / active_rms(x))
        if np.max(np.abs(y)) > 0.9:
            sys.exit(f"{name}: peak {np.max(np.abs(y)):.2f} at {SPEECH_DBFS} dBFS active level")
        write_audio(out / "speech" / f"{name}.flac", y, SR)
        b.utterances.append({
            "name": name, "voice": voice, "file": f"speech/{name}.flac", "kind": kind, "source": source,
            "source_rate": sr, "seconds": round(len(y) / SR, 3),
            "crest_db": round(float(20 * np.log10(np.max(np.abs(y)) / active_rms(y))), 2),
            **({"text": text} if text else {}),
        })

    for name, voice, pkg, rel, raw_rate, count in RECORDED:
        x, sr = read_any(roots[pkg] / rel, raw_rate)
        got = clips(to16k(x, sr), count)
        if len(got) < count:
            sys.exit(f"{pkg}:{rel}: only {len(got)} clip(s) of {MIN_S}-{MAX_S} s")
        for i, c in enumerate(got):
            store(f"{name}_{i}" if count > 1 else name, voice, c, sr, f"{pkg}:/{rel}", "recorded")
    for i, (voice, text) in enumerate(zip(TEST_VOICES, TEST_TEXTS)):
        x, sr = synth(voice, text, work / "tts")
        got = clips(to16k(x, sr), 1)
        if not got:
            sys.exit(f"{voice.id} said {text!r} in {len(x) / sr:.2f} s, outside {MIN_S}-{MAX_S} s after trimming")
        store(f"tts{i}_{voice.engine.replace('-', '')}_{voice.name.replace('+', '_')}", voice.id, got[0], sr,
              f"{voice.id} (stretch {voice.stretch}, pitch {voice.pitch}, speed {voice.speed})", "synthetic", text)


def build_babble(rng: np.random.Generator, work: Path) -> tuple[np.ndarray, list[str], dict[str, int]]:
    n = int(NOISE_S * SR)
    out, rates = np.zeros(n), {}
    for voice, sentences in BABBLE:
        parts = []
        for s in sentences:
            x, sr = synth(voice, s, work / "tts")
            rates[voice.id] = sr
            parts += [trim(to16k(x, sr)), np.zeros(int(rng.uniform(0.2, 0.6) * SR))]
        talk = np.concatenate(parts)
        out += loop_crop(talk / active_rms(talk), n, int(rng.integers(len(talk))))
    return out, [v.id for v, _ in BABBLE], rates


def build_music(rng: np.random.Generator, work: Path) -> np.ndarray:
    """A 20-bar pop-style piece (piano, bass, flute melody, drums) rendered with fluidsynth."""
    import mido

    tpb, beat = 480, 0.5  # 120 bpm
    mid = mido.MidiFile(ticks_per_beat=tpb)
    chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]  # C Am F G
    scale = [72, 74, 76, 79, 81, 84]
    events: dict[int, list[tuple[int, mido.Message]]] = {ch: [] for ch in (0, 1, 2, 9)}

    def note(ch: int, pitch: int, start: float, dur: float, vel: int) -> None:
        events[ch].append((int(start * tpb), mido.Message("note_on", channel=ch, note=pitch, velocity=vel)))
        events[ch].append((int((start + dur) * tpb), mido.Message("note_off", channel=ch, note=pitch, velocity=0)))

    bars = int(NOISE_S / (4 * beat)) + 1
    for bar in range(bars):
        c, t0 = chords[bar % 4], bar * 4
        for p in c:
            note(0, p, t0, 3.9, 70)
        for k in range(4):
            note(1, c[0] - 24, t0 + k, 0.9, 90)
            note(9, 36 if k % 2 == 0 else 38, t0 + k, 0.2, 100)
            note(9, 42, t0 + k + 0.5, 0.2, 70)
        t = 0.0
        while t < 4:
            d = float(rng.choice([0.5, 1.0, 1.5]))
            note(2, int(rng.choice(scale)), t0 + t, d * 0.95, 80)
            t += d
    for ch, program in ((0, 0), (1, 33), (2, 73), (9, None)):
        tr = mido.MidiTrack()
        if program is not None:
            tr.append(mido.Message("program_change", channel=ch, program=program, time=0))
        now = 0
        for tick, msg in sorted(events[ch], key=lambda e: (e[0], e[1].type == "note_on")):
            tr.append(msg.copy(time=tick - now))
            now = tick
        mid.tracks.append(tr)
    midi, wav = work / "music.mid", work / "music.wav"
    mid.save(str(midi))
    run(["fluidsynth", "-ni", "-q", "-R", "0", "-C", "0", "-g", "0.6", "-r", str(SR), "-F", str(wav),
         str(SOUNDFONT), str(midi)], stdout=subprocess.DEVNULL)
    x, sr = read_any(wav)
    assert sr == SR, sr
    return x[int(0.05 * SR) : int(0.05 * SR) + int(NOISE_S * SR)]


def build_rirs(out: Path, b: Built) -> None:
    import pyroomacoustics as pra

    for name, dims, rt60, src, mic in ROOMS:
        absorption, max_order = pra.inverse_sabine(rt60, dims)
        room = pra.ShoeBox(dims, fs=SR, materials=pra.Material(absorption), max_order=max_order)
        room.add_source(list(src))
        room.add_microphone(list(mic))
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float64)[: int((rt60 + 0.1) * SR)]
        rir = rir / np.max(np.abs(rir)) * 0.9
        write_audio(out / "rir" / f"{name}.flac", rir, SR)
        b.rirs.append(f"rir/{name}.flac")
        b.rir_info.append({"name": name, "room_m": dims, "rt60_s": rt60, "source_m": src, "mic_m": mic,
                           "max_order": int(max_order), "seconds": round(len(rir) / SR, 3)})


def build_noises(out: Path, roots: dict[str, Path], work: Path, b: Built) -> dict:
    n = int(NOISE_S * SR)
    made: dict[str, tuple[np.ndarray, dict]] = {}
    for k, kind in enumerate(("white", "pink", "brown")):
        made[kind] = (colored_noise(kind, n, np.random.default_rng([SEED, 1, k])).astype(np.float64),
                      {"source": "generated: compressor.data.mixing.colored_noise", "source_rate": SR})
    made["blue"] = (blue_noise(n, np.random.default_rng([SEED, 1, 3])),
                    {"source": "generated: +3 dB/octave (build_robustness_data.blue_noise)", "source_rate": SR})
    babble, talkers, rates = build_babble(np.random.default_rng([SEED, 2]), work)
    made["babble"] = (babble, {"source": "sum of synthetic talkers", "talkers": talkers, "talker_rates": rates})
    made["music"] = (build_music(np.random.default_rng([SEED, 3]), work),
                     {"source": f"generated MIDI (mido) rendered by fluidsynth with {SOUNDFONT}", "source_rate": SR})
    x, sr = read_any(roots[HUM[0]] / HUM[1])
    made["hum"] = (loop_crop(trim(to16k(x, sr), rel_db=-50), n),
                   {"source": f"{HUM[0]}:/{HUM[1]}", "source_rate": sr,
                    "copyright": "2007 kaligari", "license": "CC0-1.0",
                    "upstream": "http://freesound.org/people/kaligari/sounds/35392/"})
    for name, (x, info) in made.items():
        write_audio(out / "noise" / f"{name}.flac", unit(x, NOISE_RMS_DBFS), SR)
        b.noises[name] = f"noise/{name}.flac"
        b.noise_info.append({"name": name, "seconds": round(len(x) / SR, 2), **info})
    b.noises["reverb"] = b.noises[REVERB_NOISE]
    return {"babble_voices": talkers}


def versions() -> dict[str, str]:
    out = {}
    for p in TOOL_PACKAGES:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", p], capture_output=True, text=True)
        out[p] = r.stdout.strip() or "not installed"
    for p in ("pyroomacoustics", "mido"):
        out[f"pypi:{p}"] = pip_version(p)
    return out


# ----------------------------------------------------------------------------- build


def build(out: Path, work: Path, debs: Path | None) -> dict:
    roots, deb_files = fetch_packages(work, debs)
    for sub in ("speech", "noise", "rir"):
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    b = Built()
    build_speech(out, roots, work, b)
    extra = build_noises(out, roots, work, b)
    build_rirs(out, b)
    test_voices = sorted({u["voice"] for u in b.utterances})
    if set(test_voices) & set(extra["babble_voices"]):
        sys.exit("a test voice is in the babble")
    manifest = {
        "sample_rate": SR, "seed": SEED, "speech_active_dbfs": SPEECH_DBFS,
        "noise_rms_dbfs": NOISE_RMS_DBFS,
        "utterances": b.utterances, "test_voices": test_voices, **extra,
        "noises": b.noises, "noise_info": b.noise_info, "rirs": b.rirs, "rir_info": b.rir_info,
        "debian_data_packages": deb_files, "tool_versions": versions(),
        "excluded": {
            "asterisk-core-sounds-es-wav / -es-g722": "es_MX_f_Allison is Allison Smith, the English training voice",
            "demo-set noises": "vinyl_hiss, printer_3d (loop_3d_printer), sauna_ambience (ambi_sauna), crowd, applause",
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    write_docs(out, manifest, roots)
    return manifest


def copyright_block(roots: dict[str, Path], pkg: str, start: str, lines: int) -> str:
    """``lines`` lines of a Debian copyright file from the first line starting with ``start``."""
    text = (roots[pkg] / "usr" / "share" / "doc" / pkg / "copyright").read_text(errors="replace").splitlines()
    i = next(k for k, ln in enumerate(text) if ln.startswith(start))
    return "\n".join(text[i : i + lines])


def write_docs(out: Path, m: dict, roots: dict[str, Path]) -> None:
    pk, tv = m["debian_data_packages"], m["tool_versions"]
    lic = [
        "# Licenses of the robustness data",
        "",
        "Built by `examples/build_robustness_data.py`; NOT covered by the toolkit's Apache-2.0 license.",
        "Each file keeps the license of what it was made from (facts copied from each package's",
        "`/usr/share/doc/<package>/copyright`, Debian 12):",
        "",
        "| files | made from | license |",
        "|---|---|---|",
        f"| `speech/ps_*` | pocketsphinx-testdata ({pk['pocketsphinx-testdata']}) | BSD-2 (`Files: *`, Copyright "
        "1995-2014 Carnegie Mellon University, 2014-2015 Alpha Cephei Inc.); the `librivox` clips are LibriVox "
        "readings, public domain upstream |",
        f"| `speech/c2_*` | codec2-examples ({pk['codec2-examples']}) | LGPL-2.1 (`Files: ... raw/* ... wav/*`, "
        "Copyright 2007-2019 David Rowe) |",
        f"| `speech/tts*_festival_kal_diphone` | festival + festvox-kallpc16k ({tv['festvox-kallpc16k']}) | "
        "free use and distribution with notice (Alan W Black and Kevin Lenzo, 1998; see below) |",
        f"| `speech/tts*_festival_ked_diphone` | festival + festvox-kdlpc16k ({tv['festvox-kdlpc16k']}) | "
        "free use and distribution with notice (CSTR, University of Edinburgh, 1997) |",
        f"| `speech/tts*_festival_cmu_us_slt_arctic_hts` | festival + festvox-us-slt-hts ({tv['festvox-us-slt-hts']})"
        " | EST-2003 (2003 Carnegie Mellon University), HTS parts BSD-3-clause (Nagoya Institute of Technology) |",
        f"| `speech/tts*_flite_*`, flite talker in `noise/babble.flac` | flite ({tv['flite']}) | "
        "flite's BSD-style CMU license (voices awb, rms: Carnegie Mellon University) |",
        f"| `speech/tts*_espeakng_*`, espeak-ng talkers in `noise/babble.flac` | espeak-ng ({tv['espeak-ng']}) | "
        "synthesizer GPL-3+; its output speech is not a derivative of the program, offered here as CC0-1.0 |",
        f"| `noise/music.flac` | MIDI generated by the script, rendered by fluidsynth ({tv['fluidsynth']}, "
        f"LGPL-2.1+) with fluid-soundfont-gm ({tv['fluid-soundfont-gm']}) | MIT (FluidR3 GM, Copyright 2000-2002, "
        "2008 Frank Wen, 2008 Toby Smithe) |",
        f"| `noise/hum.flac` | sonic-pi-samples ({pk['sonic-pi-samples']}) `ambi_haunted_hum.flac` | CC0 "
        "(2007 kaligari) |",
        "| `noise/{white,pink,brown,blue}.flac`, `rir/*.flac` | generated by the script (numpy; pyroomacoustics "
        "image method) | CC0-1.0 |",
        "",
        "The text the synthetic voices speak was written for this set (CC0-1.0).",
        "",
        "## pocketsphinx-testdata (Debian copyright, Files: *)",
        "",
        "```",
        copyright_block(roots, "pocketsphinx-testdata", "Files: *", 35),
        "```",
        "",
        "## codec2-examples (Debian copyright)",
        "",
        "```",
        copyright_block(roots, "codec2-examples", "Files: cmake/*", 8),
        "```",
        "LGPL-2.1: https://www.gnu.org/licenses/old-licenses/lgpl-2.1.html",
        "",
        "## sonic-pi-samples (Debian copyright)",
        "",
        "```",
        copyright_block(roots, "sonic-pi-samples", "Files: etc/samples/ambi_haunted_hum.flac", 4),
        "```",
        "",
        "## festvox-kallpc16k / festvox-kdlpc16k",
        "",
        "Both copyright files grant: \"Permission is hereby granted, free of charge, to use and",
        "distribute this software and its documentation without restriction, including without",
        "limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or",
        "sell copies of this work ... subject to: 1. the code must retain the above copyright notice,",
        "this list of conditions and the following disclaimer; 2. any modifications must be clearly",
        "marked as such; 3. original authors' names are not deleted; 4. the authors' names are not",
        "used to endorse or promote products derived from this software without specific prior",
        "written permission.\" (kal: Alan W Black and Kevin Lenzo, Copyright (c) 1998; ked: Centre",
        "for Speech Technology Research, University of Edinburgh, Copyright (c) 1997.) The files",
        "here are modified (trimmed, resampled, level-normalised).",
        "",
        "## fluid-soundfont-gm",
        "",
        "\"I hereby release Fluid under the MIT license, as described in COPYING.\" (Frank Wen, README,",
        "quoted in Debian's copyright file.)",
        "",
    ]
    (out / "LICENSE.md").write_text("\n".join(lic))

    att = [
        "# Attribution",
        "",
        "All audio here was made by `examples/build_robustness_data.py` (seed "
        f"{m['seed']}); every file is 16 kHz mono 16-bit FLAC. Changes to recorded material: resampled",
        "to 16 kHz where needed, trimmed, cut at the quietest frame, 5 ms fades, active level set to",
        f"{m['speech_active_dbfs']} dBFS (no compression or limiting).",
        "",
        "## Speech",
        "",
        "| file | voice | source | true rate (Hz) | seconds |",
        "|---|---|---|---|---|",
    ]
    for u in m["utterances"]:
        att.append(f"| `{u['file']}` | {u['voice']} | {u['source']} | {u['source_rate']} | {u['seconds']} |")
    att += [
        "",
        "- pocketsphinx-testdata: CMU Sphinx test data (Carnegie Mellon University, Alpha Cephei Inc.);",
        "  the `librivox` clips are from a LibriVox reading of Jane Austen's *Sense and Sensibility*.",
        "- codec2-examples: David Rowe's Codec 2 test speech. `hts1` and `kristoff` are 8 kHz",
        "  recordings (no energy above 4 kHz); `speech_orig_16k.wav` is 16 kHz.",
        "- festival (CSTR, University of Edinburgh) with festvox voices kal (Kevin Lenzo), ked (CSTR),",
        "  cmu_us_slt_arctic_hts (CMU ARCTIC SLT; HTS by Nagoya Institute of Technology); flite (CMU);",
        "  espeak-ng. Tool versions are in `manifest.json`.",
        "",
        "## Noise and rooms",
        "",
    ]
    for nz in m["noise_info"]:
        att.append(f"- `noise/{nz['name']}.flac`: {nz['source']}"
                   + (f" (true rate {nz['source_rate']} Hz)" if "source_rate" in nz else "")
                   + (f"; talkers {', '.join(nz['talkers'])}" if "talkers" in nz else "")
                   + (f"; copyright {nz['copyright']}, {nz['license']}, {nz['upstream']}" if "license" in nz else ""))
    for r in m["rir_info"]:
        att.append(f"- `rir/{r['name']}.flac`: pyroomacoustics ShoeBox {r['room_m']} m, RT60 {r['rt60_s']} s, "
                   f"source {r['source_m']}, mic {r['mic_m']}")
    att.append("")
    (out / "ATTRIBUTION.md").write_text("\n".join(att))

    readme = [
        "# Robustness set (sources)",
        "",
        "Held-out voices and noises for checking float and int8 enhancers at every input level.",
        "Never use these files for training or calibration. `compressor.data.robustness.RobustnessSet`",
        "(or `open_dataset(\"robustness\")`) mixes them on the fly, deterministically: one item per",
        "condition x level x utterance; levels -45..-10 dBFS active-speech RMS in 5 dB steps; input",
        "SNRs 0/5/10/15 dB, cycled over utterances and rotated by condition.",
        "",
        "- `speech/`: 16 clean utterances, 14 voice labels, none in training (recorded: pocketsphinx-testdata,",
        "  codec2-examples, labelled by source file, as their speakers are not documented and may repeat;",
        "  synthetic: festival, flite, espeak-ng). `manifest.json` gives each one's",
        "  true source rate: two codec2 recordings are 8 kHz (band-limited), the synthetic ones come",
        "  from 16, 22.05 and 32 kHz engines.",
        "- `noise/`: white, pink, brown, blue (+3 dB/oct), babble (5 synthetic talkers, none a test voice),",
        "  music (generated MIDI, fluidsynth), hum (Sonic Pi `ambi_haunted_hum`).",
        "- `rir/`: three simulated rooms (RT60 0.3, 0.5, 0.8 s). The `reverb` condition convolves the",
        "  speech with a room response and adds pink noise. **Its target is the reverberant speech**:",
        "  the set tests a denoiser, not a dereverberator.",
        "",
        "The speech is natural (not compressed or limited): its peaks are 13-21 dB above its active",
        "RMS, so at -10 dBFS every mixture, and at -15 dBFS most, pass full scale. They are hard-clipped",
        "at +-1, as an ADC would, and marked `clipped` (the target is never clipped, and can exceed 1).",
        "Read those cells as clipped-input results. The Spanish asterisk prompts are left out on purpose: they are",
        "recorded by Allison Smith, the English training voice.",
        "",
        "Licenses: LICENSE.md; sources: ATTRIBUTION.md; rebuild: `python examples/build_robustness_data.py`.",
        "",
    ]
    (out / "README.md").write_text("\n".join(readme))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "examples" / "robustness_data",
                    help="output folder (default: %(default)s)")
    ap.add_argument("--debs", type=Path, default=None, help="folder with already downloaded .deb files")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = ap.parse_args(argv)
    for tool in ("dpkg-deb", "espeak-ng", "flite", "text2wave", "fluidsynth"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required (see this script's --help for the packages)")
    if not SOUNDFONT.is_file():
        sys.exit(f"{SOUNDFONT} is required (apt-get install fluid-soundfont-gm)")
    for mod in ("pyroomacoustics", "mido"):
        try:
            __import__(mod)
        except ImportError:
            sys.exit(f"python package {mod} is required (pip install {mod})")
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        manifest = build(args.out, args.work, args.debs)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = build(args.out, Path(tmp), args.debs)
    print(json.dumps({u["name"]: [u["voice"], u["source_rate"], u["seconds"]] for u in manifest["utterances"]},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
