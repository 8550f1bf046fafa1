"""nn.GRU / nn.LSTM as users write them: substituted exactly, simulated at any length, saved and reloaded."""
import pytest
import torch
from torch import nn

from compressor.checkpoint import ArchSpec, LoadedModel, arch_of, load_model, save_quantized
from compressor.quant import calibrate, quantize
from compressor.recurrent.quantized import QuantizedRecurrence
from compressor.recurrent.substitute import RecurrentStack, substitute_recurrent


def _flat(result):
    out, state = result
    return [out, *(state if isinstance(state, tuple) else (state,))]


@pytest.mark.parametrize("cls", [nn.GRU, nn.LSTM])
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_substitute_computes_what_the_original_computes(cls, batch_first, bidirectional):
    torch.manual_seed(0)
    rnn = cls(5, 7, num_layers=2, batch_first=batch_first, bidirectional=bidirectional, dropout=0.3).eval()
    swapped = substitute_recurrent(nn.Sequential(rnn))[0]
    assert isinstance(swapped, RecurrentStack)
    directions = 2 if bidirectional else 1
    x = torch.randn(3, 11, 5) if batch_first else torch.randn(11, 3, 5)
    h0 = torch.randn(2 * directions, 3, 7)
    initial = (h0, torch.randn_like(h0)) if cls is nn.LSTM else h0
    unbatched = x[0] if batch_first else x[:, 0]
    with torch.no_grad():
        for args in ((x,), (x, initial), (unbatched,)):
            for want, got in zip(_flat(rnn(*args)), _flat(swapped(*args))):
                assert want.shape == got.shape
                assert float((want - got).abs().max()) <= 1e-5 * float(want.abs().max())


def test_users_model_is_left_alone():
    model = nn.Sequential(nn.GRU(4, 4))
    substitute_recurrent(model)
    assert isinstance(model[0], nn.GRU)


class Enhancer(nn.Module):
    """A CRN-like masker: conv encoder, GRU over frames, sigmoid mask, transposed-conv decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Conv1d(1, 16, 16, stride=8, padding=4)
        self.gru = nn.GRU(16, 16, batch_first=True)
        self.mask = nn.Linear(16, 16)
        self.decoder = nn.ConvTranspose1d(16, 1, 16, stride=8, padding=4)

    def forward(self, x):
        w = torch.relu(self.encoder(x.unsqueeze(1)))
        frames, _ = self.gru(w.transpose(1, 2))
        m = torch.sigmoid(self.mask(frames)).transpose(1, 2)
        return self.decoder(w * m).squeeze(1)


def _quantized_enhancer():
    torch.manual_seed(0)
    model = Enhancer().eval()
    x = torch.randn(2, 800) * 0.1
    qm = quantize(model, x)
    calibrate(qm, [torch.randn(2, 1600) * 0.1 for _ in range(3)])
    return model, qm


def test_simulation_runs_lengths_the_trace_never_saw():
    model, qm = _quantized_enhancer()
    assert any(isinstance(m, QuantizedRecurrence) for m in qm.modules())
    with torch.no_grad():
        for length in (800, 1208, 4000):
            x = torch.randn(1, length) * 0.1
            want = model(x)
            qm.set_mode("float")
            assert torch.allclose(qm(x), want, atol=1e-5)
            qm.set_mode("quantize")
            got = qm(x)
            snr = 10 * torch.log10(want.pow(2).sum() / (want - got).pow(2).sum())
            assert got.shape == want.shape and snr > 15, f"{length} samples: {float(snr):.1f} dB"


def test_a_recurrent_checkpoint_reloads_identically(tmp_path):
    model, qm = _quantized_enhancer()
    arch = arch_of(LoadedModel(model, None, tmp_path / "m"))
    path = save_quantized(tmp_path / "q.pt", qm, arch, {"name": "ptq"})
    loaded = load_model(path)
    assert sorted(loaded.model.quantizers()) == sorted(qm.quantizers())
    x = torch.randn(1, 2000) * 0.1
    with torch.no_grad():
        assert torch.equal(loaded.model(x), qm(x))
    assert isinstance(arch, ArchSpec)


def test_macs_count_the_hidden_linear_once_per_frame():
    from compressor.ops.macs import count_macs, mac_rows

    model, qm = _quantized_enhancer()
    x = torch.randn(1, 1600)
    rows = {row["op"]: row for row in mac_rows(qm.graph_module, x)}
    frames, hidden = 1600 // 8, 16
    assert rows["recurrent"]["macs"] == frames * 3 * hidden * hidden
    assert count_macs(model, x) == count_macs(qm, x)  # the float model counts the same layers


def test_a_linear_after_the_recurrence_stays_integer_in_onnx(tmp_path):
    """The unrolled outputs feed a Linear on [batch, frames, features]: it must still become one QGemm."""
    from exporters import ExportConfig, export

    _, qm = _quantized_enhancer()
    cfg = ExportConfig(target="onnx", chunk_seconds=0.02, verify_chunks=2)
    calibration = [(torch.randn(1, 1600) * 0.1).numpy()]
    result = export(qm, "onnx", tmp_path / "m.onnx", config=cfg, calibration=calibration)
    assert result.ops["float_op_count"] == 0 and result.verification.passed


class LstmMasker(Enhancer):
    """The same masker with an LSTM, whose cell state a precision rule can widen."""

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.LSTM(16, 16, batch_first=True)


def test_a_precision_rule_naming_the_cell_state_widens_it_and_nothing_else():
    from compressor.quant import QuantConfig
    from compressor.quant.precision import precision_overrides

    torch.manual_seed(0)
    model = LstmMasker().eval()
    x = torch.randn(2, 800) * 0.1
    widened = quantize(model, x, QuantConfig(overrides=precision_overrides(["#rnn_*_cell=a16"])))
    bits = {name: q.bits for name, q in widened.activation_quantizers().items() if hasattr(q, "bits")}
    cells = {name for name in bits if name.startswith("rnn_") and name.endswith("_cell")}
    assert cells and all(bits[name] == 16 for name in cells)
    assert all(b == 8 for name, b in bits.items() if name not in cells)
    plain = quantize(model, x)
    assert all(q.bits == 8 for name, q in plain.activation_quantizers().items() if name in cells)
