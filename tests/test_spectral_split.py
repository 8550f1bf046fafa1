"""Spectral models: the STFT/iSTFT stage in numpy, the split at torch.stft/istft, and deployment end to end."""
import numpy as np
import pytest
import torch
from torch import nn

from compressor.errors import UnsupportedOpError
from compressor.quant import calibrate, quantize
from compressor.recipes.spectral import split_of
from compressor.stages.spectral import SpectralStage
from compressor.stages.spectral_split import SpectralModel, split_spectral
from tests.foreign_models import SpectralMasker, TinyMLP


def _stage(n_fft, hop, window, **kw):
    return SpectralStage(n_fft=n_fft, hop_length=hop, window=tuple(float(w) for w in window), **kw)


@pytest.mark.parametrize("n_fft,hop,win_length,normalized,center", [
    (128, 64, 128, False, True), (100, 25, 80, True, True), (64, 16, 64, False, False)])
def test_numpy_transforms_follow_torch(n_fft, hop, win_length, normalized, center):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3001)).astype(np.float32)
    window = torch.hamming_window(win_length)
    full = torch.zeros(n_fft)
    full[(n_fft - win_length) // 2:][:win_length] = window
    stage = _stage(n_fft, hop, full.tolist(), normalized=normalized, center=center)
    want = torch.stft(torch.from_numpy(x), n_fft, hop, win_length, window, center=center, normalized=normalized,
                      return_complex=True)
    got = stage.stft(x)
    assert got.shape == tuple(want.shape) and stage.frames(x.shape[-1]) == want.shape[-1]
    assert np.abs(got - want.numpy()).max() <= 1e-5 * np.abs(want.numpy()).max()
    spectrum = want * 0.7
    length = 3001 if center else (want.shape[-1] - 1) * hop + n_fft
    back = torch.istft(spectrum, n_fft, hop, win_length, window, center=center, normalized=normalized,
                       length=length).numpy()
    assert np.abs(stage.istft(spectrum.numpy(), length) - back).max() <= 1e-5 * np.abs(back).max()


class LogMasker(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(128))
        self.net = nn.Conv1d(65, 65, 3, padding=1)

    def forward(self, x):
        spec = torch.stft(x, 128, 64, window=self.window, return_complex=True)
        features = torch.log(spec.abs() ** 2 + 1e-8)
        return torch.istft(spec * torch.sigmoid(self.net(features)), 128, 64, window=self.window, length=x.shape[-1])


class RealImagMasker(nn.Module):
    """Features from spec.real / spec.imag and a mask built with torch.complex, as many people write it."""

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(128).sqrt())
        self.net = nn.Conv1d(130, 130, 1)

    def forward(self, x):
        spec = torch.stft(x, 128, 64, window=self.window, return_complex=True)
        re, im = self.net(torch.cat([spec.real, spec.imag], 1)).chunk(2, 1)
        return torch.istft(spec * torch.complex(torch.tanh(re), torch.tanh(im)), 128, 64, window=self.window,
                           length=x.shape[-1])


@pytest.mark.parametrize("make,features,mask,compression", [
    (lambda: SpectralMasker(), "magnitude", "real", ()),
    (lambda: SpectralMasker(mask="complex"), "complex", "complex", ()),
    (LogMasker, "magnitude", "real", (("pow", 2.0), ("add", 1e-8), ("log", 0.0))),
    (RealImagMasker, "complex", "complex", ()),
])
def test_split_reproduces_the_model_at_lengths_it_never_saw(make, features, mask, compression):
    torch.manual_seed(0)
    model = make().eval()
    split = split_spectral(model, torch.randn(2, 4000) * 0.1)
    assert (split.stage.features, split.stage.mask, split.stage.compression) == (features, mask, compression)
    assert not any(n.target in (torch.ops.compress_spectral.stft.default, torch.ops.compress_spectral.istft.default)
                   for n in split.core.graph.nodes)
    for length in (1234, 9999):
        x = torch.randn(1, length) * 0.1
        with torch.no_grad():
            want = model(x)
            assert torch.allclose(SpectralModel(split.core, split.stage)(x), want, atol=1e-6)
            numpy_run = split.stage.run(lambda f: split.core(torch.from_numpy(f)).numpy(), x.numpy())
        assert np.abs(numpy_run - want.numpy()).max() <= 1e-5


def test_split_survives_a_record_round_trip():
    split = split_spectral(LogMasker().eval(), torch.randn(2, 4000))
    assert SpectralStage.from_dict(split.stage.to_dict()) == split.stage


def test_a_waveform_model_is_not_split():
    assert split_of(TinyMLP().eval(), torch.randn(2, 1600)) is None


class PhaseModel(SpectralMasker):
    def forward(self, x):
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, return_complex=True)
        mask = torch.sigmoid(self.net(torch.angle(spec)))
        return torch.istft(spec * mask, self.n_fft, self.hop, window=self.window, length=x.shape[-1])


class ReadsWaveform(SpectralMasker):
    def forward(self, x):
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, return_complex=True)
        mask = torch.sigmoid(self.net(spec.abs())) * x.abs().mean()
        return torch.istft(spec * mask, self.n_fft, self.hop, window=self.window, length=x.shape[-1])


class NoLength(SpectralMasker):
    def forward(self, x):
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, return_complex=True)
        return torch.istft(spec * torch.sigmoid(self.net(spec.abs())), self.n_fft, self.hop, window=self.window)


@pytest.mark.parametrize("model,message", [
    (PhaseModel, "abs() (magnitude) or torch.view_as_real()"),
    (ReadsWaveform, "reads"),
    (NoLength, "length=x.shape[-1]"),
])
def test_what_the_split_cannot_deploy_is_refused_with_the_users_line(model, message):
    with pytest.raises(UnsupportedOpError, match=r"spectral model|torch.istft") as info:
        split_spectral(model().eval(), torch.randn(2, 4000))
    assert message in str(info.value)
    if model is not NoLength:
        assert "test_spectral_split.py" in str(info.value)  # the user's line


def test_exported_spectral_files_match_the_simulation_in_both_runtimes(tmp_path):
    from exporters.api import ExportConfig, export
    from runtimes import load

    torch.manual_seed(0)
    model = SpectralMasker(mask="complex").eval()
    example = torch.randn(2, 8000) * 0.1
    split = split_spectral(model, example)
    qcore = quantize(split.core, split.features(example))
    calibrate(qcore, [split.features(torch.randn(2, 8000) * 0.1) for _ in range(3)])
    stages = [split.stage.to_dict()]
    audio = (np.random.default_rng(1).standard_normal(20000) * 0.1).astype(np.float32)
    outputs = {}
    for target in ("tflite", "onnx"):
        path = tmp_path / f"m.{target}"
        result = export(qcore, target, path, config=ExportConfig(target=target, chunk_seconds=0.5),
                        model_info={"stages": stages})
        assert result.verification.passed
        assert result.metadata.spectral_stage() == split.stage
        assert result.metadata.inputs[0].layout == "batch,bins,frames,complex"
        outputs[target] = load(path).process(audio)
    # the simulation, chunked the same way: the stage around the quantized core
    from runtimes.chunking import overlap_add
    from runtimes.base import DEFAULT_OVERLAP

    sim = SpectralModel(qcore, split.stage)
    with torch.no_grad():
        want = overlap_add(lambda c: sim(torch.from_numpy(c.reshape(1, -1))).numpy(), audio, 8000, DEFAULT_OVERLAP, 1)[0]
    for target, got in outputs.items():
        assert got.shape == audio.shape
        snr = 10 * np.log10(np.sum(want ** 2) / max(np.sum((got - want) ** 2), 1e-20))
        assert snr > 30, (target, snr)
