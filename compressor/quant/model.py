"""The quantized model: a traced graph with quantizer modules, and ``quantize()``."""
from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any, Iterable, Iterator, Sequence

import torch
from torch import nn

from compressor.errors import ConfigError, UnsupportedOpError
from compressor.module_mode import set_training
from compressor.ops.registry import decomposition_table
from compressor.quant.config import SUBSTITUTIONS, QuantConfig
from compressor.quant.graph import QUANTIZER_ROOT, get_attr_value, insert_quantizers, pin_fixed_qparams
from compressor.quant.precision import PrecisionOverride
from compressor.quant.substitution import (fold_batchnorm, log_decompositions, relu_before_moves,
                                          substitute_norm_idioms)
from compressor.quant.quantizers import (
    ActivationQuantizer,
    BiasQuantizer,
    FixedQParamsQuantizer,
    WeightQuantizer,
)
from compressor.quant.length_multiple import length_multiple, run_padded, trace_at_multiples
from compressor.quant.trace_errors import LengthFixedError, check_dynamic_axes, explain_export_failure
from compressor.recurrent.substitute import substitute_recurrent

log = logging.getLogger("compressor.quant")


class QuantizedModel(nn.Module):
    """A float model traced by torch.export, with every tensor quantized.

    ``graph_module`` computes the simulation of the int8 model. Exported
    graphs refuse ``train()``/``eval()``, so mode switches reach only the
    quantizers; the traced graph itself was captured in eval mode.
    """

    def __init__(self, graph_module: torch.fx.GraphModule, config: QuantConfig,
                 example_shapes: list[list[int]], summary: dict[str, Any],
                 traced_program: bytes | None = None) -> None:
        super().__init__()
        self.graph_module = graph_module
        self.config = config
        self.example_shapes = example_shapes
        self.summary = summary
        # The serialized program the quantizers were planned on: a checkpoint holding it rebuilds this exact
        # graph (quantizer names derive from node names, and a re-trace may number nodes differently).
        self.traced_program = traced_program
        # > 1 for a model that runs only at multiples of this many samples (compressor/quant/length_multiple.py)
        self.length_multiple = length_multiple(graph_module)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.length_multiple > 1:
            return run_padded(self.graph_module, self.length_multiple, args, kwargs)
        return self.graph_module(*args, **kwargs)

    def train(self, mode: bool = True) -> "QuantizedModel":
        self.training = mode
        for q in self.quantizers().values():
            q.train(mode)
        return self

    def quantizers(self) -> dict[str, nn.Module]:
        root = self.graph_module.get_submodule(QUANTIZER_ROOT)
        return dict(root.named_children())

    def activation_quantizers(self) -> dict[str, nn.Module]:
        return {k: q for k, q in self.quantizers().items()
                if isinstance(q, (ActivationQuantizer, FixedQParamsQuantizer))}

    def weight_quantizers(self) -> dict[str, WeightQuantizer]:
        return {k: q for k, q in self.quantizers().items() if isinstance(q, WeightQuantizer)}

    def set_mode(self, mode: str) -> None:
        """'quantize' (simulation), 'observe' (calibration) or 'float'."""
        for q in self.quantizers().values():
            if not isinstance(q, BiasQuantizer):
                q.set_mode(mode)

    def add_overrides(self, rules: Iterable[PrecisionOverride]) -> list[str]:
        """Append fixed-qparams rules to this model's config (saved with it) and pin the quantizers they match.

        For grids known only once the quantizer names are (e.g. the model input's, after the level stage is
        fit); call it before ``calibrate``, which then leaves them. Bits and per-channel weights are decided
        when quantize() builds the quantizers: a rule that sets them is refused here. A rule the config
        already holds is skipped. Returns the names of the quantizers pinned.
        """
        new = tuple(rule for rule in dict.fromkeys(rules) if rule not in self.config.overrides)
        for rule in new:
            if not rule.fixes_qparams or (rule.activation_bits, rule.weight_bits, rule.per_channel) != (None,) * 3:
                raise ConfigError(f"precision override {rule.pattern}: only fixed qparams can be added to a quantized "
                                  "model (bits and per-channel go in the QuantConfig given to quantize())")
        if not new:
            return []
        self.config = dataclasses.replace(self.config, overrides=self.config.overrides + new)
        return pin_fixed_qparams(self.graph_module, self.config, only=new)

    def quantizer_parameters(self) -> Iterator[nn.Parameter]:
        for q in self.quantizers().values():
            yield from q.parameters(recurse=False)

    def model_parameters(self) -> Iterator[nn.Parameter]:
        qids = {id(p) for p in self.quantizer_parameters()}
        for p in self.parameters():
            if id(p) not in qids:
                yield p

    def weight_tensors(self) -> dict[str, tuple[WeightQuantizer, torch.Tensor]]:
        """Each weight/constant quantizer with the float tensor it quantizes (read off the graph)."""
        prefix = f"{QUANTIZER_ROOT}."
        out = {}
        for node in self.graph_module.graph.nodes:
            if node.op == "call_module" and str(node.target).startswith(prefix) and node.args[0].op == "get_attr":
                quantizer = self.graph_module.get_submodule(node.target)
                if isinstance(quantizer, WeightQuantizer):
                    tensor = get_attr_value(self.graph_module, node.args[0].target)
                    out[str(node.target)[len(prefix):]] = (quantizer, tensor)
        return out

    def quantized_weights(self) -> dict[str, torch.Tensor]:
        """Each weight as the deployed model holds it (after fake quantization)."""
        with torch.no_grad():
            return {name: q(w) for name, (q, w) in self.weight_tensors().items()}


def _default_dynamic_shapes(example_inputs: Sequence[torch.Tensor]) -> tuple:
    return tuple({i: torch.export.Dim.AUTO for i in range(t.dim())} for t in example_inputs)


def fold_weight_norm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every weight norm folded into its weight (the model itself if it has none).

    The runtimes see one int8 weight either way; QAT then trains that weight.
    """
    from torch.nn.utils import parametrize
    from torch.nn.utils.weight_norm import WeightNorm

    def has_weight_norm(m: nn.Module) -> bool:
        hooks = any(isinstance(h, WeightNorm) for h in m._forward_pre_hooks.values())
        return hooks or (parametrize.is_parametrized(m) and any(
            type(p).__name__ == "_WeightNorm" for ps in m.parametrizations.values() for p in ps))

    if not any(has_weight_norm(m) for m in model.modules()):
        return model
    import copy

    model = copy.deepcopy(model)
    for m in model.modules():
        for hook in [h for h in m._forward_pre_hooks.values() if isinstance(h, WeightNorm)]:
            torch.nn.utils.remove_weight_norm(m, hook.name)
        if parametrize.is_parametrized(m) and has_weight_norm(m):
            # Not remove_parametrizations: it deletes the property from the parametrized class, which the
            # deep copy shares with the user's model. The copy's instance gets the plain class back instead.
            folded = {name: getattr(m, name).detach().clone() for name in m.parametrizations.keys()}
            m.__class__ = type(m).__bases__[0]
            del m._modules["parametrizations"]
            for name, value in folded.items():
                setattr(m, name, nn.Parameter(value))
    return model


def substituted(model: nn.Module, example_inputs: Sequence[torch.Tensor],
                substitutions: Sequence[str] | None = None) -> nn.Module:
    """The model with the module-level swaps done before tracing (weight norm folded, nn.GRU / nn.LSTM as
    cells, hand-written norms as the project's norms); the model itself when there is nothing to swap."""
    if isinstance(model, QuantizedModel):
        raise UnsupportedOpError("the model is already quantized")
    model = fold_weight_norm(model)
    if substitutions is None or "recurrent" in substitutions:
        model = substitute_recurrent(model)
    if substitutions is None or "norm_idiom" in substitutions:
        model = substitute_norm_idioms(model, example_inputs,
                                       group_norm=substitutions is None or "norm" in substitutions)
    return model


def trace_program(model: nn.Module, example_inputs: Sequence[torch.Tensor],
                  dynamic_shapes: Any = "auto", substitutions: Sequence[str] | None = None
                  ) -> torch.export.ExportedProgram:
    """torch.export the model in eval mode (every axis of every input may vary), int8 forms applied
    (``substitutions``: the QuantConfig.substitutions kinds to apply, None: all)."""
    model = substituted(model, example_inputs, substitutions)
    was_training = model.training
    set_training(model, False)  # an exported GraphModule: already traced in eval mode
    every_axis = dynamic_shapes == "auto"
    if every_axis:
        dynamic_shapes = _default_dynamic_shapes(example_inputs)
    try:
        program = torch.export.export(model, tuple(example_inputs), dynamic_shapes=dynamic_shapes)
    except Exception as exc:  # torch raises many types here
        raise explain_export_failure(model, exc, example_inputs) from exc
    finally:
        set_training(model, was_training)
    if every_axis:  # an axis torch.export fixed although the model runs at other sizes: say so now, not at export
        try:
            check_dynamic_axes(model, program, example_inputs)
        except LengthFixedError as exc:  # strict tracing may keep it as a multiple of some size instead
            program = trace_at_multiples(model, example_inputs, exc.axis)
            if program is None:
                raise
    table = decomposition_table(substitutions)
    log_decompositions(program.graph, SUBSTITUTIONS if substitutions is None else substitutions)
    if any(node.target in table for node in program.graph.nodes):
        # only then: a retrace renames nodes, and quantizer names of zoo checkpoints derive from them
        program = program.run_decompositions(table)
    return program


def graph_of(program: torch.export.ExportedProgram, substitutions: Sequence[str] | None = None,
             relu_first: bool = False) -> torch.fx.GraphModule:
    """The program as the GraphModule quantizers go into (eval BatchNorms folded unless ``substitutions``
    leaves "batchnorm" out; with ``relu_first`` a ReLU after reshapes of its producer moved next to it)."""
    gm = program.module()
    if substitutions is None or "batchnorm" in substitutions:
        fold_batchnorm(gm)
    if relu_first:
        relu_before_moves(gm)
    # Drop computations no output depends on (e.g. a last residual branch),
    # so they get no quantizers and cost nothing; keep the input guards.
    gm.graph.eliminate_dead_code(
        is_impure_node=lambda node: node.op == "call_module" and "guards" in str(node.target) or node.is_impure()
    )
    gm.recompile()
    return gm


def trace(model: nn.Module, example_inputs: Sequence[torch.Tensor],
          dynamic_shapes: Any = "auto") -> torch.fx.GraphModule:
    """The GraphModule ``quantize()`` works on: torch.export in eval mode, int8 forms applied."""
    return graph_of(trace_program(model, example_inputs, dynamic_shapes))


def serialize_program(program: torch.export.ExportedProgram) -> bytes:
    buf = io.BytesIO()
    torch.export.save(program, buf)
    return buf.getvalue()


def quantize(model: nn.Module, example_input: torch.Tensor | Sequence[torch.Tensor],
             config: QuantConfig | None = None, dynamic_shapes: Any = "auto") -> QuantizedModel:
    """Trace ``model`` and put a quantizer on every weight and every activation.

    Inputs and outputs included. The returned model is in 'quantize' mode with
    default step sizes: calibrate it (``compressor.calibrate``) before use.
    Raises UnsupportedOpError naming each op (and its source line) that has no
    int8 form, rather than leaving it float.
    """
    config = config or QuantConfig()
    inputs = [example_input] if isinstance(example_input, torch.Tensor) else list(example_input)
    program = trace_program(model, inputs, dynamic_shapes, config.substitutions)
    return quantize_program(program, [list(t.shape) for t in inputs], config)


def quantize_program(program: torch.export.ExportedProgram | bytes, example_shapes: list[list[int]],
                     config: QuantConfig | None = None) -> QuantizedModel:
    """``quantize()`` on an already traced program (one from ``trace_program`` or a checkpoint): no re-trace,
    so the quantizers get the names they had when the program was first quantized."""
    config = config or QuantConfig()
    if isinstance(program, bytes):
        serialized = program
        program = torch.export.load(io.BytesIO(program))
    else:
        serialized = serialize_program(program)
    gm = graph_of(program, config.substitutions, config.relu_before_moves)
    summary = insert_quantizers(gm, config)
    log.info("quantize(): %s", summary)
    return QuantizedModel(gm, config, example_shapes, summary, traced_program=serialized)
