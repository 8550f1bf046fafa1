"""The parity oracle: simulated model vs ORT QDQ vs LiteRT int8, per op and bit width.

Each fixture is exported with verification on (tolerance 1 LSB of the output
scale); the test re-checks the numbers itself and that the file holds no
float compute op.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exporters import ExportConfig, export
from exporters.sessions import open_session
from compressor.ops.fixtures import FIXTURES, calibration_chunks, quantized_fixture

TOLERANCE_LSB = 1


def _export(tmp_path, name, target, weight_bits):
    qmodel = quantized_fixture(name, weight_bits)
    path = tmp_path / f"{name}.{target}"
    cfg = ExportConfig(target=target, tolerance_lsb=TOLERANCE_LSB, verify_chunks=3)
    result = export(qmodel, target, path, config=cfg, calibration=calibration_chunks())
    return qmodel, path, result


def _max_lsb(qmodel, path) -> int:
    session = open_session(path)
    spec_in, spec_out = session.metadata.inputs[0], session.metadata.outputs[0]
    worst = 0
    for chunk in calibration_chunks():
        codes = spec_in.quantize(chunk.reshape(spec_in.shape))
        with torch.no_grad():
            sim = qmodel(torch.from_numpy(spec_in.dequantize(codes)))
        want = spec_out.quantize(sim.numpy()).astype(np.int32)
        got = session.run_codes(codes)[0].astype(np.int32)
        worst = max(worst, int(np.abs(got.reshape(-1) - want.reshape(-1)).max()))
    return worst


@pytest.mark.parametrize("weight_bits", [8, 7])
@pytest.mark.parametrize("target", ["onnx", "tflite"])
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_op_parity(tmp_path, name, target, weight_bits):
    qmodel, path, result = _export(tmp_path, name, target, weight_bits)
    assert result.ops["float_op_count"] == 0, result.ops
    assert result.verification is not None and result.verification.passed
    assert _max_lsb(qmodel, path) <= TOLERANCE_LSB
    io = result.metadata.inputs[0].dtype, result.metadata.outputs[0].dtype
    assert io == (("uint8", "uint8") if target == "onnx" else ("int8", "int8"))
