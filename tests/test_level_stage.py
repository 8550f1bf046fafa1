"""The level stage (compressor/stages/level.py), its torch wrapper, the recipes that fit it, and augmentation."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from compressor.data.augment import LevelAugmented, TiltAugmented, tilt
from compressor.errors import ConfigError, DataError
from compressor.stages.level import LevelStage, LevelTracker, level_stage_of, run_with_gain
from compressor.stages.level_model import LevelGainModel, at_level, target_peak_of
from exporters.metadata import DeployMetadata, TensorSpec


class _Equivariant(torch.nn.Module):
    """Linear, no bias, and a homogeneous nonlinearity: f(g x) = g f(x) for g > 0."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv1d(1, 4, 9, padding=4, bias=False)
        self.back = torch.nn.Conv1d(4, 1, 9, padding=4, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.back(torch.relu(self.conv(x.unsqueeze(1)))).squeeze(1)


@pytest.mark.parametrize("level_db", [-45.0, -20.0, 0.0])
def test_stage_is_undone_exactly_for_a_scale_equivariant_model(level_db):
    model = _Equivariant().eval()
    x = torch.randn(3, 800) * 0.1 * 10 ** (level_db / 20)
    staged = LevelGainModel(model, LevelStage(target_peak=0.3)).eval()
    with torch.no_grad():
        direct, through = model(x), staged(x)
    assert torch.allclose(through, direct, rtol=1e-4, atol=1e-6 * float(direct.abs().max()))


def test_stage_puts_every_block_peak_on_the_target():
    stage = LevelStage(target_peak=0.25)
    for peak in (0.01, 0.05, 0.25, 0.9):  # within the +-30 dB the gain may take
        x = np.sin(np.linspace(0, 40, 1000)).astype(np.float32) * peak
        assert np.max(np.abs(x * stage.gain(x))) == pytest.approx(0.25, rel=1e-5)
    silent = np.zeros(100, np.float32)
    assert float(stage.gain(silent)[0]) == pytest.approx(10 ** (30 / 20), rel=1e-5)  # max_gain_db


def test_run_with_gain_broadcasts_over_sources_and_batches():
    stage = LevelStage(target_peak=0.5)
    x = np.stack([np.full(10, 0.1, np.float32), np.full(10, 0.05, np.float32)])
    seen = []

    def two_sources(block):
        seen.append(np.max(np.abs(block), axis=-1))
        return np.stack([block, 2 * block], axis=1)  # (batch, sources, time)

    out = run_with_gain(stage, two_sources, x)
    np.testing.assert_allclose(seen[0], [0.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], 2 * x, rtol=1e-5)
    np.testing.assert_array_equal(run_with_gain(None, lambda b: b * 3, x), x * 3)  # no stage: just the model


def test_tracker_attacks_at_once_and_releases_slowly():
    stage = LevelStage(target_peak=0.2, release_db_per_second=6.0)
    tracker = LevelTracker(stage, sample_rate=16000)
    quiet, loud = np.full(160, 0.01, np.float32), np.full(160, 0.8, np.float32)
    g_quiet = tracker.next_gain(quiet)
    g_loud = tracker.next_gain(loud)
    assert float(np.max(np.abs(loud * g_loud))) <= 0.2 * (1 + 1e-6)  # an onset never clips
    assert g_loud < g_quiet
    g_after = tracker.next_gain(quiet)  # 10 ms later: the level has decayed by 0.06 dB only
    assert g_after == pytest.approx(g_loud * 10 ** (6.0 * 0.01 / 20), rel=1e-4)


def test_stage_records_validate():
    stage = LevelStage(target_peak=0.1)
    assert level_stage_of([stage.to_dict()]) == stage
    assert level_stage_of(None) is None
    with pytest.raises(ValueError, match="unknown pre/post-processing stage"):
        level_stage_of([{"kind": "reverb"}])
    with pytest.raises(ValueError, match="target_peak"):
        LevelStage(target_peak=0.0)
    with pytest.raises(ValueError, match="unknown field"):
        LevelStage.from_dict({**stage.to_dict(), "colour": 1})


def _metadata(stages):
    spec = TensorSpec("audio_q", "int8", [1, 160], 0.01, 0, "batch,time")
    return DeployMetadata(target="tflite", sample_rate=16000, chunk_samples=160, num_sources=1,
                          inputs=[spec], outputs=[spec], stages=stages)


def test_metadata_carries_the_stage_and_refuses_a_broken_one():
    meta = _metadata([LevelStage(target_peak=0.1).to_dict()])
    assert DeployMetadata.from_json(meta.to_json()).level_stage() == LevelStage(target_peak=0.1)
    old = meta.to_dict()
    del old["stages"]  # files written before the stage existed
    import json

    assert DeployMetadata.from_json(json.dumps(old)).level_stage() is None
    with pytest.raises(ConfigError, match="target_peak"):
        DeployMetadata.from_json(_metadata([{"kind": "level_gain", "target_peak": -1}]).to_json())


def test_target_peak_is_the_median_item_peak_and_at_level_reaches_it():
    batches = [torch.tensor([[0.1, -0.2], [0.4, 0.0]]), torch.tensor([[0.0, -0.3]])]
    assert target_peak_of(batches) == pytest.approx(0.3)
    stage = LevelStage(target_peak=0.3)
    for batch in at_level(batches, stage):
        assert torch.allclose(batch.abs().amax(dim=-1), torch.full((batch.shape[0],), 0.3))
    with pytest.raises(ValueError, match="silent"):
        target_peak_of([torch.zeros(2, 5)])


class _Items(torch.utils.data.Dataset):
    sample_rate = 16000

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.speech = [torch.from_numpy((np.sin(np.arange(4000) * 0.05) * 0.1).astype(np.float32))] * 4
        self.noise = [torch.from_numpy((rng.standard_normal(4000) * 0.03).astype(np.float32)) for _ in range(4)]

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        return {"mixture": self.speech[i] + self.noise[i], "sources": self.speech[i][None], "snr_db": 0.0, "id": str(i)}


def _snr(item) -> float:
    s = item["sources"].numpy().sum(0)
    n = item["mixture"].numpy() - s
    return float(10 * np.log10(np.sum(s ** 2) / np.sum(n ** 2)))


def test_tilt_keeps_the_snr_and_moves_the_spectrum():
    base = _Items()
    tilted = TiltAugmented(base, tilt_range=(0.95, 0.95))
    for i in range(len(base)):
        assert _snr(tilted[i]) == pytest.approx(_snr(base[i]), abs=0.01)
    noise = base[0]["mixture"].numpy() - base[0]["sources"].numpy()[0]
    brown = tilt(noise, 0.95)

    def low_share(x):
        spectrum = np.abs(np.fft.rfft(x)) ** 2
        return spectrum[: len(spectrum) // 8].sum() / spectrum.sum()

    assert low_share(brown) > 2 * low_share(noise)
    assert low_share(tilt(noise, -0.7)) < low_share(noise)
    with pytest.raises(DataError):
        TiltAugmented(base, tilt_range=(0.5, 1.0))


def test_level_augmentation_is_in_range_and_repeatable():
    base = _Items()
    aug = LevelAugmented(base, (-12.0, 12.0), seed=3)
    gains = [float(aug[i]["mixture"].abs().max() / base[i]["mixture"].abs().max()) for i in range(4)]
    assert all(10 ** (-12 / 20) - 1e-6 <= g <= 10 ** (12 / 20) + 1e-6 for g in gains)
    assert len({round(g, 6) for g in gains}) > 1
    assert torch.equal(aug[2]["mixture"], aug[2]["mixture"])
    aug.set_epoch(1)
    assert not torch.equal(aug[2]["mixture"], LevelAugmented(base, (-12.0, 12.0), seed=3)[2]["mixture"])


def test_ptq_fits_the_stage_records_it_and_pins_the_input_grid(tmp_path):
    from compressor.checkpoint import ArchSpec, load_model, save_quantized
    from compressor.data import open_dataset
    from compressor.fqse.io_config import io_quantizers
    from compressor.recipes import RecipeContext, get_recipe, inference_model
    from compressor.zoo import build_model
    from tests.conftest import TINY_TASNET

    torch.manual_seed(0)
    train = open_dataset("demo:train", segment_seconds=0.25, seed=0)
    recipe = get_recipe("ptq").from_options({"calib_batches": 2, "batch_size": 2})
    qmodel = recipe.run(RecipeContext(build_model("conv_tasnet", TINY_TASNET), train, None, tmp_path, progress=False))
    described = recipe.describe()
    stage = level_stage_of(described["stages"])
    assert 0.01 < stage.target_peak < 1.0
    quantizer = qmodel.quantizers()[io_quantizers(qmodel)[0][0]]
    assert quantizer.qparams() == (pytest.approx(stage.target_peak / 126), 0)
    path = save_quantized(tmp_path / "q.pt", qmodel, ArchSpec("zoo", "conv_tasnet", TINY_TASNET), described)
    wrapped = inference_model(load_model(path))
    assert isinstance(wrapped, LevelGainModel) and wrapped.stage == stage
    off = get_recipe("ptq").from_options({"calib_batches": 2, "batch_size": 2, "level_stage": False})
    off.run(RecipeContext(build_model("conv_tasnet", TINY_TASNET), train, None, tmp_path, progress=False))
    assert "stages" not in off.describe()


class _OutputBias(torch.nn.Module):
    """Homogeneous except for a bias on its output layer, as models trained with SI-SNR often carry."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _Equivariant()
        self.bias = torch.nn.Parameter(torch.tensor(0.05))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + self.bias


def test_a_model_that_is_not_scale_equivariant_gets_no_stage(caplog):
    from compressor.recipes.level import EQUIVARIANCE_DB, equivariance_db, fit_level_stage

    torch.manual_seed(1)
    batches = [torch.randn(2, 800) * 0.1 for _ in range(3)]
    assert equivariance_db(_Equivariant(), batches) > 100  # float32 rounding only
    assert equivariance_db(_OutputBias(), batches) < EQUIVARIANCE_DB
    assert fit_level_stage(batches, True, _Equivariant()) is not None
    with caplog.at_level("WARNING"):
        assert fit_level_stage(batches, True, _OutputBias()) is None
    assert "not scale-equivariant" in caplog.text


def test_clip_augmentation_clips_the_chosen_share_of_mixtures_at_full_scale_and_keeps_the_sources_unclipped():
    from compressor.data.augment import ClipAugmented
    from compressor.data.mixing import MAX_PEAK

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return 200

        def __getitem__(self, i):
            t = torch.linspace(0, 40, 800)
            source = 0.05 * torch.sin(t + i)
            return {"mixture": source + 0.01 * torch.cos(3 * t), "sources": source[None]}

    augmented = ClipAugmented(Items(), share=0.25, seed=3)
    clipped = 0
    for i in range(len(augmented)):
        item, original = augmented[i], Items()[i]
        if torch.equal(item["mixture"], original["mixture"]):
            continue
        clipped += 1
        assert float(item["mixture"].abs().max()) == pytest.approx(MAX_PEAK)
        gain = float(item["sources"].abs().max() / original["sources"].abs().max())
        assert gain * float(original["mixture"].abs().max()) >= MAX_PEAK * 0.999  # driven past full scale
        assert torch.allclose(item["sources"], original["sources"] * gain)  # the references are not clipped
    assert 30 <= clipped <= 70  # about a quarter of 200
    assert all(torch.equal(augmented[i]["mixture"], augmented[i]["mixture"]) for i in range(5))  # same draw again


def test_ptq_clips_a_share_of_its_calibration_items_only_behind_a_stage():
    from compressor.recipes.level import PTQ_CLIP_AUG, clip_share
    from compressor.stages.level import LevelStage

    stage = LevelStage(target_peak=0.1)
    assert clip_share(None, stage, PTQ_CLIP_AUG) == PTQ_CLIP_AUG > 0
    assert clip_share(None, None, PTQ_CLIP_AUG) == 0.0  # no stage: ranges for full-scale audio would be wasted
    assert clip_share(0.0, stage, PTQ_CLIP_AUG) == 0.0 and clip_share(0.5, None, PTQ_CLIP_AUG) == 0.5  # the user's


def test_a_model_refused_a_stage_keeps_an_8_bit_output(tmp_path):
    from compressor.fqse.io_config import io_quantizers
    from compressor.recipes import RecipeContext, get_recipe

    class Items(torch.utils.data.Dataset):
        sample_rate = 16000

        def __len__(self):
            return 4

        def __getitem__(self, i):
            x = torch.sin(torch.arange(800) * 0.05 * (i + 1)) * 0.1
            return {"mixture": x, "sources": x[None], "snr_db": 0.0, "id": str(i)}

    recipe = get_recipe("ptq").from_options({"calib_batches": 2, "batch_size": 2, "tilt_aug": False})
    qmodel = recipe.run(RecipeContext(_OutputBias(), Items(), None, tmp_path, progress=False))
    (_,), (output,) = io_quantizers(qmodel)
    assert "stages" not in recipe.describe() and qmodel.quantizers()[output].bits == 8
