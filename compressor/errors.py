"""Exception types of the toolkit.

Every error a user can provoke with bad input is one of these, and its message
names the file, layer or op involved, so the CLI can print it without a
traceback.
"""


class CompressorError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class DataError(CompressorError):
    """An audio file or a dataset folder cannot be used (names the file)."""


class UnsupportedOpError(CompressorError):
    """quantize() met an op it cannot quantize (names the op and source line)."""


class CheckpointError(CompressorError):
    """A model file cannot be loaded, or does not fit the architecture."""


class RecipeError(CompressorError):
    """An unknown recipe, or a recipe given options it does not take."""


class ConfigError(CompressorError):
    """A configuration value is out of range or of the wrong type."""


class TrainingError(CompressorError):
    """Training cannot start or continue (bad resume state, diverged loss)."""


class ExportError(CompressorError):
    """A quantized model cannot be lowered to an int8 file (names the layer and op)."""


class ParityError(ExportError):
    """An exported file does not compute what the simulated model computes."""


class RuntimeLoadError(CompressorError):
    """A model file cannot be opened by a runtime (corrupt, truncated, unknown format)."""
