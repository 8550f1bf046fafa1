import pytest
import torch

from compressor.checkpoint import ArchSpec, load_model, save_float, save_quantized
from compressor.errors import CheckpointError
from compressor.quant import calibrate, quantize
from tests.conftest import TINY_TASNET
from tests.foreign_models import TinyMLP


def _quantized(model, x):
    qm = quantize(model, x)
    calibrate(qm, [x, torch.randn_like(x)])
    return qm


def test_quantized_zoo_checkpoint_round_trip(tmp_path, tiny_tasnet):
    x = torch.randn(2, 800)
    qm = _quantized(tiny_tasnet, x)
    arch = ArchSpec("zoo", "conv_tasnet", tiny_tasnet.config.to_dict())
    path = save_quantized(tmp_path / "q.pt", qm, arch, {"name": "ptq"})
    raw = torch.load(path, weights_only=True)  # no code runs
    assert raw["recipe"] == {"name": "ptq"} and raw["arch"]["name"] == "conv_tasnet"
    assert any("quantizers.act_" in k and k.endswith(".scale") for k in raw["state_dict"])
    loaded = load_model(path)
    assert loaded.quantized and loaded.recipe == {"name": "ptq"}
    with torch.no_grad():
        assert torch.equal(loaded.model(x), qm(x))
        x2 = torch.randn(1, 1234)
        assert torch.equal(loaded.model(x2), qm(x2))


def test_foreign_model_checkpoint_embeds_program(tmp_path):
    torch.manual_seed(0)
    model = TinyMLP()
    x = torch.randn(2, 64)
    arch = ArchSpec.from_program(model, (x,))
    qm = _quantized(arch.build(), x)
    path = save_quantized(tmp_path / "q.pt", qm, arch, {"name": "vanilla"})
    loaded = load_model(path)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), qm(x))


def test_pt2_input_accepted(tmp_path):
    model = TinyMLP()
    x = torch.randn(2, 64)
    program = torch.export.export(model, (x,))
    torch.export.save(program, tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2")
    with torch.no_grad():
        assert torch.allclose(loaded.model(x), model(x))
    assert loaded.arch.kind == "pt2"


def test_model_factory_with_state_dict(tmp_path):
    model = TinyMLP()
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded = load_model(tmp_path / "sd.pt", model_factory="tests.foreign_models:make_tiny_mlp")
    x = torch.randn(1, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


def test_model_factory_bad_spec(tmp_path):
    torch.save(TinyMLP().state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="pkg.module:function"):
        load_model(tmp_path / "sd.pt", model_factory="no_colon")
    with pytest.raises(CheckpointError, match="cannot import"):
        load_model(tmp_path / "sd.pt", model_factory="tests.nope:make")


def test_pickled_module_refused_without_trust(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save(TinyMLP(), path)
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load_model(path)
    assert isinstance(load_model(path, trust_pickle=True).model, TinyMLP)


def test_checkpoint_of_other_architecture_is_refused(tmp_path, tiny_tasnet):
    path = save_float(tmp_path / "f.pt", tiny_tasnet, ArchSpec("zoo", "conv_tasnet", tiny_tasnet.config.to_dict()))
    data = torch.load(path, weights_only=True)
    data["arch"]["config"] = {**TINY_TASNET, "B": 24}  # a different bottleneck width
    torch.save(data, path)
    with pytest.raises(CheckpointError, match="do not fit") as err:
        load_model(path)
    assert "bottleneck" in str(err.value)
    # a state_dict for another model under --model-factory
    torch.save(tiny_tasnet.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "sd.pt", model_factory="tests.foreign_models:make_tiny_mlp")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"RIFF....WAVEfmt "])
def test_garbage_files_refused(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="x.pt"):
        load_model(path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.pt")
