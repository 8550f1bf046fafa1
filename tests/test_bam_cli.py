"""`compress qat --recipe bam`, `compress eval --task quality` and `compress run` on a quality model."""
from __future__ import annotations

import numpy as np
import torch
from click.testing import CliRunner

from compressor.bam.data import QualityDataConfig, save_split
from compressor.bam.frontend import MelConfig
from compressor.checkpoint import ArchSpec, load_model, save_float
from compressor.cli.main import main
from compressor.zoo.dnsmos_cnn import DnsmosCNN
from tests.test_bam import SMALL, _Features


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _split(path, n, seed):
    data = _Features(n)
    data.x += seed  # a different split
    save_split(path, {"features": data.x.numpy(), "labels": data.y.numpy(), "info": [{}] * n,
                      "audio": np.zeros((0, 1), np.float32)}, QualityDataConfig(), MelConfig())


def test_qat_bam_then_eval_quality(tmp_path):
    torch.manual_seed(0)
    float_path = save_float(tmp_path / "float.pt", DnsmosCNN(SMALL), ArchSpec("zoo", "dnsmos_cnn", SMALL.to_dict()))
    for name, n, seed in (("train", 12, 0), ("valid", 4, 1), ("test", 6, 2)):
        _split(tmp_path / f"{name}.npz", n, seed)
    out = tmp_path / "bam.pt"
    result = _invoke("qat", float_path, "--recipe", "bam", "--data", tmp_path / "train.npz", "--valid-data",
                     tmp_path / "valid.npz", "--epochs", "1", "--batch-size", "4", "--beta", "3", "--out", out)
    assert result.exit_code == 0, result.output
    loaded = load_model(out)
    assert loaded.quantized and loaded.recipe["name"] == "bam" and loaded.recipe["config"]["beta"] == 3.0
    result = _invoke("eval", "--task", "quality", out, float_path, "--data", tmp_path / "test.npz")
    assert result.exit_code == 0, result.output
    assert "bam (simulated int8)" in result.output and "| float |" in result.output
    refused = CliRunner().invoke(main, ["qat", str(float_path), "--recipe", "vanilla", "--beta", "3", "--out",
                                        str(tmp_path / "x.pt")])
    assert refused.exit_code != 0 and "beta" in refused.output
