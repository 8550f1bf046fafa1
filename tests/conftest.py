import pytest
import torch

TINY_TASNET = {"N": 16, "L": 8, "B": 16, "H": 32, "P": 3, "X": 2, "R": 1}
# End-to-end slack of LiteRT files of the untrained TINY_TASNET against the simulation. Each op is held to 1 LSB
# (the exporter's check); how far 1-LSB differences grow through ~15 requantizations depends on the CPU: XNNPACK's
# AVX2 kernels (and torch's float convolutions the simulation runs) round differently from their VNNI/AVX-512
# versions. Measured: max 2 LSB / SNR > 30 dB on an AVX-512 VNNI machine, max 5-6 LSB / 29 dB on an AVX2 one.
TFLITE_END_TO_END_LSB = 6
TFLITE_MIN_SNR_DB = 15.0  # export floor for random tiny models (default 25 dB): FQSE's measured 18.8 dB on AVX2


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests run beside other work on 2 cores; more threads only add contention.
    torch.set_num_threads(1)
    yield


@pytest.fixture
def eager_fake_quant(monkeypatch):
    """torch's own fake-quant kernels (bit-identical): compiling the fast ones takes ~20 s once per process."""
    from compressor.quant import fake_quant

    monkeypatch.setattr(fake_quant._Kernels, "compiled", False)


@pytest.fixture
def tiny_tasnet():
    from compressor.zoo import build_model

    torch.manual_seed(0)
    return build_model("conv_tasnet", TINY_TASNET)
