"""A quick run of the demo pipeline on the shipped checkpoint (few steps, few clips)."""
import json

import pytest

from compressor.demo import DEMO_CHECKPOINT, DemoConfig, run_demo


@pytest.mark.skipif(not DEMO_CHECKPOINT.is_file(), reason="shipped demo checkpoint missing")
def test_demo_report_shape(tmp_path):
    config = DemoConfig(qat_steps=2, fqse_steps=2, max_items=3, ptq_calib_batches=2)
    report = run_demo(tmp_path, config, progress=False, log=lambda msg: None)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["models"] == json.loads(json.dumps(report["models"]))
    names = [m["name"] for m in report["models"]]
    assert names == ["float", "ptq", "vanilla", "fqse"]
    for model in report["models"]:
        q = model["quality"]
        assert set(q["si_snr"]) == {"all", "low", "mid", "high"}
        assert q["count"]["all"] == 3
        assert isinstance(q["sdr"], float) and 0 < q["stoi"] <= 1
        d = model["delta_vs_float"]
        assert set(d["si_snr"]) == {"all", "low", "mid", "high"}
    assert report["models"][0]["delta_vs_float"]["si_snr"]["all"] == 0.0
    assert (tmp_path / "report.md").read_text().count("|") > 20
    for name in ("ptq.pt", "vanilla.pt", "fqse.pt"):
        assert (tmp_path / name).is_file()
