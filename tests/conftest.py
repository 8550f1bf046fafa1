import pytest
import torch

TINY_TASNET = {"N": 16, "L": 8, "B": 16, "H": 32, "P": 3, "X": 2, "R": 1}
# End-to-end slack of LiteRT files of the untrained TINY_TASNET against the simulation. Each op is held to 1 LSB
# (the exporter's check) and 1-LSB differences grow a little through ~15 requantizations: max 2 LSB / 36 dB on
# AVX2 and on AVX-512 VNNI. (On AVX2, 5-6 LSB / 29 dB until gLN's long mean left XNNPACK's MEAN, which saturated:
# exporters/lowering.py lower_long_means.)
TFLITE_END_TO_END_LSB = 2
TFLITE_MIN_SNR_DB = 25.0  # the exporter's default floor


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
