"""Speech-quality models behind any runtime: audio -> log-mel clips -> one score per clip.

A quality model's file takes the log-mel spectrogram of one clip (the
front-end is numpy, compressor/bam/frontend.py; its parameters come from the
file's metadata ``model.frontend`` when present, else the defaults, which
must fit the file's input shape). Longer audio is cut into clips; the
prediction is the mean of the clips' scores.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from compressor.bam.frontend import MelConfig, clip_segments, log_mel
from compressor.errors import DataError
from runtimes.base import Runtime, to_float_pcm


def frontend_of(runtime: Runtime) -> MelConfig | None:
    """The mel front-end of a quality model, or None for other models (audio in, audio out)."""
    meta = runtime.metadata
    stored = meta.model.get("frontend") if isinstance(meta.model, dict) else None
    mel = MelConfig.from_dict(stored) if stored else MelConfig(sample_rate=meta.sample_rate)
    shape = meta.inputs[0].shape
    if meta.model.get("task") == "quality" or (len(shape) == 3 and shape[1:] == [mel.frames(), mel.n_mels]):
        return mel
    return None


def predict_quality(runtime: Runtime, pcm: np.ndarray, hop_seconds: float | None = None) -> dict[str, Any]:
    """Predicted quality of ``pcm`` (int16 or float mono): per clip and their mean."""
    mel = frontend_of(runtime)
    if mel is None:
        raise DataError(f"{runtime.name}: this model is not a speech-quality model (its input is "
                        f"{runtime.metadata.inputs[0].shape})")
    audio = to_float_pcm(pcm)
    spec_in, spec_out = runtime.metadata.inputs[0], runtime.metadata.outputs[0]
    scores = []
    for clip in clip_segments(audio, mel, hop_seconds):
        codes = spec_in.quantize(log_mel(clip, mel).reshape(spec_in.shape))
        scores.append(float(spec_out.dequantize(runtime.run_codes(codes)[0]).reshape(-1)[0]))
    return {"score": float(np.mean(scores)), "clips": scores, "clip_seconds": mel.clip_seconds}
