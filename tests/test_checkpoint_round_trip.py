"""A quantized checkpoint works with every command, whatever the float model came from.

Sources: a state_dict with --model-factory, a .pt2 program and a zoo
checkpoint. Each is quantized by ``ptq`` and by ``qat`` (then resumed), and
the checkpoint is exported to both targets, run, evaluated and benched.
"""
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner

from compressor.checkpoint import ArchSpec, load_model, save_float, save_quantized
from compressor.cli.main import main
from compressor.quant import calibrate, quantize
from tests.foreign_models import UserMasker, make_spectral_masker, make_user_masker

SR = 16000
FACTORY = "tests.foreign_models:make_user_masker"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for sub in ("clean", "noisy"):
        (root / sub).mkdir()
    t = np.arange(int(0.5 * SR)) / SR
    for i in range(3):
        clean = (0.1 * np.sin(2 * np.pi * (220 + 40 * i) * t)).astype(np.float32)
        sf.write(root / "clean" / f"c{i}.wav", clean, SR)
        sf.write(root / "noisy" / f"c{i}.wav", clean + (0.02 * rng.standard_normal(len(t))).astype(np.float32), SR)
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory, paired):
    """Three float models in the forms users give them: name -> command-line arguments."""
    folder = tmp_path_factory.mktemp("sources")
    torch.save(make_user_masker().state_dict(), folder / "state.pt")
    torch.save(make_spectral_masker().state_dict(), folder / "spectral.pt")
    program = torch.export.export(make_user_masker().eval(), (torch.randn(2, 1600),),
                                  dynamic_shapes=({0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},))
    torch.export.save(program, folder / "masker.pt2")
    from compressor.zoo import build_model
    from tests.conftest import TINY_TASNET

    torch.manual_seed(0)
    tasnet = build_model("conv_tasnet", TINY_TASNET)
    save_float(folder / "zoo.pt", tasnet, ArchSpec("zoo", "conv_tasnet", tasnet.config.to_dict()))
    return {
        "factory": [folder / "state.pt", "--model-factory", FACTORY],
        "pt2": [folder / "masker.pt2"],
        "zoo": [folder / "zoo.pt"],
        # torch.stft -> conv net -> mask -> torch.istft: the core is quantized, the stage rides in the metadata
        "spectral": [folder / "spectral.pt", "--model-factory", "tests.foreign_models:make_spectral_masker"],
    }


@pytest.mark.parametrize("source", ["factory", "pt2", "zoo", "spectral"])
def test_ptq_checkpoint_exports_runs_evaluates_and_benches(tmp_path, paired, sources, source):
    q = tmp_path / "q.pt"
    run("ptq", *sources[source], "--data", paired, "--segment-seconds", 0.25, "--calib-batches", 2,
        "--batch-size", 2, "--out", q)
    # both targets for the user's module; the others share everything after the checkpoint load with it
    targets = ("onnx", "tflite") if source in ("factory", "spectral") else ("onnx",)
    for target in targets:
        out = tmp_path / f"q.{target}"
        result = run("export", q, "--target", target, "--data", paired, "--out", out)
        assert out.is_file() and "float compute ops: 0" in result.output
    wav = next((paired / "noisy").iterdir())
    for model in (q, *(tmp_path / f"q.{target}" for target in targets)):
        out_wav = tmp_path / f"{model.suffix[1:]}.wav"
        run("run", model, wav, out_wav)
        assert sf.info(out_wav).frames == sf.info(wav).frames
    report = tmp_path / "eval.json"
    run("eval", q, "--data", paired, "--json", report)
    assert json.loads(report.read_text())["models"][0]["quality"]["si_snr"]["all"] is not None
    bench = tmp_path / "bench.json"
    run("bench", q, tmp_path / f"q.{targets[-1]}", "--data", paired, "--json", bench, "--no-latency")
    assert len(json.loads(bench.read_text())["models"]) == 2


@pytest.mark.parametrize("source", ["factory", "pt2", "zoo", "spectral"])
def test_qat_checkpoint_resumes_and_exports(tmp_path, paired, sources, source):
    q = tmp_path / "q.pt"
    common = ["--data", paired, "--valid-data", paired, "--segment-seconds", 0.25, "--batch-size", 2,
              "--checkpoint-every", 1, "--out", q]
    run("qat", *sources[source], *common, "--steps", 1)
    first = load_model(q)
    run("qat", *sources[source], *common, "--steps", 2, "--resume")
    resumed = load_model(q)
    before, after = first.model.state_dict(), resumed.model.state_dict()
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before), "the resumed run trained nothing"
    run("export", q, "--target", "onnx", "--data", paired, "--out", tmp_path / "q.onnx")


def test_api_quantized_user_model_reloads_identically(tmp_path):
    """quantize() on the user's own module (not a re-loaded program): the checkpoint rebuilds the same graph."""
    model = UserMasker().eval()
    x = torch.randn(2, 1600)
    qm = quantize(model, x)
    calibrate(qm, [x, 0.5 * torch.randn_like(x)])
    from compressor.checkpoint import arch_of, LoadedModel

    arch = arch_of(LoadedModel(model, None, tmp_path / "user"))
    path = save_quantized(tmp_path / "q.pt", qm, arch, {"name": "ptq"})
    assert torch.load(path, weights_only=True)["arch"]["kind"] == "traced"
    loaded = load_model(path)
    assert sorted(loaded.model.quantizers()) == sorted(qm.quantizers())
    with torch.no_grad():
        assert torch.equal(loaded.model(x), qm(x))
        other_length = torch.randn(1, 2400)
        assert torch.equal(loaded.model(other_length), qm(other_length))
