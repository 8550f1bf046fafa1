"""compress bench: a smoke run on one tiny model, and the pieces whose numbers could silently be wrong."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from benchmarks.bops import model_bops
from benchmarks.device_runner import FileModel, chunked
from benchmarks.peers.float_files import float_onnx
from benchmarks.quality import delta, summarize
from benchmarks.size import model_size
from compressor.checkpoint import ArchSpec, save_float, save_quantized
from compressor.cli.main import main
from compressor.quant import calibrate, quantize
from tests.conftest import TINY_TASNET

CHUNK = 1600  # 0.1 s at 16 kHz


@pytest.fixture(scope="module")
def tiny_float(tmp_path_factory):
    """A tiny float Conv-TasNet as our checkpoint and as a float ONNX of one chunk."""
    from compressor.zoo import build_model

    torch.manual_seed(0)
    model = build_model("conv_tasnet", TINY_TASNET).eval()
    folder = tmp_path_factory.mktemp("bench")
    ckpt = save_float(folder / "tiny.pt", model, ArchSpec("zoo", "conv_tasnet", model.config.to_dict()))
    return model, ckpt, float_onnx(model, CHUNK, folder / "tiny.onnx")


@pytest.fixture(scope="module")
def tiny_quantized(tiny_float, tmp_path_factory):
    """The same model quantized (every tensor int8), as a checkpoint and as our exported QDQ ONNX."""
    from exporters import ExportConfig, export

    model = tiny_float[0]
    qmodel = quantize(model, torch.randn(2, CHUNK) * 0.1)
    calibrate(qmodel, [torch.randn(2, CHUNK) * 0.1 for _ in range(3)])
    folder = tmp_path_factory.mktemp("bench_q")
    ckpt = save_quantized(folder / "q.pt", qmodel, ArchSpec("zoo", "conv_tasnet", model.config.to_dict()),
                          {"name": "ptq"})
    result = export(qmodel, "onnx", folder / "q.onnx", config=ExportConfig(target="onnx", chunk_seconds=CHUNK / 16000,
                                                                           tolerance_lsb=64))
    return ckpt, result.path


def test_bench_cli_writes_valid_json(tiny_float, tmp_path):
    """The smoke test: one tiny model, two clips, a float reference; every key the issue lists is there."""
    _, ckpt, onnx_file = tiny_float
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    result = CliRunner().invoke(main, ["bench", str(onnx_file), "--reference", str(ckpt), "--max-items", "2",
                                       "--runs", "3", "--warmup", "1", "--no-dnsmos", "--json", str(out),
                                       "--md", str(md), "--chunk-seconds", str(CHUNK / 16000)])
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert doc["machine"]["cpu"] and doc["machine"]["versions"]["onnxruntime"]
    ref, model = doc["models"]
    assert ref["name"] == "tiny.pt (reference)" and model["name"] == "tiny.onnx"
    for key in ("name", "format", "runtime", "size_bytes", "bops", "latency_ms", "rtf", "peak_rss_mb", "quality",
                "delta_vs_float"):
        assert key in model, key
    assert model["format"] == "onnx" and model["runtime"].startswith("onnxruntime")
    assert model["size_bytes"] == onnx_file.stat().st_size
    lat = model["latency_ms"]
    assert 0 < lat["median"] <= lat["p90"] and lat["threads"] >= 1
    assert {t["threads"] for t in model["latency"]} >= {1}
    assert model["rtf"] == pytest.approx(lat["median"] / 1000 / (CHUNK / 16000), rel=0.01)
    assert model["peak_rss_mb"] > 10
    assert set(model["quality"]["si_snr"]) == {"all", "low", "mid", "high"}
    for key in ("sdr", "stoi", "pesq"):
        assert isinstance(model["quality"][key], float)
    assert model["quality"]["dnsmos_ovrl"] is None  # --no-dnsmos: null, not faked
    # the same float model in ORT and in PyTorch: the gap to float must vanish
    assert abs(model["delta_vs_float"]["si_snr"]["all"]) < 0.01
    assert ref["delta_vs_float"]["si_snr"]["all"] == 0.0
    assert "| tiny.onnx |" in md.read_text()


def test_runner_matches_the_product_runtime(tiny_quantized):
    """device_runner (numpy + ORT only) computes what runtimes.load computes on our exported file."""
    import runtimes

    _, onnx_file = tiny_quantized
    audio = (np.random.default_rng(1).standard_normal(5000) * 0.1).astype(np.float32)
    ours = FileModel(onnx_file, threads=1)
    assert ours.metadata is not None and ours.inputs[0].integer
    np.testing.assert_allclose(ours.process(audio), np.atleast_2d(runtimes.load(onnx_file, threads=1).process(audio)),
                               atol=1e-6)


def test_chunked_processing_is_seamless():
    x = np.random.default_rng(0).standard_normal(3333).astype(np.float32)
    np.testing.assert_allclose(chunked(lambda c: c[None], x, 500, 1)[0], x, atol=1e-6)


def test_bops_agree_between_checkpoint_and_files(tiny_float, tiny_quantized):
    """The same layers counted three ways (traced checkpoint, ONNX graph, quantized graph); bits decide BOPs."""
    _, ckpt, onnx_file = tiny_float
    q_ckpt, q_onnx = tiny_quantized
    float_pt = model_bops(ckpt, CHUNK, per_layer=True)
    float_file = model_bops(onnx_file)
    quant_pt, quant_file = model_bops(q_ckpt, CHUNK), model_bops(q_onnx)
    assert float_pt["macs"] == float_file["macs"] == quant_pt["macs"] > 0
    # the file's decoder is the polyphase Conv1d the exporter writes for ConvTranspose1d: one padding frame more
    assert quant_pt["macs"] <= quant_file["macs"] <= quant_pt["macs"] * 1.01
    assert float_pt["audio_seconds"] == float_file["audio_seconds"] == CHUNK / 16000
    assert all(r["weight_bits"] == r["activation_bits"] == 32 for r in float_pt["per_layer"])
    assert float_pt["gbops"] == pytest.approx(float_pt["macs"] * 32 * 32 / 1e9, rel=1e-3)
    assert quant_pt["gbops"] == pytest.approx(quant_pt["macs"] * 64 / 1e9, rel=1e-3)
    assert quant_file["gbops"] == pytest.approx(quant_file["macs"] * 64 / 1e9, rel=1e-3)


def test_size_counts_int8_weights(tiny_float, tiny_quantized):
    model, ckpt, onnx_file = tiny_float
    params = sum(p.numel() for p in model.parameters())
    assert model_size(ckpt)["param_count_by_bits"] == {"32": params}
    q_ckpt, q_file = (model_size(p) for p in tiny_quantized)
    assert q_ckpt["param_count_by_bits"]["8"] > q_ckpt["param_count_by_bits"]["32"]  # weights 8-bit, biases 32
    # every int8 tensor of the checkpoint is an int8 initializer in the file (plus int8 zero-points), but
    # one-slope PReLUs' slopes (LeakyRelu's alpha attribute) and repeats: identical constants (a fresh model's
    # norm gains, all ones) are stored once
    slopes = sum(1 for m in model.modules() if isinstance(m, torch.nn.PReLU) and m.weight.numel() == 1)
    assert slopes > 0
    seen, repeats = set(), 0
    for p in model.parameters():
        key = (tuple(p.shape), p.detach().numpy().tobytes())
        repeats += p.numel() if key in seen else 0
        seen.add(key)
    assert q_file["param_count_by_bits"]["8"] >= q_ckpt["param_count_by_bits"]["8"] - slopes - repeats
    assert q_file["param_bytes"] < model_size(onnx_file)["param_bytes"] / 2


def test_quality_summary_buckets_and_delta():
    rows = [{"snr_db": s, "si_snr": v, "si_snri": 1.0, "sdr": v, "stoi": 0.9, "pesq": None, "dnsmos_sig": 3.0,
             "dnsmos_bak": 3.0, "dnsmos_ovrl": 3.0} for s, v in [(0.0, 5.0), (1.9, 7.0), (5.0, 10.0), (12.0, 20.0)]]
    q = summarize(rows)
    assert q["si_snr"] == {"all": 10.5, "low": 6.0, "mid": 10.0, "high": 20.0}
    assert q["pesq"] is None and q["count"] == {"all": 4, "low": 2, "mid": 1, "high": 1}
    d = delta(q, summarize([dict(r, si_snr=r["si_snr"] + 1) for r in rows]))
    assert d["si_snr"] == {"all": -1.0, "low": -1.0, "mid": -1.0, "high": -1.0} and d["pesq"] is None


def test_bench_errors_are_clear(tmp_path):
    result = CliRunner().invoke(main, ["bench", str(tmp_path / "missing.tflite"), "--no-quality"])
    assert result.exit_code == 2 and "no such model file" in result.output
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = CliRunner().invoke(main, ["bench", str(bad), "--pack", str(tmp_path / "p")])
    assert result.exit_code == 2 and "bad.onnx" in result.output


def _fake_entry(name, chunk_ms, size, si_snr):
    rounds = [[{"threads": t, "1s": {"median": chunk_ms * k, "p90": chunk_ms * k}, "chunk": {"median": chunk_ms * k,
                                                                                            "p90": chunk_ms * k}}
               for t in (1, 2)] for k in (1.0, 1.1)]
    quality = {"si_snr": dict(zip(("all", "low", "mid", "high"), si_snr))}
    return {"name": name, "size_bytes": size, "latency_rounds": rounds, "latency": rounds[0], "quality": quality}


def test_compare_goals_are_ratios_of_measured_medians():
    from benchmarks.compare import FLOAT_EAGER, FLOAT_LITERT, FQSE_TFLITE, goals, spread_table

    eager = _fake_entry(FLOAT_EAGER, 40.0, 1_300_000, [15.0, 12.0, 13.0, 19.0])
    litert = _fake_entry(FLOAT_LITERT, 20.0, 1_400_000, [15.0, 12.0, 13.0, 19.0])
    fqse = _fake_entry(FQSE_TFLITE, 16.0, 350_000, [14.95, 11.0, 13.0, 19.5])
    fqse["delta_vs_float"] = {"si_snr": {"all": -0.05, "low": -1.0, "mid": 0.0, "high": 0.5}}
    checks, text = goals([eager, litert, fqse], [1, 2])
    by_goal = {c["goal"]: c for c in checks}
    eager_check = by_goal[f"median latency / {FLOAT_EAGER} at 1 thread(s) <= 0.5"]
    assert eager_check["value"] == pytest.approx(0.4) and eager_check["met"]
    litert_check = by_goal[f"median latency / {FLOAT_LITERT} at 2 thread(s) <= 1.0 (aim 0.7)"]
    assert litert_check["value"] == pytest.approx(0.8) and litert_check["met"]
    assert by_goal["file size / float TFLite <= 0.3"]["value"] == pytest.approx(0.25)
    assert not by_goal["SI-SNR low within 0.1 dB of float"]["met"] and by_goal["SI-SNR all within 0.1 dB of float"]["met"]
    assert "**no**" in text
    assert "| 40.0 / 44.0 | 9.5 % |" in spread_table([eager], [1])  # (44 - 40) / mean 42
