"""Which onnxruntime kernels a session uses: int8 where they are exact on this CPU, QDQ fusion off where not."""
from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from exporters import ort_cpu, sessions
from exporters.metadata import METADATA_KEY


def _model(quant_config: dict | None) -> onnx.ModelProto:
    node = helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    if quant_config is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps({"model": {"quant_config": quant_config}})
    return model


@pytest.mark.parametrize("saturating_cpu", [True, False])
@pytest.mark.parametrize("config, widest", [({"weight_bits": 8}, 8), ({"weight_bits": 7}, 7),
                                            ({"weight_bits": 7, "overrides": [{"weight_bits": 8}]}, 8),
                                            (None, None)])
def test_fusion_is_off_only_where_8_bit_weights_would_saturate(monkeypatch, saturating_cpu, config, widest):
    monkeypatch.setattr(ort_cpu, "int8_products_saturate", lambda: saturating_cpu)
    _, integer = sessions.ort_session_options(_model(config), name=f"test {saturating_cpu} {config}")
    may_saturate = widest is None or widest > 7  # no recorded config: unknown weights, taken as 8-bit
    assert integer == (not (saturating_cpu and may_saturate))


def test_an_explicit_choice_wins(monkeypatch):
    monkeypatch.setattr(ort_cpu, "int8_products_saturate", lambda: True)
    _, integer = sessions.ort_session_options(_model({"weight_bits": 8}), integer_kernels=True)
    assert integer
    _, integer = sessions.ort_session_options(_model({"weight_bits": 7}), integer_kernels=False)
    assert not integer
