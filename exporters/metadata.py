"""What a deployed file carries about itself, inside the file.

Runtimes need the input/output qparams, the sample rate, the fixed chunk
length, the source count and (for FQSE models) the splitter/combiner
parameters. They travel as one JSON document inside the model file: an
ONNX ``metadata_props`` entry, a TFLite ``metadata`` buffer, both under the
key ``METADATA_KEY``, so a user cannot lose them the way a sidecar gets lost.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from compressor.configs import JsonConfig
from compressor.errors import ConfigError

if TYPE_CHECKING:
    from compressor.stages.level import LevelStage
    from compressor.stages.spectral import SpectralStage

METADATA_KEY = "audio_compress"
FORMAT_VERSION = 1


#: Codes a boundary tensor may hold: int8, uint8 (ONNX files with uint8 activations), int16 (an output a
#: precision rule keeps at 16 bits: audio out at 16 bits, as a DAC takes it).
CODE_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


@dataclass(frozen=True)
class TensorSpec(JsonConfig):
    """One int8 (uint8, or for an output int16) tensor at the file's boundary and how it maps to real values."""

    name: str
    dtype: str  # a key of CODE_RANGES
    shape: list[int]
    scale: float
    zero_point: int
    layout: str  # e.g. "batch,time" or "batch,sources,time"

    def __post_init__(self) -> None:
        if self.dtype not in CODE_RANGES:
            raise ConfigError(f"TensorSpec.dtype must be one of {', '.join(CODE_RANGES)}, got {self.dtype!r}")

    @property
    def qmin(self) -> int:
        return CODE_RANGES[self.dtype][0]

    @property
    def qmax(self) -> int:
        return CODE_RANGES[self.dtype][1]

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Codes exactly as the simulation rounds: round-half-even(x * (1/s)) + zp, clipped."""
        inv = np.float32(1.0) / np.float32(self.scale)
        codes = np.rint(np.asarray(x, np.float32) * inv) + self.zero_point
        return np.clip(codes, self.qmin, self.qmax).astype(self.dtype)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        return ((codes.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)).astype(np.float32)


def io_processing(recipe: dict[str, Any] | None) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(splitter, combiner) a model trained with ``recipe`` needs around its int8 graph, or None each.

    FQSE (compressor/fqse/io_codec.py): the input splitter turns mono audio
    into two int8 channels (high and low byte), the RQB combiner adds the
    second int8 output back as ``y = Q(Y_o) + eps / gain``.
    """
    if not recipe or recipe.get("name") != "fqse":
        return None, None
    config = recipe.get("config", {})
    splitter = {"kind": "fqse_split", "bits": 8} if config.get("input_precision", "split") == "split" else None
    combiner = ({"kind": "fqse_rqb", "gain": float(config.get("gain", 128.0))}
                if config.get("output_precision", "rqb") == "rqb" else None)
    return splitter, combiner


def stages_of(recipe: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The stages around the whole file that the checkpoint's recipe fitted (the level stage), outermost first."""
    return list((recipe or {}).get("stages", []))


@dataclass(frozen=True)
class DeployMetadata(JsonConfig):
    """The JSON document embedded in every exported file."""

    target: str  # "onnx" | "tflite"
    sample_rate: int
    chunk_samples: int  # the file's fixed input length
    num_sources: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    model: dict[str, Any] = field(default_factory=dict)  # architecture, recipe, quant config
    # FQSE pre/post-processing (input splitter, RQB combiner); None for plain models
    splitter: dict[str, Any] | None = None
    combiner: dict[str, Any] | None = None
    allowed_float_ops: list[str] = field(default_factory=list)
    # Stages around the whole file, outermost first (compressor/stages/): e.g. the level gain
    # applied before the input quantizer and undone after the output. Files without it run as before.
    stages: list[dict[str, Any]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    producer: str = "audio-compress"

    def to_json(self) -> str:
        data = self.to_dict()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "DeployMetadata":
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"embedded {METADATA_KEY} metadata is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"embedded {METADATA_KEY} metadata is not a JSON object")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ConfigError(f"embedded metadata has format_version {version!r}; this runtime reads {FORMAT_VERSION}")
        data = dict(data)
        data["inputs"] = [TensorSpec.from_dict(t) for t in data.get("inputs", [])]
        data["outputs"] = [TensorSpec.from_dict(t) for t in data.get("outputs", [])]
        meta = cls.from_dict(data)
        meta.level_stage()  # a broken stage record fails at load, not mid-stream
        meta.spectral_stage()
        return meta

    def level_stage(self) -> "LevelStage | None":
        """The level stage this file declares (compressor/stages/level.py), or None."""
        from compressor.stages.level import level_stage_of

        try:
            return level_stage_of(self.stages)
        except ValueError as exc:
            raise ConfigError(f"embedded {METADATA_KEY} metadata: {exc}") from exc

    def spectral_stage(self) -> "SpectralStage | None":
        """The STFT / mask / iSTFT stage around a spectral model's file (compressor/stages/spectral.py), or None."""
        from compressor.stages.spectral import spectral_stage_of

        try:
            return spectral_stage_of(self.stages)
        except ValueError as exc:
            raise ConfigError(f"embedded {METADATA_KEY} metadata: {exc}") from exc
