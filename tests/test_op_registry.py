"""The op registry is complete and consistent: every op quantize() accepts has a record and a parity fixture."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from compressor.errors import UnsupportedOpError
from compressor.ops.docs import END, START, supported_ops_markdown
from compressor.ops.fixtures import FIXTURES
from compressor.ops.record import KINDS, MAC_FORMULAS, ONNX_ROLES, TFLITE_LAYOUTS
from compressor.ops.registry import RECORDS, SPECTRAL_HINT, TARGET_OPS, target_op
from compressor.quant import quantize

README = Path(__file__).resolve().parents[1] / "README.md"


def test_each_aten_target_and_file_op_is_registered_once():
    targets = [t for r in RECORDS for t in r.aten]
    assert len(targets) == len(set(targets))
    assert len({r.name for r in RECORDS}) == len(RECORDS)
    keys = [(op.target, op.name) for op in TARGET_OPS]
    assert len(keys) == len(set(keys))


def test_records_use_known_kinds_formulas_and_file_ops():
    for r in RECORDS:
        assert r.kind in KINDS, r.name
        assert r.macs is None or r.macs in MAC_FORMULAS, r.name
        for name in r.tflite:
            assert target_op("tflite", name) is not None, f"{r.name}: TFLite op {name} has no TargetOp"
        for name in r.onnx:
            assert target_op("onnx", name) is not None, f"{r.name}: ONNX op {name} has no TargetOp"
        if r.kind == "refused":
            assert r.hint, r.name
    for op in TARGET_OPS:
        assert op.layout in TFLITE_LAYOUTS and op.role in ONNX_ROLES and (op.macs is None or op.macs in MAC_FORMULAS)


def test_every_accepted_op_has_a_parity_fixture():
    missing = [r.name for r in RECORDS if r.quantizable and not r.fixture]
    assert not missing, f"ops quantize() accepts without a parity fixture: {missing}"
    named = {f for r in RECORDS for f in r.fixture}
    assert named <= set(FIXTURES), named - set(FIXTURES)
    assert set(FIXTURES) <= named, f"fixtures no record names: {set(FIXTURES) - named}"


def test_readme_supported_ops_section_is_generated_from_the_registry():
    text = README.read_text()
    section = re.search(re.escape(START) + r"\n(.*?)" + re.escape(END), text, flags=re.S)
    assert section is not None, "README has no supported-ops markers"
    assert section.group(1) == supported_ops_markdown(), "run: python -m exporters.op_table --readme README.md"


def test_weight_norm_is_folded_into_the_weight_and_the_users_model_is_left_alone():
    from compressor.ops.fixtures import WeightNormConv

    torch.manual_seed(0)
    model = WeightNormConv().eval()
    x = torch.randn(1, 8, 64)
    qmodel = quantize(model, x)
    qmodel.set_mode("float")
    with torch.no_grad():
        assert torch.allclose(qmodel(x), model(x), atol=1e-6)
    assert nn.utils.parametrize.is_parametrized(model.conv)  # folded in a copy
    assert "_weight_norm" not in str(qmodel.graph_module.graph)


class _Spectral(nn.Module):
    def forward(self, x):
        spec = torch.stft(x, 256, 128, window=torch.ones(256), return_complex=True)
        return spec.abs().mean(dim=-1)


def test_a_complex_op_is_refused_with_the_spectral_hint():
    with pytest.raises(UnsupportedOpError) as err:
        quantize(_Spectral(), torch.randn(1, 2048))
    message = str(err.value)
    assert "stft" in message and SPECTRAL_HINT in message and "test_op_registry.py" in message
