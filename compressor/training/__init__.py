"""Training loop for float training and quantization-aware training (QAT)."""

from compressor.training.config import TrainConfig
from compressor.training.loop import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "train"]
