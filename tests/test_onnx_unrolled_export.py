"""ONNX export of unrolled recurrences: linear-time rewrites, one initializer per distinct constant.

asteroid's DPRNN/DPTNet (4 bidirectional LSTMs over 50 and 42 frames) took ~23 min to export to ONNX and 4.5
to TFLite: onnxscript's ``SlicesSplit`` rule, run by torch.onnx's optimizer, tries every pair of Slice nodes
(4 gate slices per frame), and the rewrites here looked producers up once per node. The file kept a copy of
every zero-point, scale and bias per frame.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compressor.ops.fixtures import calibration_chunks, quantized_fixture
from exporters import ExportConfig, export
from exporters.onnx_export import _Graph


def _tiny_graph() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])
    one = numpy_helper.from_array(np.ones(2, np.float32), "one")
    unused = numpy_helper.from_array(np.zeros(3, np.float32), "unused")
    graph = helper.make_graph([helper.make_node("Add", ["x", "one"], ["y"])], "g", [x], [y], [one, unused])
    return helper.make_model(graph)


def test_added_initializers_with_equal_content_are_one():
    g = _Graph(_tiny_graph())
    a = g.add_init(np.asarray(-128, np.int8), "zp")
    b = g.add_init(np.asarray(-128, np.int8), "zp")
    c = g.add_init(np.asarray(-127, np.int8), "zp")
    d = g.add_init(np.asarray([-128], np.int8), "zp")  # another shape: another tensor
    assert a == b and len({a, c, d}) == 3
    g.prune()  # nothing reads them: gone, and not handed out again
    assert set(g.inits) == {"one"} and [t.name for t in g.graph.initializer] == ["one"]
    e = g.add_init(np.asarray(-128, np.int8), "zp")
    assert e != a and e in g.inits


def test_unrolled_lstm_file_stores_each_constant_once(tmp_path):
    qmodel = quantized_fixture("lstm_bidirectional")
    path = tmp_path / "lstm.onnx"
    result = export(qmodel, "onnx", path, config=ExportConfig(target="onnx", verify_chunks=2),
                    calibration=calibration_chunks(2))
    assert result.verification.passed and result.ops["float_op_count"] == 0
    model = onnx.load(str(path))
    contents = [(t.data_type, tuple(t.dims), numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer]
    assert len(contents) == len(set(contents))
    # the gate slices stay Slices (no Split: onnxruntime's QDQ fusion does not look through one, and the gates'
    # Muls would run in float), each tanh runs as an integer sigmoid
    count = result.ops["count"]
    assert "Split" not in count and "Tanh" not in count and count.get("Slice", 0) >= 8 * 2 * 4
