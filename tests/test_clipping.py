"""Clipping reports: exact per-quantizer counts, SQNR, and the warnings of `compress run` and `compress eval`."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from click.testing import CliRunner
from torch import nn

from compressor.checkpoint import ArchSpec, save_float, save_quantized
from compressor.cli.main import main
from compressor.errors import ConfigError
from compressor.quant import calibrate, quantize
from compressor.quant.clipping import ClippingMonitor, clipping_report, find_quantized
from tests.conftest import TINY_TASNET

SR = 16000


pytestmark = pytest.mark.usefixtures("eager_fake_quant")


class TwoInputs(nn.Module):
    """y = a(x) + b(z): two model inputs, each with its own input quantizer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 4)
        self.b = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.a(x) + self.b(z)


def _quiet(rows: int, seed: int) -> torch.Tensor:
    """Values in [-0.1, 0.1], both ends present in every batch (so min/max calibration lands on them)."""
    x = (torch.rand(rows, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * 0.1
    x[0, 0], x[0, 1] = -0.1, 0.1
    return x


@pytest.fixture(scope="module")
def two_inputs():
    torch.manual_seed(0)
    qm = quantize(TwoInputs(), (_quiet(4, 0), _quiet(4, 1)))
    calibrate(qm, [(_quiet(4, s), _quiet(4, s + 100)) for s in range(4)], method="minmax")
    return qm


def _expected_clips(x: torch.Tensor, q) -> int:
    scale, zp = q.qparams()
    codes = torch.round(x / scale) + zp
    return int(((codes < q.qmin) | (codes > q.qmax)).sum())


def test_constructed_clipping_is_counted_exactly(two_inputs):
    qm = two_inputs
    # the calibration level: nothing clips ...
    report = clipping_report(qm, [(_quiet(4, 7) * 0.9, _quiet(4, 8) * 0.9), (_quiet(4, 9) * 0.9, _quiet(4, 10) * 0.9)])
    x_row = next(r for r in report.rows if r.name == "act_x")
    assert x_row.clipped == 0 and x_row.count == 64
    # ... but for its very top: [-0.1, 0.1] on a grid with an integer zero-point holds [-0.1004, 0.0996]
    report = clipping_report(qm, [(_quiet(4, 7), _quiet(4, 8))])
    assert next(r for r in report.rows if r.name == "act_x").clipped == 1 == _expected_clips(
        _quiet(4, 7), qm.quantizers()["act_x"])

    loud = [_quiet(6, 11) * 0.5, _quiet(6, 12) * 0.5]  # within range ...
    loud[0][1, :3] = torch.tensor([1.0, -1.0, 0.7])  # ... but 5 values far outside it
    loud[1][5, 7] = -2.0
    loud[1][2, 2] = 0.3
    batches = [(loud[0], _quiet(6, 13) * 0.9), (loud[1], _quiet(6, 14) * 0.9)]
    report = clipping_report(qm, batches)
    assert report.batches == 2
    rows = {r.name: r for r in report.rows}
    assert [r.role for r in report.rows[:2]] == ["input", "input"] and report.rows[-1].role == "output"
    x_row, z_row = rows["act_x"], rows["act_z"]
    assert x_row.count == z_row.count == 96
    assert x_row.clipped == 5 == _expected_clips(torch.cat(loud), qm.quantizers()["act_x"])
    assert x_row.clipped_fraction == pytest.approx(5 / 96, abs=0)
    assert z_row.clipped == 0 and z_row.clipped_fraction == 0.0  # its input stayed quiet
    assert x_row.seen_max == pytest.approx(1.0) and x_row.seen_min == pytest.approx(-2.0)
    assert x_row.range_max == pytest.approx(0.1, abs=x_row.scale)
    assert report.clipping() == [r for r in sorted(report.rows, key=lambda r: -r.clipped_fraction)
                                 if r.clipped_fraction > 0.001]
    assert report.summary().startswith(f"{len(report.clipping())} of {len(report.rows)} activation quantizers")
    assert x_row in report.worst(0) and report.rows[-1] in report.worst(0)  # input and output always shown
    payload = json.loads(json.dumps(report.to_dict()))
    assert payload["quantizers"][0]["clipped"] == 5 and payload["quantizers"][0]["name"] == "act_x"


def test_sqnr_matches_its_definition_and_grows_with_finer_steps(two_inputs):
    qm = two_inputs
    q = qm.quantizers()["act_x"]
    data = [(_quiet(16, 21) * 0.9, _quiet(16, 22))]
    saved = (q.scale.detach().clone(), q.zero_point.detach().clone())
    try:
        sqnr = {}
        for width in (0.1, 0.4, 1.6):
            q.set_range(-width, width)
            row = next(r for r in clipping_report(qm, data).rows if r.name == "act_x")
            x = data[0][0].double()
            fq = torch.fake_quantize_per_tensor_affine(data[0][0], *q.qparams(), q.qmin, q.qmax).double()
            assert row.sqnr_db == pytest.approx(10 * math.log10(float((x**2).sum() / ((x - fq) ** 2).sum())))
            assert math.isfinite(row.sqnr_db) and row.clipped == 0
            sqnr[width] = row.sqnr_db
        assert sqnr[0.1] > sqnr[0.4] + 9 and sqnr[0.4] > sqnr[1.6] + 9  # 4x finer step: ~12 dB
    finally:
        q.scale.data.copy_(saved[0])
        q.zero_point.data.copy_(saved[1])


def test_wrappers_are_looked_through(two_inputs):
    class Core(nn.Module):  # e.g. FQSEPipeline (core) or the level wrapper (inner)
        def __init__(self, attr: str, inner: nn.Module) -> None:
            super().__init__()
            setattr(self, attr, inner)

    assert find_quantized(Core("core", two_inputs)) is two_inputs
    assert find_quantized(Core("inner", Core("core", two_inputs))) is two_inputs
    assert find_quantized(nn.Sequential(nn.Identity(), Core("other", two_inputs))) is two_inputs
    with pytest.raises(ConfigError, match="float model"):
        find_quantized(nn.Linear(2, 2))
    with ClippingMonitor(Core("core", two_inputs)) as monitor:
        two_inputs(_quiet(2, 1), _quiet(2, 2))
    assert monitor.report().batches == 1
    two_inputs(_quiet(2, 1), _quiet(2, 2))  # hooks removed on exit
    assert monitor.report().batches == 1


# --- the commands ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_ckpts(tmp_path_factory):
    """A tiny Conv-TasNet, float and quantized (calibrated on audio at about -40 dBFS), as checkpoints."""
    from compressor.zoo import build_model

    torch.manual_seed(0)
    model = build_model("conv_tasnet", TINY_TASNET).eval()
    folder = tmp_path_factory.mktemp("clipping")
    arch = ArchSpec("zoo", "conv_tasnet", model.config.to_dict())
    gen = torch.Generator().manual_seed(0)
    quiet = [torch.randn(2, 1600, generator=gen) * 0.01 for _ in range(4)]
    qm = quantize(model, quiet[0])
    calibrate(qm, quiet)
    return save_float(folder / "float.pt", model, arch), save_quantized(folder / "q.pt", qm, arch, {"name": "ptq"})


def _noise_wav(path, amplitude: float, seconds: float = 0.5):
    audio = np.random.default_rng(0).standard_normal(int(SR * seconds)) * amplitude
    sf.write(path, audio.astype(np.float32), SR, subtype="FLOAT")
    return path


def test_run_warns_about_loud_audio_only(tiny_ckpts, tmp_path):
    _, q_ckpt = tiny_ckpts
    runner = CliRunner()  # click 8.2+: result.stderr on its own, result.output both streams
    loud = runner.invoke(main, ["run", str(q_ckpt), str(_noise_wav(tmp_path / "loud.wav", 0.3)),
                                str(tmp_path / "out_loud.wav")], catch_exceptions=False)
    assert loud.exit_code == 0, loud.output
    warnings = [line for line in loud.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(q_ckpt) in warnings[0] and "level stage" in warnings[0], loud.stderr
    assert "calibration level" in warnings[0] and "% of the input" in warnings[0]
    quiet = runner.invoke(main, ["run", str(q_ckpt), str(_noise_wav(tmp_path / "quiet.wav", 0.002)),
                                 str(tmp_path / "out_quiet.wav")], catch_exceptions=False)
    assert quiet.exit_code == 0, quiet.output
    assert "warning" not in quiet.stderr and "clipped" not in quiet.output and "wrote" in quiet.stdout


@pytest.fixture
def paired(tmp_path):
    root = tmp_path / "pairs"
    for sub in ("clean", "noisy"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(2):
        clean = (0.01 * np.sin(2 * np.pi * (200 + 50 * i) * np.arange(4000) / SR)).astype(np.float32)
        sf.write(root / "clean" / f"c{i}.wav", clean, SR)
        sf.write(root / "noisy" / f"c{i}.wav", clean + (0.003 * rng.standard_normal(4000)).astype(np.float32), SR)
    return root


def test_eval_clipping_table_and_json(tiny_ckpts, paired, tmp_path):
    float_ckpt, q_ckpt = tiny_ckpts
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["eval", str(float_ckpt), str(q_ckpt), "--data", str(paired), "--clipping",
                                       "--json", str(out), "--md", str(tmp_path / "r.md")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "float.pt is a float model" in result.output and "nothing to report" in result.output
    assert "## Clipping: q" in result.output and "| act_mixture | input |" in result.output
    assert "activation quantizers clip more than 0.1%" in result.output
    doc = json.loads(out.read_text())
    report = doc["clipping"]["q"]
    rows = report["quantizers"]
    assert len(rows) == sum(1 for line in (tmp_path / "r.md").read_text().splitlines() if "| act_" in line) > 17
    assert rows[0]["role"] == "input" and rows[0]["count"] == 2 * 4000 and rows[-1]["role"] == "output"
    assert report["batches"] == 2
    for row in rows:
        assert 0.0 <= row["clipped_fraction"] <= 1.0 and row["count"] > 0
        assert {"name", "layer", "op", "scale", "zero_point", "qmin", "qmax", "sqnr_db"} <= set(row)
    # the printed table is the worst 15 plus input and output; the JSON has every quantizer
    printed = [line for line in result.output.splitlines() if line.startswith("| ") and "| act_" in line]
    assert len(printed) <= 17 < len(rows)


def test_bench_records_boundary_clipping(tiny_ckpts, paired, tmp_path, caplog):
    """Quality runs through a Runtime: its boundary clipping lands in the JSON; loud audio warns."""
    float_ckpt, q_ckpt = tiny_ckpts
    for name in ("c0.wav", "c1.wav"):  # 30x louder than calibration (about -10 dBFS peaks)
        audio, _ = sf.read(paired / "noisy" / name, dtype="float32")
        sf.write(paired / "noisy" / name, audio * 30, SR, subtype="FLOAT")
    out = tmp_path / "b.json"
    result = CliRunner().invoke(main, ["bench", str(q_ckpt), "--reference", str(float_ckpt), "--data", str(paired),
                                       "--no-latency", "--no-pesq", "--no-dnsmos", "--chunk-seconds", "0.1",
                                       "--json", str(out), "--md", str(tmp_path / "b.md")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    ref, model = json.loads(out.read_text())["models"]
    assert ref["clipping"] is None  # a float model has no int8 boundary
    assert set(model["clipping"]) == {"input", "output"} and model["clipping"]["input"] > 0.001
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "clipped" in r.getMessage()]
    assert len(warned) == 1 and "q.pt" in warned[0] and "calibration level" in warned[0]
    assert "clipped % in / out" in (tmp_path / "b.md").read_text()
