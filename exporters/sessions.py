"""Open an exported file and run one input through it (raw int8 codes in and out).

Verification needs this right after writing a file; the user-facing layer
with PCM, chunking and resampling is ``runtimes`` (which builds on this).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from compressor.errors import RuntimeLoadError
from exporters.metadata import METADATA_KEY, DeployMetadata
from exporters.ort_cpu import int8_kernels_exact

log = logging.getLogger(__name__)


class OnnxSession:
    """A QDQ .onnx file in onnxruntime (CPU).

    ``integer_kernels=False`` switches ORT's QDQ fusion off: every op then runs
    in float between DequantizeLinear and QuantizeLinear, the reference
    semantics of the file, apart from ORT's int8 kernels (which saturate on
    x86 CPUs without VNNI, see DESIGN.md); None (default): on where they are
    exact for the file (``ort_session_options``).
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, integer_kernels: bool | None = None) -> None:
        import onnx
        import onnxruntime as ort

        self.path = Path(path)
        try:
            model = onnx.load(str(self.path), load_external_data=False)
        except Exception as exc:  # a truncated or foreign file: onnx raises DecodeError and others
            raise RuntimeLoadError(f"{self.path}: not an ONNX file ({_first_line(exc)})") from exc
        options, integer_kernels = ort_session_options(model, threads, integer_kernels, name=str(self.path))
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


def _recorded_quant_config(model: Any) -> dict[str, Any] | None:
    """The quantization config our metadata records in the ONNX ``model`` (None: no metadata)."""
    import json

    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value).get("model", {}).get("quant_config")
    return None


def ort_session_options(model: Any, threads: int | None = None, integer_kernels: bool | None = None,
                        name: str = "the file") -> tuple[Any, bool]:
    """onnxruntime SessionOptions for the QDQ ``model`` (onnx.ModelProto) and whether its int8 kernels are on.

    ``integer_kernels=None`` (the default everywhere): on, unless this CPU's int8 MAC kernels would saturate on the
    weights the model's metadata records (x86 without VNNI, 8-bit weights; ``exporters/ort_cpu.py``); then ORT's QDQ fusion is off and every op runs in float
    between DequantizeLinear and QuantizeLinear, the file's reference semantics, exact to the simulation (slower;
    the warning says so). On ARM and VNNI CPUs the same file runs on the int8 kernels.
    """
    import onnxruntime as ort

    if integer_kernels is None:
        integer_kernels = int8_kernels_exact(_recorded_quant_config(model))
        if not integer_kernels and name not in _WARNED:
            _WARNED.add(name)
            log.warning("%s: onnxruntime's int8 convolutions and matmuls on this CPU (x86 without VNNI) saturate "
                        "with its 8-bit weights, so it runs with its QDQ ops in float (exact, slower); the file "
                        "runs on int8 kernels on ARM and VNNI CPUs, and here with 7-bit weights (--weight-bits 7)",
                        name)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not integer_kernels:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    return options, integer_kernels


_WARNED: set[str] = set()


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
