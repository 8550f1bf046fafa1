"""The compress command on good and bad inputs: clear errors, nothing partial written."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from compressor.checkpoint import ArchSpec, load_model, save_float
from compressor.cli.main import main
from tests.conftest import TINY_TASNET

SR = 16000


def _clip(seed, seconds=0.4):
    rng = np.random.default_rng(seed)
    t = np.arange(int(SR * seconds)) / SR
    clean = 0.2 * np.sin(2 * np.pi * (200 + 50 * seed) * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))
    noise = 0.05 * rng.standard_normal(len(t))
    return clean.astype(np.float32), (clean + noise).astype(np.float32)


@pytest.fixture
def paired(tmp_path):
    root = tmp_path / "pairs"
    for sub in ("clean", "noisy"):
        (root / sub).mkdir(parents=True)
    for i in range(3):
        clean, noisy = _clip(i)
        sf.write(root / "clean" / f"c{i}.wav", clean, SR)
        sf.write(root / "noisy" / f"c{i}.wav", noisy, SR)
    return root


@pytest.fixture
def float_ckpt(tmp_path, tiny_tasnet):
    return save_float(tmp_path / "float.pt", tiny_tasnet,
                      ArchSpec("zoo", "conv_tasnet", tiny_tasnet.config.to_dict()))


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_help_of_every_command():
    for cmd in ("demo", "train", "qat", "ptq", "eval"):
        result = run(cmd, "--help")
        assert result.exit_code == 0 and "--help" in result.output


def test_ptq_then_eval_side_by_side(tmp_path, paired, float_ckpt):
    out = tmp_path / "q.pt"
    result = run("ptq", float_ckpt, "--data", paired, "--segment-seconds", 0.25, "--calib-batches", 2,
                 "--batch-size", 2, "--out", out)
    assert result.exit_code == 0, result.output
    assert load_model(out).quantized
    report = tmp_path / "r.json"
    result = run("eval", float_ckpt, out, "--data", paired, "--json", report, "--md", tmp_path / "r.md")
    assert result.exit_code == 0, result.output
    models = json.loads(report.read_text())["models"]
    names = [m["name"] for m in models]
    assert names == ["float", "q (simulated int8 + 16-bit output)", "q (quantizers off)"]  # ptq: int16 audio out
    for m in models:
        assert set(m["quality"]["si_snr"]) == {"all", "low", "mid", "high"}
        assert {"sdr", "stoi", "si_snri"} <= set(m["quality"])
    assert models[0]["delta_vs_float"]["si_snr"]["all"] == 0.0
    # quantizers off on a PTQ model = the float model
    assert models[2]["quality"]["si_snr"]["all"] == pytest.approx(models[0]["quality"]["si_snr"]["all"], abs=1e-3)
    assert "SI-SNR" in (tmp_path / "r.md").read_text()


def _expect_error(result, *fragments):
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.output, result.output
    assert "Traceback" not in result.output


def test_missing_model_file(tmp_path, paired):
    out = tmp_path / "r.json"
    _expect_error(run("eval", tmp_path / "nope.pt", "--data", paired, "--json", out), "not found", "nope.pt")
    assert not out.exists()


@pytest.mark.parametrize("problem", ["not_audio", "empty", "nan"])
def test_bad_audio_files(tmp_path, paired, float_ckpt, problem):
    bad = paired / "noisy" / "c1.wav"
    if problem == "not_audio":
        bad.write_text("this is not audio")
        fragment = "cannot read"
    elif problem == "empty":
        sf.write(bad, np.zeros(0, dtype=np.float32), SR)
        fragment = "empty"
    else:
        data = _clip(1)[1].copy()
        data[100] = np.nan
        sf.write(bad, data, SR, subtype="FLOAT")
        fragment = "NaN"
    out = tmp_path / "r.json"
    _expect_error(run("eval", float_ckpt, "--data", paired, "--json", out), fragment, "c1.wav")
    assert not out.exists()


def test_wrong_rate_and_stereo(tmp_path, paired, float_ckpt, caplog):
    clean, noisy = _clip(2)
    sf.write(paired / "noisy" / "c2.wav", noisy[::2], SR // 2)  # 8 kHz
    out = tmp_path / "r.json"
    _expect_error(run("eval", float_ckpt, "--data", paired, "--strict-audio", "--json", out), "8000 Hz", "c2.wav")
    assert not out.exists()
    sf.write(paired / "noisy" / "c2.wav", noisy, SR)
    sf.write(paired / "clean" / "c0.wav", np.stack([_clip(0)[0]] * 2, axis=1), SR)  # stereo
    _expect_error(run("eval", float_ckpt, "--data", paired, "--strict-audio", "--json", out), "2 channels", "c0.wav")
    assert not out.exists()
    # without --strict-audio the stereo file is down-mixed, with a warning naming it
    result = run("eval", float_ckpt, "--data", paired, "--json", out)
    assert result.exit_code == 0, result.output
    assert any("c0.wav" in r.getMessage() and "mono" in r.getMessage() for r in caplog.records)


def test_checkpoint_of_other_architecture(tmp_path, paired, float_ckpt):
    data = torch.load(float_ckpt, weights_only=True)
    data["arch"]["config"] = {**TINY_TASNET, "H": 48}
    torch.save(data, float_ckpt)
    out = tmp_path / "q.pt"
    _expect_error(run("ptq", float_ckpt, "--data", paired, "--out", out), "do not fit", "float.pt")
    assert not out.exists()


def test_unknown_recipe(tmp_path, paired, float_ckpt):
    out = tmp_path / "q.pt"
    _expect_error(run("qat", float_ckpt, "--recipe", "fancy", "--data", paired, "--out", out),
                  "unknown recipe 'fancy'", "vanilla")
    assert not out.exists()


def test_pickled_checkpoint_needs_trust(tmp_path, paired, tiny_tasnet):
    path = tmp_path / "pickled.pt"
    torch.save(tiny_tasnet, path)
    out = tmp_path / "r.json"
    _expect_error(run("eval", path, "--data", paired, "--json", out), "--trust-pickle")
    assert not out.exists()
    result = run("eval", path, "--trust-pickle", "--data", paired, "--json", out)
    assert result.exit_code == 0, result.output


def test_unknown_dataset_layout(tmp_path, float_ckpt):
    (tmp_path / "empty_dir").mkdir()
    _expect_error(run("eval", float_ckpt, "--data", tmp_path / "empty_dir"), "layout")


def test_qat_with_two_ddp_processes(tmp_path, paired, float_ckpt):
    """torchrun, 2 processes, gloo on CPU: the quantized graph trains under DDP."""
    import os
    import shutil
    import subprocess
    import sys

    compress = shutil.which("compress")
    out = tmp_path / "q.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", compress, "qat",
           str(float_ckpt), "--data", str(paired), "--valid-data", str(paired), "--steps", "3", "--batch-size", "1",
           "--segment-seconds", "0.25", "--checkpoint-every", "3", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = load_model(out)
    assert loaded.quantized and loaded.recipe["name"] == "vanilla"
    state = torch.load(tmp_path / "q.run" / "train_state.pt", weights_only=True)
    assert state["step"] == 3
