"""Level stage: a gain in front of the int8 model, undone behind it (numpy or torch, no project imports).

An int8 file has fixed input and output ranges, set by calibration at one
level. Audio 12 dB louder clips at the input and output; audio 20 dB quieter
uses a few codes of the input grid. The stage scales each block of audio so
that its peak sits at ``target_peak`` (the calibration level), runs the model,
and divides the output by the same gain::

    g = clip(target_peak / peak(block), 10^(min_gain_db/20), 10^(max_gain_db/20))
    y = model(g * x) / g

For a model whose output scales with its input, f(g x) = g f(x) (a Conv-TasNet
whose encoder has no bias: ReLU and the decoder are homogeneous and gLN
divides the scale out), this is exact in float and the int8 model always sees
audio at its calibration level. A model with biases before its first norm is
not scale-equivariant; there the stage moves the input to the level the model
was trained at, which is also where it works best.

The gain is fixed per block: offline, a block is one chunk of the file
(``peak`` of the chunk itself, so the block's peak lands exactly on the target
and nothing clips). Streaming, ``LevelTracker`` computes it causally from the
current hop and the past: the tracked level jumps up at once (no clipping on
an onset) and decays by ``release_db_per_second``.

Silence (peak 0) gets the largest gain, and ``max_gain_db`` keeps the noise
floor of a silent block from being raised further than that.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

KIND = "level_gain"
#: Every stage kind a file may declare (the spectral one: compressor/stages/spectral.py).
KNOWN_KINDS = (KIND, "stft_mask")


def _peak(x: Any) -> Any:
    """Per-row peak over the last axis, keeping it (numpy arrays and torch tensors)."""
    if hasattr(x, "amax"):  # torch
        return x.detach().abs().amax(dim=-1, keepdim=True)
    return np.max(np.abs(x), axis=-1, keepdims=True)


@dataclass(frozen=True)
class LevelStage:
    """Peak normalisation to the calibration level; ``to_dict`` is its metadata record."""

    target_peak: float
    max_gain_db: float = 30.0
    min_gain_db: float = -30.0
    release_db_per_second: float = 6.0  # LevelTracker only
    kind: str = KIND

    def __post_init__(self) -> None:
        if self.kind != KIND:
            raise ValueError(f"not a level stage: kind {self.kind!r}")
        if not (math.isfinite(self.target_peak) and 0.0 < self.target_peak <= 1.0):
            raise ValueError(f"level stage: target_peak must be in (0, 1], got {self.target_peak}")
        if not self.min_gain_db <= 0.0 <= self.max_gain_db:
            raise ValueError(f"level stage: need min_gain_db <= 0 <= max_gain_db, got "
                             f"{self.min_gain_db} / {self.max_gain_db}")
        if not self.release_db_per_second >= 0.0:
            raise ValueError(f"level stage: release_db_per_second must be >= 0, got {self.release_db_per_second}")

    @property
    def target_dbfs(self) -> float:
        return 20.0 * math.log10(self.target_peak)

    def gain_for_peak(self, peak: Any) -> Any:
        """The block gain for a block peak (array, tensor or float); float32 arithmetic."""
        lo = self.target_peak / 10.0 ** (self.max_gain_db / 20.0)  # peaks below this get the largest gain
        hi = self.target_peak / 10.0 ** (self.min_gain_db / 20.0)
        if hasattr(peak, "clamp"):  # torch
            return self.target_peak / peak.float().clamp(lo, hi)
        return np.float32(self.target_peak) / np.clip(np.asarray(peak, np.float32), np.float32(lo), np.float32(hi))

    def gain(self, block: Any) -> Any:
        """Gain of each row of ``block`` (shape (..., time) -> (..., 1)) from its own peak."""
        return self.gain_for_peak(_peak(block))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LevelStage":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"level stage: unknown field(s) {', '.join(unknown)}")
        try:
            return cls(**{k: (v if k == "kind" else float(v)) for k, v in data.items()})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"level stage: {exc}") from exc


def run_with_gain(stage: LevelStage | None, run: Any, block: Any) -> Any:
    """``run(g * block) / g``: one block through a model with the stage around it (``stage`` None: just run).

    ``block`` is (time,) or (batch, time); the output may carry a sources axis,
    (sources, time) or (batch, sources, time): the gain broadcasts over it.
    """
    if stage is None:
        return run(block)
    g = stage.gain(block)
    out = run(block * g)
    while g.ndim < out.ndim:  # one gain per batch row, over every source
        g = g[..., None, :] if g.ndim >= 2 else g[None]
    return out / g


class LevelTracker:
    """The causal gain for streaming: per hop, from the hop's peak and the decayed past level."""

    def __init__(self, stage: LevelStage, sample_rate: int) -> None:
        self.stage = stage
        self.sample_rate = int(sample_rate)
        self.level = 0.0

    def reset(self) -> None:
        self.level = 0.0

    def next_gain(self, hop: np.ndarray) -> np.float32:
        decay = 10.0 ** (-self.stage.release_db_per_second * hop.shape[-1] / self.sample_rate / 20.0)
        self.level = max(float(np.max(np.abs(hop))) if hop.size else 0.0, self.level * decay)
        return np.float32(self.stage.gain_for_peak(np.float32(self.level)))


def level_stage_of(records: list[dict[str, Any]] | None) -> LevelStage | None:
    """The level stage among a file's metadata stage records, or None (ValueError on an unknown kind)."""
    stages = []
    for record in records or []:
        kind = record.get("kind") if isinstance(record, dict) else record
        if kind not in KNOWN_KINDS:
            raise ValueError(f"unknown pre/post-processing stage {kind!r} (this runtime knows "
                             f"{', '.join(map(repr, KNOWN_KINDS))})")
        if kind == KIND:
            stages.append(LevelStage.from_dict(record))
    return stages[0] if stages else None


__all__ = ["KIND", "LevelStage", "LevelTracker", "level_stage_of", "run_with_gain"]
