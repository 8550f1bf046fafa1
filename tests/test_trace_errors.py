"""A torch.export failure names the user's line, the model class and a hint."""
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.export import Dim

from compressor.errors import UnsupportedOpError
from compressor.quant import quantize

HERE = Path(__file__)


def _line_of(marker: str) -> int:
    """Line number of the single line of this file that ends with ``# <marker>``."""
    hits = [i for i, text in enumerate(HERE.read_text().splitlines(), 1) if text.endswith(f"# {marker}")]
    assert len(hits) == 1, marker
    return hits[0]


class ValueSizedSlice(nn.Module):
    def forward(self, x):
        return x[:, :, : int(x.abs().max() * 10)]  # DD-SHAPE


class SignBranch(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # DD-FLOW
            return x * 2
        return -x


class HundredFrames(nn.Module):
    def forward(self, x):
        return x.view(1, 8, 100) * 2  # FIXED-VIEW


class SixtyFourFrames(nn.Module):
    def forward(self, x):
        return x.view(1, 8, 64) * 2  # FIXED-SPECIALIZED


class NumpyPeak(nn.Module):
    def forward(self, x):
        peak = x.numpy().max()  # NUMPY
        return x / float(peak)


def _error(model, dynamic_shapes="auto"):
    torch.manual_seed(0)
    with pytest.raises(UnsupportedOpError) as info:
        quantize(model, torch.randn(1, 8, 64), dynamic_shapes=dynamic_shapes)
    return info.value


@pytest.mark.parametrize("model, marker, hint_words, dynamic_shapes", [
    (ValueSizedSlice(), "DD-SHAPE", ["data-dependent", "x.shape"], "auto"),
    (SignBranch(), "DD-FLOW", ["data-dependent", "torch.where"], "auto"),
    (HundredFrames(), "FIXED-VIEW", ["input lengths", "length you deploy"], "auto"),
    # A constraint violation carries no user frame: the line is found by a probe.
    (SixtyFourFrames(), "FIXED-SPECIALIZED", ["input lengths", "length you deploy"], ({2: Dim.DYNAMIC},)),
    (NumpyPeak(), "NUMPY", [".numpy()"], "auto"),
])
def test_export_failure_names_the_users_line(model, marker, hint_words, dynamic_shapes):
    err = _error(model, dynamic_shapes)
    msg = str(err)
    assert msg.startswith(f"torch.export could not trace {type(model).__name__}: ")
    assert f"test_trace_errors.py:{_line_of(marker)}: " in msg
    assert f"# {marker}" in msg  # the code on that line, not only its number
    for word in hint_words:
        assert word in msg
    assert "\n" not in msg


def test_torch_message_is_the_cause_not_the_text():
    err = _error(SignBranch())
    assert err.__cause__ is not None
    assert "guard" in str(err.__cause__).lower()
    for internal in ("Eq(u0", "guard_or_false", "TORCH_LOGS", "draft_export"):
        assert internal not in str(err)


def test_a_program_with_a_fixed_batch_says_how_to_export_it_again():
    from tests.foreign_models import make_user_masker

    program = torch.export.export(make_user_masker().eval(), (torch.randn(1, 800),),
                                  dynamic_shapes=({1: torch.export.Dim.AUTO},))
    with pytest.raises(UnsupportedOpError, match=r"axis 0 of size 1 .*dynamic_shapes=") as info:
        quantize(program.module(), torch.randn(2, 800))
    assert "Traceback" not in str(info.value)
