"""`compress qat --recipe fqse` and `compress eval --snr-sweep --plot` end to end on tiny models."""
import json

import torch
from click.testing import CliRunner

from compressor.checkpoint import ArchSpec, load_model, save_float
from compressor.cli.main import main
from compressor.recipes import inference_model


def test_fqse_qat_then_eval_with_sweep_and_plot(tmp_path, tiny_tasnet):
    float_ckpt = save_float(tmp_path / "float.pt", tiny_tasnet,
                            ArchSpec("zoo", "conv_tasnet", tiny_tasnet.config.to_dict()))
    out = tmp_path / "fqse.pt"
    runner = CliRunner()
    result = runner.invoke(main, ["qat", str(float_ckpt), "--recipe", "fqse", "--steps", "2", "--batch-size", "2",
                                  "--segment-seconds", "0.25", "--threads", "1", "--no-snr-aug",
                                  "--valid-data", "demo:valid", "--out", str(out)])
    assert result.exit_code == 0, result.output
    loaded = load_model(out)
    assert loaded.recipe["name"] == "fqse" and loaded.recipe["config"]["snr_aug"] is False
    model = inference_model(loaded)
    with torch.no_grad():
        assert model(torch.zeros(1, 900)).shape == (1, 1, 900)

    report, plot = tmp_path / "r.json", tmp_path / "sweep.png"
    result = runner.invoke(main, ["eval", str(float_ckpt), str(out), "--max-items", "2", "--threads", "1",
                                  "--sweep-range", "0", "10", "10", "--plot", str(plot), "--json", str(report)])
    assert result.exit_code == 0, result.output
    assert plot.stat().st_size > 1000
    sweep = json.loads(report.read_text())["snr_sweep"]
    assert sweep["snr_db"] == [0.0, 10.0] and len(sweep["si_snr"]) == 2  # float and simulated fqse
    assert "SI-SNR by input SNR" in result.output


def test_vanilla_refuses_fqse_switches(tmp_path, tiny_tasnet):
    float_ckpt = save_float(tmp_path / "float.pt", tiny_tasnet,
                            ArchSpec("zoo", "conv_tasnet", tiny_tasnet.config.to_dict()))
    result = CliRunner().invoke(main, ["qat", str(float_ckpt), "--no-rqb", "--out", str(tmp_path / "q.pt")])
    assert result.exit_code == 2 and "does not take" in result.output
