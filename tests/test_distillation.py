"""Distillation from the float model during QAT (training/distillation.py)."""
import pytest
import torch

from compressor.data import open_dataset
from compressor.errors import ConfigError
from compressor.losses import neg_si_snr_loss
from compressor.recipes import RecipeContext, get_recipe
from compressor.training.distillation import TeacherTargets, distillation_loss


def test_loss_mixes_task_and_teacher_terms_and_is_the_task_loss_on_plain_items():
    gen = torch.Generator().manual_seed(0)
    est, clean, taught = (torch.randn(2, 1, 800, generator=gen) for _ in range(3))
    loss = distillation_loss(0.25)
    assert torch.allclose(loss(est, clean), neg_si_snr_loss(est, clean))
    mixed = 0.75 * neg_si_snr_loss(est, clean) + 0.25 * neg_si_snr_loss(est, taught, pit=False)
    assert torch.allclose(loss(est, torch.cat([clean, taught], dim=1)), mixed)
    assert distillation_loss(1.0)(taught, torch.cat([clean, taught], dim=1)) < -60  # matching the teacher
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        distillation_loss(1.5)


def test_teacher_targets_append_the_teacher_output(tiny_tasnet):
    base = open_dataset("demo:train", segment_seconds=0.25, seed=0)
    item = TeacherTargets(base, tiny_tasnet)[3]
    plain = base[3]
    assert item["sources"].shape == (2, plain["sources"].shape[-1])
    assert torch.equal(item["sources"][:1], plain["sources"].float())
    with torch.no_grad():
        assert torch.allclose(item["sources"][1:], tiny_tasnet(plain["mixture"].float().unsqueeze(0))[0])


def test_the_teacher_is_a_frozen_copy_not_the_model_qat_trains(tiny_tasnet):
    from compressor.recipes.vanilla import QATConfig, teacher_copy

    assert teacher_copy(tiny_tasnet, QATConfig()) is None  # distillation off by default
    teacher = teacher_copy(tiny_tasnet, QATConfig(distill=0.5))
    ours = {p.data_ptr() for p in tiny_tasnet.parameters()}
    assert all(p.data_ptr() not in ours for p in teacher.parameters())
    TeacherTargets(open_dataset("demo:train", segment_seconds=0.25, seed=0), teacher)
    assert not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("recipe", ["vanilla", "fqse"])
def test_qat_with_distillation_runs_end_to_end(tiny_tasnet, tmp_path, recipe):
    train = open_dataset("demo:train", segment_seconds=0.25, seed=0)
    r = get_recipe(recipe).from_options({"steps": 2, "batch_size": 2, "calib_batches": 2, "checkpoint_every": 2,
                                         "validate_every": 2, "distill": 0.5})
    assert r.describe()["config"]["distill"] == 0.5
    qmodel = r.run(RecipeContext(tiny_tasnet, train, None, tmp_path / "run", progress=False))
    x = torch.randn(1, 2, 1600) * 0.1 if recipe == "fqse" else torch.randn(1, 1600) * 0.1
    with torch.no_grad():
        out = qmodel(x)
    assert all(torch.isfinite(o).all() for o in (out if isinstance(out, tuple) else (out,)))
