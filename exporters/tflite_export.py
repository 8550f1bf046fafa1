"""Integer-only int8 TFLite from a lowered graph, through litert-torch.

litert-torch's converter, in its static-QDQ mode, folds every
quantize/dequantize pair of the lowered graph into int8 tensors with our
exact scales and zero-points, and turns the model's first quantize and
last dequantize into int8 input and output tensors. It is told the mode
through a PT2E QuantConfig; the quantizer in it is never run (it would
recompute our scales).
"""
from __future__ import annotations

import io
import logging
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable

import flatbuffers
import numpy as np
import torch

from compressor.errors import ExportError
from exporters.lowering import LoweredModel
from exporters.metadata import METADATA_KEY, DeployMetadata
from exporters.tflite_layout import to_channels_last
from exporters.tflite_wide import WideTensors, int8_view, widen

log = logging.getLogger(__name__)


def convert(lowered: LoweredModel, example: torch.Tensor) -> bytes:
    """The flatbuffer bytes of the converted model (float example in; the file takes int8)."""
    # torchao (imported by litert-torch) warns about GPU kernels it cannot load on a CPU machine
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torchao.kernel.intmm").setLevel(logging.ERROR)
    import litert_torch
    from litert_torch.quantize import pt2e_quantizer, quant_config

    mode = quant_config.QuantConfig(pt2e_quantizer=pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)))
    noise = io.StringIO()
    try:
        with _constants_kept_alive(), _layout_marks_kept(), warnings.catch_warnings(), redirect_stdout(noise), \
                redirect_stderr(noise):
            warnings.simplefilter("ignore")
            edge_model = litert_torch.convert(lowered.module.eval(), (example,), quant_config=mode)
            return edge_model.model_content()
    except Exception as exc:  # the converter raises ValueError/RuntimeError with MLIR text
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"litert-torch could not convert the lowered int8 graph: {detail}") from exc


@contextmanager
def _constants_kept_alive():
    """Keep every constant the converter inlines alive until the conversion ends.

    litert-torch (0.10) identifies inlined constants by storage address and
    makes some of them as temporaries (``x.contiguous()`` of a weight view)
    that are freed while the conversion still runs. Without this, the FQSE
    RQB decoder's polyphase weights came out as the main decoder's weights,
    in every conversion of the demo model, never in a small model; with it,
    always right (litert-torch issue #1061 reports the same symptom for two
    same-shaped conv_transpose1d weights). Holding on to every fingerprinted
    tensor keeps the addresses unique and the memory valid; the export's
    op-by-op verification catches the file if another version misbehaves.
    """
    try:
        from litert_torch.backend import inline_consts
        fingerprint = inline_consts._ConstantFingerprint
        original = fingerprint.__dict__["from_tensor"]
    except (ImportError, AttributeError, KeyError):  # another litert-torch: verification still guards the file
        log.debug("litert-torch constant cache not found; not patched")
        yield
        return
    alive: list[torch.Tensor] = []

    def from_tensor(cls, tensor):
        alive.append(tensor)
        return original.__func__(cls, tensor)

    fingerprint.from_tensor = classmethod(from_tensor)
    try:
        yield
    finally:
        fingerprint.from_tensor = original
        alive.clear()


@contextmanager
def _layout_marks_kept():
    """Keep a dequantize node's own meta when litert-torch's layout pass puts a transpose after it.

    litert-torch (0.10) ``OptimizeLayoutTransposesPass.insert_t_q_dq`` gives
    the dequantize node the meta dict it shares with the new transpose and
    quantize nodes, losing the node's layout mark and traced value. An NHWC
    tensor with two channels-first consumers (in a CRN decoder: a pad and the
    skip add with a ConvTranspose2d's depth-to-space output) then looks
    channels-first to the second one, which gets no transpose: conversion
    fails ("Attempting to broadcast a dimension", or "convert non-NHWC
    compatible node to NHWC" when the lost value is needed), or would compute
    on the wrong layout where the shapes agree. Only graphs that hit this
    change; the export's op-by-op verification checks the file either way.
    """
    try:
        from litert_torch._convert.fx_passes.optimize_layout_transposes_pass import pass_body
        owner = pass_body.OptimizeLayoutTransposesPass
        original = owner.__dict__["insert_t_q_dq"]
    except (ImportError, AttributeError, KeyError):  # another litert-torch: verification still guards the file
        log.debug("litert-torch layout pass not found; not patched")
        yield
        return

    def insert_t_q_dq(self, graph, input_dq, *args, **kwargs):
        meta = input_dq.meta
        try:
            return original(self, graph, input_dq, *args, **kwargs)
        finally:
            input_dq.meta = meta

    owner.insert_t_q_dq = insert_t_q_dq
    try:
        yield
    finally:
        owner.insert_t_q_dq = original


def finish(flatbuffer: bytes, metadata: DeployMetadata, keep_tensor_names: bool = False,
           channels_last: bool = True, wide: WideTensors | None = None) -> bytes:
    """Add (or replace) the ``METADATA_KEY`` buffer of a .tflite flatbuffer and write it compactly.

    With ``channels_last`` the activations between convolutions stay NHWC
    (``exporters.tflite_layout``): the converter's TRANSPOSE + RESHAPE pairs
    around every conv go (Conv-TasNet: 571 -> 402 ops, -11 KB), the same
    integers come out.

    The converter names every tensor after its module path, ~90 KB for
    Conv-TasNet (15% of the int8 file). The runtimes, the verifier and the
    signature find tensors by index and qparams, so only the graph inputs'
    and outputs' names are kept unless ``keep_tensor_names``. Repeated
    vectors and tables are written once (``_SharedVectorBuilder``,
    ``_share_identical_tables``, ``_drop_empty_buffers``): the PTQ demo file
    536 -> 429 KB, the same ops on the same bytes.

    ``wide`` (from ``tflite_wide.int8_view``): the tensors the converter saw as
    int8 placeholders of 16-bit ones, retyped int16 with the QUANTIZE ops and
    int64 biases their kernels need (``exporters.tflite_wide``).
    """
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != METADATA_KEY]
    buffer = schema.BufferT()
    buffer.data = list(metadata.to_json().encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    if channels_last:
        counts = to_channels_last(model, schema)
        log.info("channels-last layout: %d -> %d ops", counts["ops_before"], counts["ops_after"])
    if wide is not None:
        log.info("16-bit activations: %s", widen(model, schema, wide))
    if not keep_tensor_names:
        for subgraph in model.subgraphs:
            io_tensors = {int(i) for i in subgraph.inputs} | {int(i) for i in subgraph.outputs}
            for index, tensor in enumerate(subgraph.tensors):
                if index not in io_tensors:
                    tensor.name = None
    _drop_empty_buffers(model)
    _share_identical_tables(model)
    builder = _SharedVectorBuilder(len(flatbuffer) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class _SharedVectorBuilder(flatbuffers.Builder):
    """A builder that writes each distinct numeric vector once and points every user at it.

    The converter gives every per-channel weight and bias tensor its own
    int64 zero-point vector (all zeros) and every tensor its own shape
    vector: ~80 KB of the 520 KB Conv-TasNet file. A flatbuffer may
    reference one vector from many tables (a DAG, as shared strings are), so
    identical vectors are stored once; the generated ``Pack`` code writes
    every numpy-typed vector through ``CreateNumpyVector``.
    """

    def __init__(self, initial_size: int) -> None:
        super().__init__(initial_size)
        self._vectors: dict[tuple, int] = {}
        self.shared_tables: dict[int, int] = {}  # id(table object) -> offset, for _share_identical_tables

    def CreateNumpyVector(self, x):  # noqa: N802 (flatbuffers' name)
        key = (x.dtype.str, x.shape, x.tobytes())
        offset = self._vectors.get(key)
        if offset is None:
            offset = super().CreateNumpyVector(x)
            self._vectors[key] = offset
        return offset


def _drop_empty_buffers(model) -> None:
    """Point every tensor without data at buffer 0 (the schema's empty sentinel); drop the other empty
    buffers and those nothing points at.

    The converter gives each activation tensor a buffer table of its own
    with no data (~550 of them for Conv-TasNet); the channels-last pass
    leaves the constants it replaced unreferenced.
    """
    def empty(buffer) -> bool:
        return (buffer.data is None or len(buffer.data) == 0) and not buffer.offset

    if not model.buffers or not empty(model.buffers[0]):
        return  # no sentinel to point at: leave the file as it is
    metadata_buffers = {int(m.buffer) for m in (model.metadata or [])}
    used = {int(t.buffer) for subgraph in model.subgraphs for t in subgraph.tensors} | metadata_buffers
    keep = sorted({0} | {i for i in used if i < len(model.buffers) and not empty(model.buffers[i])} | metadata_buffers)
    new_index = {old: new for new, old in enumerate(keep)}
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            tensor.buffer = new_index.get(int(tensor.buffer), 0)
    for entry in model.metadata or []:
        entry.buffer = new_index[int(entry.buffer)]
    model.buffers = [model.buffers[i] for i in keep]


def _share_identical_tables(model) -> None:
    """Tensors with the same qparams, and ops with the same options, point at one table each.

    A reshape keeps its input's qparams and most ADD/MUL/MEAN ops have the
    same options, yet the converter writes a table for each (~8 KB of the
    Conv-TasNet file). Only flat tables (numbers and numeric vectors) are shared.
    """
    shared_classes: dict[type, type] = {}

    def shared_class(cls: type) -> type:
        if cls not in shared_classes:
            def pack(self, builder):
                offset = builder.shared_tables.get(id(self))
                if offset is None:
                    offset = cls.Pack(self, builder)
                    builder.shared_tables[id(self)] = offset
                return offset
            shared_classes[cls] = type(f"Shared{cls.__name__}", (cls,), {"Pack": pack})
        return shared_classes[cls]

    def content(table) -> tuple | None:
        key: list = [type(table).__name__]
        for name, value in sorted(vars(table).items()):
            if isinstance(value, np.ndarray):
                value = (value.dtype.str, value.shape, value.tobytes())
            elif value is not None and not isinstance(value, (bool, int, float, str, bytes)):
                return None  # a nested table: not shared
            key.append((name, value))
        return tuple(key)

    canonical: dict[tuple, object] = {}

    def share(table):
        key = None if table is None else content(table)
        if key is None:
            return table
        if key not in canonical:
            table.__class__ = shared_class(type(table))
            canonical[key] = table
        return canonical[key]

    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            tensor.quantization = share(tensor.quantization)
        for op in subgraph.operators:
            op.builtinOptions = share(op.builtinOptions)


def _text(name: bytes | str | None) -> str:
    return name.decode() if isinstance(name, bytes) else (name or "")


def read_metadata(flatbuffer: bytes) -> str | None:
    """The embedded JSON text, or None."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode() == METADATA_KEY:
            buf = model.Buffers(entry.Buffer())
            return bytes(buf.DataAsNumpy()).decode()
    return None


def build_tflite(lowered: LoweredModel, example: torch.Tensor, metadata: DeployMetadata,
                 keep_tensor_names: bool = False) -> bytes:
    """The finished .tflite bytes (not yet written to their final path).

    16-bit activations (precision overrides) convert as int8 placeholders on their own scales and are
    retyped int16 afterwards (``exporters.tflite_wide``).
    """
    with int8_view(lowered) as wide:
        flatbuffer = convert(lowered, example)
    return finish(flatbuffer, metadata, keep_tensor_names, wide=wide)


def op_report(path_or_bytes: Path | bytes) -> list[dict[str, object]]:
    """Each op of a .tflite with the dtypes of its tensors (builtin kernels, no delegate)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    kwargs = {"model_content": path_or_bytes} if isinstance(path_or_bytes, bytes) else {"model_path": str(path_or_bytes)}
    interp = Interpreter(**kwargs, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    report = []
    for op in interp._get_ops_details():
        ins = [tensors[i]["dtype"].__name__ for i in op["inputs"] if i >= 0]
        outs = [tensors[i]["dtype"].__name__ for i in op["outputs"] if i >= 0]
        report.append({"op": op["op_name"], "inputs": ins, "outputs": outs})
    return report


def xnnpack_coverage(path_or_bytes: Path | bytes, threads: int = 1) -> dict[str, object]:
    """Which ops of a .tflite XNNPACK runs, and which it leaves to the builtin kernels.

    Every op XNNPACK does not take splits the graph into another delegate
    partition and runs on the slower reference kernels, so this is the first
    thing to look at when an int8 file is slower than expected.
    Returns {"partitions", "ops", "undelegated": {op: count}}.
    """
    from ai_edge_litert.interpreter import Interpreter

    kwargs = {"model_content": path_or_bytes} if isinstance(path_or_bytes, bytes) else {"model_path": str(path_or_bytes)}
    with redirect_stderr(io.StringIO()):
        interp = Interpreter(**kwargs, num_threads=threads)
    interp.allocate_tensors()
    ops = interp._get_ops_details()
    # after delegation the node list holds the original ops plus one DELEGATE node per partition,
    # whose inputs/outputs are the partition's boundary tensors: walk back from its outputs to find its ops
    original = [op for op in ops if op["op_name"] != "DELEGATE"]
    producer = {t: op["index"] for op in original for t in op["outputs"]}
    inside: set[int] = set()
    partitions = [op for op in ops if op["op_name"] == "DELEGATE"]
    for partition in partitions:
        boundary, stack, seen = set(partition["inputs"]), list(partition["outputs"]), set()
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor in seen or tensor not in producer:
                continue
            seen.add(tensor)
            inside.add(producer[tensor])
            stack.extend(i for i in ops[producer[tensor]]["inputs"] if i >= 0)
    left: dict[str, int] = {}
    for op in original:
        if op["index"] not in inside:
            left[op["op_name"]] = left.get(op["op_name"], 0) + 1
    return {"partitions": len(partitions), "ops": len(original), "undelegated": left}


class FileTensor(np.ndarray):
    """A tensor of the file, with where it sits: ``index`` (its tensor index) and ``sources`` (the computed,
    not moved, tensors that the op producing it reads through data movement, and for a moved tensor also
    those the op computing its values reads)."""

    index: int = -1
    sources: frozenset = frozenset()


def _move_sources(interp) -> Callable[[int], frozenset]:
    """tensor index -> the computed tensors its producer reads (through data movement: reshapes, slices,
    concatenations ...); constants are left out."""
    from compressor.ops.registry import moving_ops

    moves = moving_ops() | {"QUANTIZE"}  # a requantization the converter inserts moves values to another grid
    producer = {t: op for op in interp._get_ops_details() for t in op["outputs"]}
    constant = {t["index"] for t in interp.get_tensor_details() if t["index"] not in producer}
    constant -= {d["index"] for d in interp.get_input_details()}
    seen: dict[int, frozenset] = {}

    def through(t: int) -> frozenset:
        # the computed tensors behind t: t itself, or, for a moved tensor, what was moved
        if t in seen:
            return seen[t]
        op = producer.get(t)
        if op is None or op["op_name"] not in moves:
            found = frozenset() if t in constant else frozenset([t])
        else:
            found = frozenset().union(*(through(i) for i in op["inputs"] if i >= 0))
        seen[t] = found
        return found

    def read_by(t: int) -> frozenset:
        op = producer.get(t)
        if op is None:
            return frozenset()
        return frozenset().union(*(through(i) for i in op["inputs"] if i >= 0))

    def sources(t: int) -> frozenset:
        # what its own op reads (the frames a concatenation stacks) and, for a moved tensor, what the op
        # computing the moved values read (a transposed copy of an op's output)
        return read_by(t).union(*(read_by(o) for o in through(t)))

    return sources


def intermediate_tensors(path: Path, wanted: dict[str, tuple[float, int, int]], codes) -> dict[str, list[np.ndarray]]:
    """The file's int8 (and int16) tensors that may be the lowered graph's quantize nodes, for one input.

    The converter names tensors after modules, not graph nodes, so a tensor is
    matched by its qparams and size (``wanted``: name -> (scale, zero_point,
    size)). Those are unique per quantizer but for tensors that share one
    (PReLU's two branches, concat inputs, a variance before and after its
    floor, every frame of an unrolled recurrence): each name gets every
    candidate, as a ``FileTensor`` that says which tensor it is and which
    computed tensors its op reads, and the caller picks (``verify.op_parity``:
    by those inputs, then by value).
    Runs the builtin reference kernels (XNNPACK keeps no intermediate tensors).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    interp.set_tensor(interp.get_input_details()[0]["index"], codes)
    interp.invoke()
    sources = _move_sources(interp)
    pool: dict[tuple, list[int]] = {}
    for t in interp.get_tensor_details():
        scale, zero_point = t["quantization"]
        if t["dtype"].__name__ in ("int8", "int16") and scale:
            key = (round(float(scale), 9), int(zero_point), int(np.prod(t["shape"])))
            pool.setdefault(key, []).append(t["index"])
    found: dict[str, list[np.ndarray]] = {}
    tensors: dict[int, FileTensor | None] = {}
    for name, (scale, zero_point, size) in wanted.items():
        for index in pool.get((round(float(scale), 9), int(zero_point), int(size)), []):
            if index not in tensors:
                try:
                    tensor = interp.get_tensor(index).copy().view(FileTensor)
                except ValueError:  # a tensor the interpreter did not keep
                    tensor = None
                else:
                    tensor.index, tensor.sources = index, sources(index)
                tensors[index] = tensor
            if tensors[index] is not None:
                found.setdefault(name, []).append(tensors[index])
    return found
