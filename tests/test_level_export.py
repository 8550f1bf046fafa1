"""A file with a level stage: loud audio does not clip it, and LiteRT, ORT and the simulation apply it alike."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import runtimes
from compressor.checkpoint import ArchSpec, save_quantized
from compressor.quant import calibrate, quantize
from compressor.recipes.level import pin_io_ranges
from compressor.stages.level import LevelStage
from compressor.stages.level_model import at_level, target_peak_of
from exporters import ExportConfig, export
from tests.conftest import TFLITE_MIN_SNR_DB, TINY_TASNET

CHUNK = 1600  # 0.1 s at 16 kHz
CALIBRATION_RMS = 0.01  # peaks near 0.04: "the calibration level"


def _speechlike(seconds: float, rms: float, seed: int) -> np.ndarray:
    """Noise with a syllable-rate envelope, at ``rms``."""
    rng = np.random.default_rng(seed)
    n = int(16000 * seconds)
    envelope = 0.3 + np.abs(np.sin(np.arange(n) * 2 * np.pi * 4 / 16000))
    x = rng.standard_normal(n) * envelope
    return (x * rms / np.sqrt(np.mean(x ** 2))).astype(np.float32)


def _quantized(stage: LevelStage | None):
    from compressor.zoo import build_model

    torch.manual_seed(0)
    model = build_model("conv_tasnet", TINY_TASNET)
    batches = [torch.from_numpy(np.stack([_speechlike(0.1, CALIBRATION_RMS, 10 * k + j) for j in range(2)]))
               for k in range(4)]
    qmodel = quantize(model, batches[0])
    calibrate(qmodel, at_level(batches, stage) if stage else batches)
    pin_io_ranges(qmodel, stage)
    return qmodel, batches


@pytest.fixture(scope="module")
def staged(tmp_path_factory):
    """The same tiny Conv-TasNet with a level stage: a checkpoint (simulation) and both exported files."""
    folder = tmp_path_factory.mktemp("level")
    batches = [torch.from_numpy(np.stack([_speechlike(0.1, CALIBRATION_RMS, 10 * k + j) for j in range(2)]))
               for k in range(4)]
    stage = LevelStage(target_peak=target_peak_of(batches))
    qmodel, _ = _quantized(stage)
    record = {"name": "ptq", "config": {}, "stages": [stage.to_dict()]}
    arch = ArchSpec("zoo", "conv_tasnet", TINY_TASNET)
    paths = {"pytorch": save_quantized(folder / "q.pt", qmodel, arch, record)}
    calibration = [b[0].numpy() for b in batches]
    for target in ("onnx", "tflite"):
        # The untrained model's output spans a few codes of the pinned +-target grid, so one LSB where LiteRT's
        # kernels round differently (conftest) costs SNR: the floor is lowered, every op is still held to 1 LSB.
        cfg = ExportConfig(target=target, chunk_seconds=CHUNK / 16000, min_snr_db=TFLITE_MIN_SNR_DB)
        result = export(qmodel, target, folder / f"q.{target}", config=cfg, calibration=calibration,
                        model_info={"stages": [stage.to_dict()]})
        assert result.verification.op_max_lsb <= 1
        paths[target] = result.path
    no_stage, _ = _quantized(None)
    paths["pytorch-no-stage"] = save_quantized(folder / "q_nostage.pt", no_stage, arch, {"name": "ptq", "config": {}})
    return stage, paths


def _load(path):
    return runtimes.load(path, chunk_seconds=CHUNK / 16000) if str(path).endswith(".pt") else runtimes.load(path)


@pytest.mark.parametrize("which", ["pytorch", "onnx", "tflite"])
def test_audio_20_db_louder_than_calibration_does_not_clip(staged, which):
    stage, paths = staged
    runtime = _load(paths[which])
    assert runtime.level_stage == stage
    at_calibration = _speechlike(0.45, CALIBRATION_RMS, seed=99)
    runtime.process(at_calibration)
    reference = runtime.clipping()
    runtime.reset_clipping()
    runtime.process(at_calibration * 10)  # +20 dB
    clipping = runtime.clipping()
    assert clipping["input"] == 0.0
    # the stage hands the file the same codes at both levels: the output clips no more than at calibration
    # (this tiny untrained net's output range is a min/max EMA over 4 batches, so it may clip a little there)
    assert clipping["output"] == pytest.approx(reference["output"], abs=1e-9)
    assert clipping["output"] < 0.01


@pytest.mark.parametrize("which", ["pytorch", "onnx", "tflite"])
def test_hard_clipped_loud_audio_does_not_clip_the_output(staged, which):
    """Speech clipped by the ADC has a low crest factor: at the stage's peak it is louder than calibration ever
    was. The output's grid is the input's (pin_io_ranges), so it holds what the model makes of it."""
    stage, paths = staged
    runtime = _load(paths[which])
    assert runtime.metadata.outputs[0].scale == pytest.approx(runtime.metadata.inputs[0].scale)
    runtime.process(np.clip(_speechlike(0.45, CALIBRATION_RMS, seed=99) * 300, -1.0, 1.0))
    assert runtime.clipping()["input"] == 0.0 and runtime.clipping()["output"] < 1e-4


def test_without_the_stage_the_same_audio_clips(staged):
    _, paths = staged
    runtime = _load(paths["pytorch-no-stage"])
    runtime.process(_speechlike(0.45, CALIBRATION_RMS * 10, seed=99))
    assert runtime.clipping()["input"] > 0.01


@pytest.mark.parametrize("which", ["pytorch", "onnx", "tflite"])
def test_stage_makes_the_output_follow_the_input_level_exactly(staged, which):
    """Behind the stage two levels of the same audio are the same codes: the outputs differ by the level alone."""
    _, paths = staged
    runtime = _load(paths[which])
    x = _speechlike(0.3, CALIBRATION_RMS, seed=5)
    quiet, loud = runtime.process(x * 0.1), runtime.process(x * 8.0)
    np.testing.assert_allclose(loud, quiet * 80.0, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(loud))))


def test_stage_runs_identically_in_litert_ort_and_the_simulation(staged):
    _, paths = staged
    x = _speechlike(0.37, CALIBRATION_RMS * 5, seed=7)
    outputs = {k: _load(paths[k]).process(x) for k in ("pytorch", "onnx", "tflite")}
    runtime = _load(paths["tflite"])
    lsb = runtime.metadata.outputs[0].scale
    gain = float(runtime.level_stage.gain(x[:CHUNK])[0])
    for name in ("onnx", "tflite"):
        # within 2 output LSBs (at the stage's level, so divided by its gain) of the simulation
        assert np.max(np.abs(outputs[name] - outputs["pytorch"])) <= 2.0001 * lsb / gain * 2, name


def test_an_output_far_below_the_target_keeps_a_calibrated_grid():
    """Pinned to +-target, an output 26 dB quieter (an untrained model's) would use a few codes."""
    from compressor.recipes.level import output_peaks, output_range_rules

    class Quiet(torch.nn.Module):
        def __init__(self, gain: float):
            super().__init__()
            self.gain = gain

        def forward(self, x):
            return x * self.gain

    stage = LevelStage(target_peak=0.1)
    batches = [torch.randn(2, 800) * 0.02 for _ in range(2)]
    quiet = output_peaks(Quiet(0.05), batches, stage)
    loud = output_peaks(Quiet(0.7), batches, stage)
    assert quiet[0] == pytest.approx(0.005, rel=1e-3) and loud[0] == pytest.approx(0.07, rel=1e-3)
    qmodel, _ = _quantized(None)
    assert output_range_rules(qmodel, stage, quiet) == []
    assert len(output_range_rules(qmodel, stage, loud)) == 1 == len(output_range_rules(qmodel, stage))
