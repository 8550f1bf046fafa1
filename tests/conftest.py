import pytest
import torch

TINY_TASNET = {"N": 16, "L": 8, "B": 16, "H": 32, "P": 3, "X": 2, "R": 1}


@pytest.fixture(autouse=True)
def _few_threads():
    # Tests run beside other work on 2 cores; more threads only add contention.
    torch.set_num_threads(1)
    yield


@pytest.fixture
def tiny_tasnet():
    from compressor.zoo import build_model

    torch.manual_seed(0)
    return build_model("conv_tasnet", TINY_TASNET)
