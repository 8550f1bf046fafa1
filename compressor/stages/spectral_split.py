"""Split a spectral model at torch.stft / torch.istft: the transforms become a stage, the part between the core.

A user's spectral model is traced once with ``torch.stft`` and ``torch.istft``
standing in as two opaque ops (``compress_spectral::stft`` / ``::istft``:
custom ops whose shapes stay symbolic, where torch's own stft would fix the
input length). In that graph the STFT's complex output X may be read by
``abs`` (magnitude features) or ``view_as_real`` / ``.real`` and ``.imag``
(real/imag features), and the iSTFT's complex input must be ``X * mask``,
``X * view_as_complex(mask)``, ``X * complex(re, im)`` or a spectrum
``view_as_complex(s)`` / ``complex(re, im)``. Everything between those reads and the mask is
real arithmetic: it becomes the core, a GraphModule that ``quantize`` treats
like any model, and the rest is recorded as a ``SpectralStage``
(compressor/stages/spectral.py) that the simulation and the runtimes apply
around the core. Anything else (a second STFT, phase features, the core
reading the waveform itself) is refused with the op and the user's line.
The split is checked: stage + core must reproduce the model within 1e-4.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from torch import fx, nn

from compressor.errors import UnsupportedOpError
from compressor.module_mode import set_training
from compressor.quant.graph import get_attr_value
from compressor.stages.spectral import SpectralStage

log = logging.getLogger(__name__)
aten = torch.ops.aten
_TORCH_STFT, _TORCH_ISTFT = torch.stft, torch.istft
_TENSOR_STFT, _TENSOR_ISTFT = torch.Tensor.stft, torch.Tensor.istft
MATCH_TOLERANCE = 1e-4  # relative error of stage + core against the model


@torch.library.custom_op("compress_spectral::stft", mutates_args=())
def _stft_op(x: torch.Tensor, n_fft: int, hop_length: int, win_length: int, window: Optional[torch.Tensor],
             center: bool, pad_mode: str, normalized: bool, onesided: bool) -> torch.Tensor:
    return _TORCH_STFT(x, n_fft, hop_length, win_length, window, center, pad_mode, normalized, onesided,
                       return_complex=True)


@_stft_op.register_fake
def _(x, n_fft, hop_length, win_length, window, center, pad_mode, normalized, onesided):
    length = x.shape[-1] + (2 * (n_fft // 2) if center else 0)
    bins = n_fft // 2 + 1 if onesided else n_fft
    return x.new_empty((*x.shape[:-1], bins, 1 + (length - n_fft) // hop_length), dtype=torch.complex64)


@torch.library.custom_op("compress_spectral::istft", mutates_args=())
def _istft_op(spectrum: torch.Tensor, n_fft: int, hop_length: int, win_length: int, window: Optional[torch.Tensor],
              center: bool, normalized: bool, onesided: bool, length: int) -> torch.Tensor:
    return _TORCH_ISTFT(spectrum, n_fft, hop_length, win_length, window, center, normalized, onesided, length)


@_istft_op.register_fake
def _(spectrum, n_fft, hop_length, win_length, window, center, normalized, onesided, length):
    return spectrum.new_empty((*spectrum.shape[:-2], length), dtype=torch.float32)


def _stft(input: torch.Tensor, n_fft: int, hop_length: int | None = None, win_length: int | None = None,
          window: torch.Tensor | None = None, center: bool = True, pad_mode: str = "reflect",
          normalized: bool = False, onesided: bool | None = None, return_complex: bool | None = None) -> torch.Tensor:
    if not return_complex:
        raise UnsupportedOpError("torch.stft(..., return_complex=False) is not supported; pass return_complex=True "
                                 "(torch's own advice) and torch.view_as_real() the result")
    if pad_mode != "reflect" and center:
        raise UnsupportedOpError(f"torch.stft(pad_mode={pad_mode!r}): only the default 'reflect' padding is supported")
    return _stft_op(input, n_fft, hop_length or n_fft // 4, win_length or n_fft, window, center, pad_mode,
                    normalized, True if onesided is None else onesided)


def _istft(input: torch.Tensor, n_fft: int, hop_length: int | None = None, win_length: int | None = None,
           window: torch.Tensor | None = None, center: bool = True, normalized: bool = False,
           onesided: bool | None = None, length: int | None = None, return_complex: bool = False) -> torch.Tensor:
    if length is None:
        raise UnsupportedOpError("torch.istft without length=: pass length=x.shape[-1] so that the output has the "
                                 "input's length at every chunk size")
    return _istft_op(input, n_fft, hop_length or n_fft // 4, win_length or n_fft, window, center, normalized,
                     True if onesided is None else onesided, length)


@contextlib.contextmanager
def _opaque_transforms() -> Iterator[None]:
    torch.stft, torch.istft = _stft, _istft
    torch.Tensor.stft = lambda self, *a, **k: _stft(self, *a, **k)  # type: ignore[method-assign]
    torch.Tensor.istft = lambda self, *a, **k: _istft(self, *a, **k)  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.stft, torch.istft = _TORCH_STFT, _TORCH_ISTFT
        torch.Tensor.stft, torch.Tensor.istft = _TENSOR_STFT, _TENSOR_ISTFT  # type: ignore[method-assign]


def uses_stft(model: nn.Module, example: torch.Tensor) -> bool:
    """Whether ``model``'s forward calls torch.stft (one eager run with the transforms watched)."""
    called = []

    def watch(*args: Any, **kwargs: Any) -> torch.Tensor:
        called.append(True)
        return _TORCH_STFT(*args, **kwargs)

    torch.stft, torch.Tensor.stft = watch, lambda self, *a, **k: watch(self, *a, **k)  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            model(example)
    except Exception:
        return False  # the trace will say what is wrong with it
    finally:
        torch.stft, torch.Tensor.stft = _TORCH_STFT, _TENSOR_STFT  # type: ignore[method-assign]
    return bool(called)


@dataclass
class SpectralSplit:
    """What ``split_spectral`` found: the stage, the float core, and how audio becomes the core's input."""

    stage: SpectralStage
    core: fx.GraphModule

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        return self.stage.features_of(stft_torch(self.stage, audio))


def stft_torch(stage: SpectralStage, audio: torch.Tensor) -> torch.Tensor:
    window = torch.tensor(stage.window, dtype=audio.dtype, device=audio.device)
    return _TORCH_STFT(audio, stage.n_fft, stage.hop_length, stage.n_fft, window, stage.center, "reflect",
                       stage.normalized, True, return_complex=True)


def istft_torch(stage: SpectralStage, spectrum: torch.Tensor, length: int) -> torch.Tensor:
    window = torch.tensor(stage.window, dtype=torch.float32, device=spectrum.device)
    return _TORCH_ISTFT(spectrum, stage.n_fft, stage.hop_length, stage.n_fft, window, stage.center,
                        stage.normalized, True, length)


def _line(node: fx.Node) -> str:
    trace = (node.meta.get("stack_trace") or "").strip().splitlines()
    where = [ln.strip() for ln in trace if ln.strip().startswith("File ")]
    return f" ({where[-1]}: {trace[-1].strip()})" if where else ""


def _is_complex(node: Any) -> bool:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return isinstance(value, torch.Tensor) and value.is_complex()


def _refuse(what: str, node: fx.Node | None = None) -> UnsupportedOpError:
    return UnsupportedOpError(f"spectral model: {what}{_line(node) if node is not None else ''}")


def _full_window(window: torch.Tensor | None, n_fft: int, win_length: int) -> tuple[float, ...]:
    w = torch.ones(win_length) if window is None else window.detach().double().reshape(-1)
    if w.numel() != win_length:
        raise _refuse(f"the STFT window has {w.numel()} values, win_length is {win_length}")
    left = (n_fft - win_length) // 2
    full = torch.zeros(n_fft, dtype=torch.float64)
    full[left:left + win_length] = w
    return tuple(float(v) for v in full)


def _value(gm: fx.GraphModule, node: Any, example: torch.Tensor) -> Any:
    """The value of a node that does not depend on the input (a window buffer, or one computed in forward)."""
    if not isinstance(node, fx.Node):
        return node
    if node.op == "get_attr":
        return get_attr_value(gm, str(node.target))
    values: dict[fx.Node, Any] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            out = super().run_node(n)
            values[n] = out
            return out

    Recorder(gm).run(example)
    return values[node]


def _feature_dim(node: fx.Node, feature: fx.Node) -> int | None:
    """The dimension of the features whose size a symbolic-int node equals, or None."""
    value, features = node.meta.get("val"), feature.meta.get("val")
    if not isinstance(value, torch.SymInt) or not isinstance(features, torch.Tensor):
        return None
    import sympy

    for dim, size in enumerate(features.shape):
        expr = size.node.expr if isinstance(size, torch.SymInt) else sympy.Integer(int(size))
        if sympy.simplify(value.node.expr - expr) == 0:
            return dim
    return None


def _complex_parts(node: fx.Node) -> list[fx.Node] | None:
    """The real node(s) a complex value is built from: [m] for view_as_complex(m) (last axis 2), [re, im] for
    torch.complex(re, im); None for anything else."""
    if node.target == aten.view_as_complex.default:
        return [node.args[0]]
    if node.target == aten.complex.default and all(isinstance(a, fx.Node) for a in node.args[:2]):
        return list(node.args[:2])
    return None


def _mask_of(spectrum_in: fx.Node, stft: fx.Node) -> tuple[str, list[fx.Node]]:
    """(mask kind, the real node(s) the core outputs) from the iSTFT's complex input."""
    parts = _complex_parts(spectrum_in)
    if parts is not None:
        return "spectrum", parts
    if spectrum_in.target in (aten.mul.Tensor,) and len(spectrum_in.args) == 2:
        a, b = spectrum_in.args
        other = b if a is stft else a if b is stft else None
        if isinstance(other, fx.Node):
            parts = _complex_parts(other)
            if parts is not None:
                return "complex", parts
            if not _is_complex(other):
                return "real", [other]
    raise _refuse(f"the iSTFT's input is {getattr(spectrum_in.target, '__name__', spectrum_in.target)}; "
                  "supported: X * mask, X * torch.view_as_complex(mask), X * torch.complex(re, im), or a spectrum "
                  "torch.view_as_complex(s) / torch.complex(re, im), with X the STFT itself", spectrum_in)


_UNARY = {aten.log.default: "log", aten.log10.default: "log10", aten.log1p.default: "log1p"}
_WITH_CONSTANT = {aten.pow.Tensor_Scalar: "pow", aten.add.Tensor: "add", aten.add.Scalar: "add",
                  aten.mul.Tensor: "mul", aten.mul.Scalar: "mul", aten.clamp_min.default: "clamp_min"}


def _compression_chain(magnitude: fx.Node) -> tuple[fx.Node, list[tuple[str, float]]]:
    """Element-wise steps that follow |X| alone (|X|^c, log(|X| + eps), ...): they run in float in the stage."""
    steps: list[tuple[str, float]] = []
    node = magnitude
    while len(node.users) == 1:
        user = next(iter(node.users))
        if user.target in _UNARY and user.args[0] is node:
            steps.append((_UNARY[user.target], 0.0))
        elif user.target == aten.sqrt.default:
            steps.append(("pow", 0.5))
        elif user.target in _WITH_CONSTANT and len(user.args) == 2 and user.args[0] is node \
                and isinstance(user.args[1], (int, float)) and not user.kwargs:
            steps.append((_WITH_CONSTANT[user.target], float(user.args[1])))
        elif user.target == aten.clamp.default and user.args[0] is node and len(user.args) == 2 \
                and isinstance(user.args[1], (int, float)):
            steps.append(("clamp_min", float(user.args[1])))
        else:
            break
        node = user
    return node, steps


def split_spectral(model: nn.Module, example: torch.Tensor) -> SpectralSplit:
    """The stage and float core of a spectral ``model`` (mono audio (batch, T) in, (batch, T) out)."""
    set_training(model, False)
    with _opaque_transforms():
        try:
            program = torch.export.export(
                model, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO, 1: torch.export.Dim.AUTO},))
        except UnsupportedOpError:
            raise
        except Exception as exc:
            from compressor.quant.trace_errors import explain_export_failure

            raise explain_export_failure(model, exc, [example]) from exc
    gm = program.module()
    nodes = list(gm.graph.nodes)
    stfts = [n for n in nodes if n.target == torch.ops.compress_spectral.stft.default]
    istfts = [n for n in nodes if n.target == torch.ops.compress_spectral.istft.default]
    if len(stfts) != 1 or len(istfts) != 1:
        raise _refuse(f"{len(stfts)} torch.stft and {len(istfts)} torch.istft calls; one of each is supported "
                      "(an STFT front end and an iSTFT back end around the network)", (stfts + istfts or [None])[0])
    stft, istft = stfts[0], istfts[0]
    inputs = [n for n in nodes if n.op == "placeholder"]
    x_in, n_fft, hop, win_length, window, center, _, normalized, onesided = stft.args
    if x_in is not inputs[0]:
        raise _refuse("the STFT must read the model's input waveform itself (no processing before it)", stft)
    if not onesided:
        raise _refuse("a two-sided STFT (onesided=False) is not supported", stft)
    spectrum_in, i_fft, i_hop, i_win, i_window, i_center, i_norm, _, _ = istft.args
    window_values = _full_window(_value(gm, window, example), n_fft, win_length)
    if (i_fft, i_hop, i_win, i_center, i_norm) != (n_fft, hop, win_length, center, normalized) or \
            _full_window(_value(gm, i_window, example), i_fft, i_win) != window_values:
        raise _refuse("the iSTFT's parameters (n_fft, hop, window, center, normalized) differ from the STFT's", istft)
    output = next(n for n in nodes if n.op == "output")
    results = output.args[0]
    if not (isinstance(results, (tuple, list)) and len(results) == 1 and results[0] is istft):
        raise _refuse("the model must return the iSTFT's output itself (one source, (batch, T))", istft)

    readers = [u for u in stft.users if u is not spectrum_in]  # the mask product reads X too
    # what the core's input stands for: the node itself (index None) or one part of [Re, Im] on the last axis
    boundary: dict[fx.Node, int | None]
    if sorted(str(u.target) for u in readers) == ["aten.imag.default", "aten.real.default"]:
        boundary = {u: 0 if u.target == aten.real.default else 1 for u in readers}  # X.real and X.imag
    else:
        features = [u for u in readers if u.target in (aten.abs.default, aten.view_as_real.default)]
        others = [u for u in readers if u not in features]
        if len(features) != 1 or others:
            bad = (others or features or [stft])[0]
            raise _refuse("the STFT may be read once by abs() (magnitude) or torch.view_as_real() (real and "
                          "imaginary parts; or by .real and .imag), and by the mask product; found "
                          f"{', '.join(str(u.target) for u in readers) or 'none'}", bad)
        boundary = {features[0]: None}
    feature = next(iter(boundary))  # its sizes are the features' first dimensions
    complex_features = feature.target in (aten.view_as_real.default, aten.real.default, aten.imag.default)
    compression: list[tuple[str, float]] = []
    if feature.target == aten.abs.default:
        feature, compression = _compression_chain(feature)
        boundary = {feature: None}
    mask_kind, masks = _mask_of(spectrum_in, stft)

    # the core: what the mask needs, back to the features (and constants)
    core: set[fx.Node] = set()
    sizes: dict[fx.Node, int] = {}  # symbolic sizes the core reads, as the features' own dimensions
    stack: list[tuple[fx.Node, fx.Node]] = [(m, m) for m in masks]  # (node, the core node that reads it)
    while stack:
        node, reader = stack.pop()
        if node in core or node in boundary or node in sizes:
            continue
        dim = _feature_dim(node, feature)
        if dim is not None:  # e.g. the frame count computed from the waveform's length: read it off the features
            sizes[node] = dim
            continue
        if node.op == "placeholder" or node in (stft, istft) or _is_complex(node):
            what = "the waveform input" if node.op == "placeholder" else f"{node.name} (complex)"
            raise _refuse(f"the network between the STFT and the mask reads {what} besides the STFT features; "
                          "only the features may enter it", reader)
        core.add(node)
        stack.extend((n, node) for n in node.all_input_nodes)
    graph = fx.Graph()
    placeholder = graph.placeholder("features")
    env: dict[fx.Node, fx.Node] = {
        node: placeholder if index is None else graph.call_function(aten.select.int, (placeholder, -1, index))
        for node, index in boundary.items()}
    for node, dim in sizes.items():
        env[node] = graph.call_function(aten.sym_size.int, (placeholder, dim))
    for node in nodes:
        if node in core:
            env[node] = graph.node_copy(node, lambda n: env[n])
    outputs = [env[m] for m in masks]
    graph.output(outputs[0] if len(outputs) == 1 else graph.call_function(aten.stack.default, (outputs, -1)))
    core_gm = fx.GraphModule(gm, graph)
    stage = SpectralStage(n_fft=n_fft, hop_length=hop, window=window_values, center=center, normalized=normalized,
                          features="complex" if complex_features else "magnitude",
                          mask=mask_kind, compression=tuple(compression))
    split = SpectralSplit(stage, core_gm)
    _check(model, split, example)
    log.info("spectral model split at torch.stft/istft: n_fft %d, hop %d, %s features, %s mask; the int8 file holds "
             "the %d ops between", n_fft, hop, stage.features, stage.mask, len(core))
    return split


class SpectralModel(nn.Module):
    """``core`` with the spectral stage around it: audio (B, T) in, (B, T) out, as the runtimes compute it."""

    def __init__(self, core: nn.Module, stage: SpectralStage) -> None:
        super().__init__()
        self.core = core
        self.stage = stage

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spectrum = stft_torch(self.stage, audio)
        out = self.core(self.stage.features_of(spectrum))
        return istft_torch(self.stage, self.stage.apply(spectrum, out), audio.shape[-1])

    def set_mode(self, mode: str) -> None:  # QuantizedModel's API, as LevelGainModel forwards it
        self.core.set_mode(mode)  # type: ignore[operator]

    @property
    def config(self) -> Any:
        return self.core.config


@torch.no_grad()
def _check(model: nn.Module, split: SpectralSplit, example: torch.Tensor) -> None:
    lengths = sorted({example.shape[-1], max(split.stage.n_fft, example.shape[-1] // 2 + 37)})
    for length in lengths:
        x = example[..., :length]
        want = model(x)
        got = SpectralModel(split.core, split.stage)(x)
        error = float((got - want).norm() / want.norm().clamp(min=1e-12))
        if not error <= MATCH_TOLERANCE:
            raise UnsupportedOpError(
                f"spectral model: STFT -> network -> mask -> iSTFT, split apart, differs from the model by {error:.2e} "
                f"(relative, {length} samples; at most {MATCH_TOLERANCE:g} allowed): the model does something "
                "around its transforms this split does not see")


__all__ = ["SpectralModel", "SpectralSplit", "split_spectral", "stft_torch", "istft_torch",
           "uses_stft"]
