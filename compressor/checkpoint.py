"""Model files: our float and quantized checkpoints, .pt2 programs, factories.

A checkpoint is a plain dict of tensors and primitives, so it loads with
``torch.load(weights_only=True)``: no code from the file runs. It holds the
architecture (a zoo name + config, or a serialized torch.export program),
the weights, every quantizer's parameters and the recipe used.
"""
from __future__ import annotations

import importlib
import io
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from compressor.errors import CheckpointError
from compressor.fileio import atomic_path
from compressor.quant import QuantConfig, QuantizedModel, quantize
from compressor.quant.model import quantize_program

FLOAT_FORMAT = "audio-compress/float"
QUANT_FORMAT = "audio-compress/quantized"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ArchSpec:
    """How to rebuild the float model: from the zoo, or from a torch.export program.

    ``traced`` is the program quantize() planned its quantizers on (int8 forms
    applied): a quantized checkpoint of a model that is not in the zoo holds
    it, so reloading rebuilds the same graph without a re-trace.
    """

    kind: str  # "zoo" | "pt2" | "traced"
    name: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    program: bytes | None = None

    def build(self) -> nn.Module:
        if self.kind == "zoo":
            from compressor.zoo import build_model

            return build_model(self.name, self.config)
        if self.kind in ("pt2", "traced") and self.program is not None:
            try:
                return torch.export.load(io.BytesIO(self.program)).module()
            except Exception as exc:
                raise CheckpointError(f"the embedded torch.export program does not load: {exc}") from exc
        raise CheckpointError(f"unknown architecture kind {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "name": self.name, "config": dict(self.config)}
        if self.program is not None:
            out["program"] = torch.frombuffer(bytearray(self.program), dtype=torch.uint8)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArchSpec":
        program = data.get("program")
        if isinstance(program, torch.Tensor):
            program = program.numpy().tobytes()
        return cls(kind=data["kind"], name=data.get("name", ""), config=dict(data.get("config", {})),
                   program=program)

    @classmethod
    def from_program(cls, model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> "ArchSpec":
        """Serialize a model that is not in the zoo as a torch.export program."""
        from compressor.quant.model import _default_dynamic_shapes
        from compressor.quant.trace_errors import explain_export_failure

        model.eval()
        try:
            program = torch.export.export(model, example_inputs,
                                          dynamic_shapes=_default_dynamic_shapes(example_inputs))
        except Exception as exc:  # torch raises many types here
            raise explain_export_failure(model, exc, example_inputs) from exc
        buf = io.BytesIO()
        torch.export.save(program, buf)
        return cls(kind="pt2", program=buf.getvalue())

    def describe(self) -> str:
        return f"zoo:{self.name}" if self.kind == "zoo" else "torch.export program"

    def for_quantized(self, qmodel: QuantizedModel, core_only: bool = False) -> "ArchSpec":
        """What a quantized checkpoint of ``qmodel`` stores: a zoo model is rebuilt from its code, anything
        else (and a zoo model of which ``qmodel`` holds a part, ``core_only``: the network between a spectral
        model's transforms) from the exact program its quantizers were planned on."""
        if self.kind == "zoo" and not core_only:
            return self
        if qmodel.traced_program is not None:
            return ArchSpec(kind="traced", program=qmodel.traced_program)
        if self.program is None:
            raise CheckpointError("this quantized model holds no traced program to save; quantize it with "
                                  "compressor.quantize()")
        return self


@dataclass
class LoadedModel:
    """What ``load_model`` found in a file."""

    model: nn.Module
    arch: ArchSpec | None
    path: Path
    recipe: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return isinstance(self.model, QuantizedModel)


def _save(path: str | Path, payload: dict[str, Any]) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def save_float(path: str | Path, model: nn.Module, arch: ArchSpec, info: dict[str, Any] | None = None) -> Path:
    payload = {"format": FLOAT_FORMAT, "version": FORMAT_VERSION, "arch": arch.to_dict(),
               "state_dict": _plain_state_dict(model), "info": info or {}}
    return _save(path, payload)


def save_quantized(path: str | Path, qmodel: QuantizedModel, arch: ArchSpec,
                   recipe: dict[str, Any], info: dict[str, Any] | None = None) -> Path:
    from compressor.stages.spectral import KIND as SPECTRAL_KIND

    core_only = any(isinstance(st, dict) and st.get("kind") == SPECTRAL_KIND for st in (recipe or {}).get("stages", []))
    payload = {"format": QUANT_FORMAT, "version": FORMAT_VERSION,
               "arch": arch.for_quantized(qmodel, core_only).to_dict(),
               "quant_config": qmodel.config.to_dict(), "example_shapes": qmodel.example_shapes,
               "recipe": recipe, "state_dict": _plain_state_dict(qmodel), "info": info or {}}
    return _save(path, payload)


def _plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def rebuild_quantized(arch: ArchSpec, config: QuantConfig, example_shapes: list[list[int]]) -> QuantizedModel:
    """The same quantized graph as the one saved (parameters still to load)."""
    if arch.kind == "traced" and arch.program is not None:
        try:
            return quantize_program(arch.program, example_shapes, config)
        except CheckpointError:
            raise
        except Exception as exc:
            raise CheckpointError(f"the embedded torch.export program does not load: {_first_line(exc)}") from exc
    # a zoo model, or a checkpoint written before "traced" (its program is quantized the way it was then)
    float_model = arch.build()
    examples = [torch.zeros(shape) for shape in example_shapes]
    return quantize(float_model, examples, config)


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """load_state_dict with an error that says how the architectures differ."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        if missing:
            parts.append("missing " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append("unexpected " + ", ".join(unexpected[:5]) + (" ..." if len(unexpected) > 5 else ""))
        raise CheckpointError(f"{source}: weights do not fit this architecture ({'; '.join(parts)})")
    model.load_state_dict(state)


def _read(path: Path, trust_pickle: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise CheckpointError(
                f"{path} holds pickled Python objects, and loading them would run code from the file. "
                "Refused; pass --trust-pickle (trust_pickle=True) only if you trust its source."
            ) from exc
    except Exception as exc:  # torch.load fails on garbage with many exception types
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({_first_line(exc)})") from exc
    return torch.load(path, map_location="cpu", weights_only=False)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_factory(spec: str) -> Callable[[], nn.Module]:
    """'pkg.module:function' -> the function (the user asked to run this code)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CheckpointError(f"--model-factory must look like 'pkg.module:function', got {spec!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"cannot import model factory {spec!r}: {exc}") from exc
    if not callable(factory):
        raise CheckpointError(f"model factory {spec!r} is not callable")
    return factory


def load_model(path: str | Path, *, model_factory: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    """Load any accepted model input.

    - our float or quantized checkpoint (``.pt``);
    - a ``.pt2`` torch.export program;
    - with ``model_factory='pkg.module:function'``: a state_dict (or our
      float checkpoint) loaded into the module the factory returns;
    - a pickled full module, only with ``trust_pickle=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    if path.suffix == ".pt2":
        try:
            program = torch.export.load(path)
        except Exception as exc:
            raise CheckpointError(f"{path} is not a torch.export program ({_first_line(exc)})") from exc
        buf = io.BytesIO()
        torch.export.save(program, buf)
        return LoadedModel(program.module(), ArchSpec(kind="pt2", program=buf.getvalue()), path)

    data = _read(path, trust_pickle)
    if model_factory is not None:
        model = resolve_factory(model_factory)()
        state = data.get("state_dict", data) if isinstance(data, dict) else None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds no state_dict for --model-factory {model_factory}")
        load_state(model, state, path)
        return LoadedModel(model, None, path, info={"factory": model_factory})
    if isinstance(data, nn.Module):  # only reachable with trust_pickle
        return LoadedModel(data, None, path, info={"pickled": True})
    if not isinstance(data, dict) or data.get("format") not in (FLOAT_FORMAT, QUANT_FORMAT):
        raise CheckpointError(
            f"{path} is not one of our checkpoints (no 'format' key); for a plain state_dict "
            "give --model-factory pkg.module:function"
        )
    if data.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer version (format {data['version']})")
    arch = ArchSpec.from_dict(data["arch"])
    if data["format"] == FLOAT_FORMAT:
        model = arch.build()
        load_state(model, data["state_dict"], path)
        return LoadedModel(model, arch, path, info=data.get("info", {}))
    config = QuantConfig.from_dict(data["quant_config"])
    qmodel = rebuild_quantized(arch, config, data["example_shapes"])
    load_state(qmodel, data["state_dict"], path)
    return LoadedModel(qmodel, arch, path, recipe=data.get("recipe"), info=data.get("info", {}))


def arch_of(loaded: LoadedModel) -> ArchSpec:
    """The architecture to save with a model derived from ``loaded``.

    A model that is not in the zoo is saved as the program quantize() traces
    (``ArchSpec.for_quantized``), so nothing is exported here: the placeholder
    gets its program when the quantized checkpoint is written.
    """
    if loaded.arch is not None:
        return loaded.arch
    return ArchSpec(kind="traced")


__all__ = [
    "ArchSpec", "LoadedModel", "load_model", "save_float", "save_quantized", "rebuild_quantized", "arch_of",
    "load_state", "resolve_factory",
]
