"""Configuration of a training run (float training and QAT alike)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from compressor.configs import JsonConfig
from compressor.errors import ConfigError

LR_SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Everything that decides what a training run computes.

    steps:            total number of optimizer steps.
    batch_size:       items per batch *per process*; under torchrun the global
                      batch is ``batch_size * world_size``.
    lr:               Adam learning rate of the default parameter group (param
                      groups passed to ``train`` may set their own).
    grad_clip:        maximum global gradient norm; ``None`` or ``0`` = off.
    weight_decay:     Adam (L2) weight decay.
    checkpoint_every: write ``train_state.pt`` every this many steps (and at the end).
    validate_every:   compute the validation loss every this many steps (and at
                      the end); ``0`` = only at the end.
    seed:             seeds torch / numpy / random and the data order.
    num_workers:      DataLoader worker processes for the training set.
    log_every:        add a history entry / log line every this many steps.
    lr_schedule:      ``"constant"`` or ``"cosine"`` (cosine decay to 0 at ``steps``).
    warmup_steps:     linear warm-up from 0 over this many steps.
    device:           ``"auto"`` (CUDA when available), ``"cuda"`` (falls back to
                      CPU with a warning when unavailable) or ``"cpu"``.
    """

    steps: int
    batch_size: int
    lr: float
    grad_clip: float | None = 5.0
    weight_decay: float = 0.0
    checkpoint_every: int = 1000
    validate_every: int = 1000
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        def positive_int(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if not _is_int(value) or value < minimum:
                raise ConfigError(
                    f"TrainConfig.{name} must be an integer >= {minimum}, got {value!r}"
                )

        def float_field(name: str, *, allow_none: bool = False, strictly_positive: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            if not _is_number(value) or not math.isfinite(value):
                raise ConfigError(f"TrainConfig.{name} must be a finite number, got {value!r}")
            if value < 0 or (strictly_positive and value == 0):
                bound = "> 0" if strictly_positive else ">= 0"
                raise ConfigError(f"TrainConfig.{name} must be {bound}, got {value!r}")
            object.__setattr__(self, name, float(value))

        positive_int("steps", 1)
        positive_int("batch_size", 1)
        float_field("lr")
        float_field("grad_clip", allow_none=True)
        float_field("weight_decay")
        positive_int("checkpoint_every", 1)
        positive_int("validate_every", 0)
        positive_int("seed", 0)
        positive_int("num_workers", 0)
        positive_int("log_every", 1)
        positive_int("warmup_steps", 0)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(
                f"TrainConfig.lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                f"got {self.lr_schedule!r}"
            )
        if self.device not in DEVICES:
            raise ConfigError(
                f"TrainConfig.device must be one of {', '.join(DEVICES)}, got {self.device!r}"
            )

    @property
    def clip_enabled(self) -> bool:
        return self.grad_clip is not None and self.grad_clip > 0
