"""Open an exported file and run one input through it (raw int8 codes in and out).

Verification needs this right after writing a file; the user-facing layer
with PCM, chunking and resampling is ``runtimes`` (which builds on this).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from compressor.errors import RuntimeLoadError
from exporters.metadata import METADATA_KEY, DeployMetadata


class OnnxSession:
    """A QDQ .onnx file in onnxruntime (CPU).

    ``integer_kernels=False`` switches ORT's QDQ fusion off: every op then runs
    in float between DequantizeLinear and QuantizeLinear, the reference
    semantics of the file, apart from ORT's int8 kernels (which saturate on
    x86 CPUs without VNNI, see DESIGN.md).
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, integer_kernels: bool = True) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        if not integer_kernels:
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        _register_extensions(options)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/InvalidProtobuf types
            raise RuntimeLoadError(f"{self.path}: onnxruntime cannot load it ({_first_line(exc)})") from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        if METADATA_KEY not in meta:
            raise RuntimeLoadError(f"{self.path}: no {METADATA_KEY!r} metadata; was it written by `compress export`?")
        self.metadata = DeployMetadata.from_json(meta[METADATA_KEY])
        self.integer_kernels = integer_kernels
        self._input = self.session.get_inputs()[0].name

    def run_codes(self, codes: np.ndarray) -> list[np.ndarray]:
        return list(self.session.run(None, {self._input: codes}))


def _register_extensions(options) -> None:
    """onnxruntime-extensions' custom ops (the WAV pipeline's AudioDecoder), where that package is installed."""
    try:
        from onnxruntime_extensions import get_library_path
    except ImportError:
        return
    options.register_custom_ops_library(get_library_path())


class LiteRTSession:
    """An int8 .tflite in the LiteRT interpreter; XNNPACK unless ``xnnpack=False``."""

    name = "litert"

    def __init__(self, path: str | Path, threads: int | None = None, xnnpack: bool = True) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        from exporters.tflite_export import read_metadata

        self.path = Path(path)
        try:
            content = self.path.read_bytes()
            text = read_metadata(content)
        except Exception as exc:  # a truncated flatbuffer fails inside the generated parser
            raise RuntimeLoadError(f"{self.path}: not a readable .tflite file ({_first_line(exc)})") from exc
        if text is None:
            raise RuntimeLoadError(f"{self.path}: no {METADATA_KEY!r} metadata; was it written by `compress export`?")
        self.metadata = DeployMetadata.from_json(text)
        resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.interpreter = Interpreter(model_content=content, num_threads=threads,
                                           experimental_op_resolver_type=resolver)
            self.interpreter.allocate_tensors()
        except Exception as exc:
            raise RuntimeLoadError(f"{self.path}: LiteRT cannot load it ({_first_line(exc)})") from exc
        self._input = self.interpreter.get_input_details()[0]["index"]
        self._outputs = [d["index"] for d in self.interpreter.get_output_details()]
        self.xnnpack = xnnpack

    def run_codes(self, codes: np.ndarray) -> list[np.ndarray]:
        self.interpreter.set_tensor(self._input, codes)
        self.interpreter.invoke()
        return [self.interpreter.get_tensor(i).copy() for i in self._outputs]


def open_session(path: str | Path, threads: int | None = None, **options: object) -> OnnxSession | LiteRTSession:
    path = Path(path)
    if not path.is_file():
        raise RuntimeLoadError(f"{path}: no such file")
    if path.suffix.lower() == ".onnx":
        return OnnxSession(path, threads, **options)  # type: ignore[arg-type]
    if path.suffix.lower() == ".tflite":
        return LiteRTSession(path, threads, **options)  # type: ignore[arg-type]
    raise RuntimeLoadError(f"{path}: not an exported model (.onnx or .tflite)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
