"""The TFLite op-by-op check on unrolled recurrences: each frame's op is compared with that frame's tensor.

The file's tensors carry no graph names, so the check matches them by qparams and size; every frame of an
unrolled LSTM has the same ones (a state grid, the sigmoid/tanh grids), and near-equal frames (saturated
gates, converged states) made it take another frame's tensor and feed it on: asteroid's DPTNet was refused
with 49-101 ops "2-17 LSB off" although every op of its file computes what the simulation computes from
the file's own inputs. The candidates now say which file tensor they are and what their op reads, and the
check takes the one computed from the tensors it took for the op's inputs.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.ops.fixtures import INPUT_SHAPE, calibration_chunks, quantized_fixture
from exporters import ExportConfig, export
from exporters.lowering import lower
from exporters.verify import _pick, lowered_tensors, op_parity, qparams_of


def _file_tensor(values, index: int, sources: set[int]):
    from exporters.tflite_export import FileTensor

    tensor = np.asarray(values, dtype=np.int8).view(FileTensor)
    tensor.index, tensor.sources = index, frozenset(sources)
    return tensor


def test_pick_prefers_the_tensor_computed_from_the_picked_inputs():
    want = np.array([[10, 20, 30]], dtype=np.int8)
    this_frame = _file_tensor([[11, 20, 30]], index=7, sources={3})  # 1 LSB off (rounding)
    other_frame = _file_tensor([[10, 20, 30]], index=9, sources={4})  # equal by value, another frame's
    have, index = _pick([other_frame, this_frame], want, 0, frozenset({3}))
    assert index == 7 and have.tolist() == [[11, 20, 30]]
    # nothing known about the inputs: the nearest by value, as before
    have, index = _pick([other_frame, this_frame], want, 0, frozenset())
    assert index == 9
    # plain arrays (ONNX, found by name): by value
    have, index = _pick([np.asarray(want)], want, 0, frozenset({3}))
    assert index == -1 and have.tolist() == want.tolist()


@pytest.mark.parametrize("name", ["lstm_bidirectional", "gru"])
def test_every_frame_is_checked_against_its_own_tensor(tmp_path, name):
    from exporters import tflite_export

    qmodel = quantized_fixture(name)
    path = tmp_path / f"{name}.tflite"
    result = export(qmodel, "tflite", path, config=ExportConfig(target="tflite", verify_chunks=2),
                    calibration=calibration_chunks(2))
    assert result.verification.passed
    lowered = lower(qmodel, int8_io=False, input_shape=list(INPUT_SHAPE))
    chunk = calibration_chunks(1)[0]
    spec = result.metadata.inputs[0]
    codes = spec.quantize(chunk.reshape(spec.shape))
    expected = lowered_tensors(lowered, codes, float_input=True)
    wanted = qparams_of(lowered, list(expected), expected)
    picked: dict[str, int] = {}
    rows = op_parity(lowered, lambda c: tflite_export.intermediate_tensors(path, wanted, c), [codes],
                     float_input=True, picked=picked)
    assert rows and max(r["max_lsb"] for r in rows.values()) <= 1
    # each frame's computed tensors are distinct file tensors (no frame checked against another's)
    computed = {n.name for n in lowered.module.graph.nodes
                if n.name in picked and n.args[0].target in (torch.ops.aten.mul.Tensor, torch.ops.aten.add.Tensor,
                                                             torch.ops.aten.sigmoid.default,
                                                             torch.ops.aten.tanh.default)}
    assert len(computed) >= 8 * 3
    assert len({picked[k] for k in computed}) == len(computed)
