"""Users' standard layers as exact int8-ready forms (``QuantConfig.substitutions``), and the log of each swap.

- "norm" and "attention": the op registry's decompositions of ``aten.layer_norm``, ``aten.group_norm`` and
  ``aten.scaled_dot_product_attention`` (compressor/ops/decompositions.py), applied by ``trace_program``;
  ``log_decompositions`` names what they replace before they run.
- "batchnorm": ``fold_batchnorm`` below, a pass over the traced GraphModule (``graph_of``): an eval-mode
  BatchNorm is folded into the conv / linear before it when that layer's output feeds nothing else (new
  weight w * g / sqrt(v + eps) and bias (b - m) * g / sqrt(v + eps) + beta), otherwise it becomes a
  per-channel ``x * scale + shift``. The folded tensors are new parameters of the GraphModule (QAT trains
  them, checkpoints save them); the BatchNorm's own parameters and statistics are removed from it. The pass
  reads the program's stored weights, so a checkpoint's program folds to the same graph and names again.

- "norm_idiom": ``substitute_norm_idioms`` below, before tracing: a norm the user wrote by hand (a leaf module of
  the model's own code with a per-channel gain and shift, e.g. asteroid's GlobLN / ChanLN / FeatsGlobLN, whose
  code torch.export may not trace: gLN's dims from ``torch.arange(...).tolist()``) is swapped for the standard
  norm it computes, when probes show the same output: nn.GroupNorm(1, C) (global LN), nn.GroupNorm(C, C) (each
  channel over time) or ``ChannelNorm`` (over the channels at each position, cLN). Its GroupNorms are then the
  "norm" kind's; with "norm" off only ChannelNorm swaps are made.

A kind left out of ``QuantConfig.substitutions`` is not swapped, and quantize() refuses its op with the hint
it gave before substitutions existed (``compressor.ops.registry.substitution_refusal``).
"""
from __future__ import annotations

import copy
import logging
import operator
from typing import Any, Iterable, Sequence

import torch
from torch import fx, nn

from compressor.module_mode import set_training
from compressor.ops import decompositions as dec
from compressor.ops.registry import record_for

log = logging.getLogger("compressor.quant")
aten = torch.ops.aten

_WHAT = {
    "norm": "LayerNorm/GroupNorm -> mean, sub, mul, mean, add eps, rsqrt, mul, affine",
    "attention": "scaled_dot_product_attention -> matmul, scale, softmax, matmul",
}
_BATCH_NORMS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)
# MAC layers a BatchNorm folds into: op -> (axis of the weight's output channels, index of the groups argument)
_FOLDABLE = {
    aten.conv1d.default: (0, None),
    aten.conv2d.default: (0, None),
    aten.linear.default: (0, None),
    aten.conv_transpose1d.default: (1, 6),  # weight [C_in, C_out / groups, k...]: only groups == 1
    aten.conv_transpose2d.input: (1, 6),
}


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def _paths(nodes: list[fx.Node]) -> str:
    return ", ".join(_module_path(n) or "<top level>" for n in nodes)


def log_decompositions(graph: fx.Graph, substitutions: Iterable[str]) -> None:
    """One log line per enabled kind of decomposed substitution the traced graph holds: count and module paths."""
    found: dict[str, list[fx.Node]] = {}
    enabled = set(substitutions)
    for node in graph.nodes:
        record = record_for(node.target) if node.op == "call_function" else None
        if record is not None and record.substitution in enabled and record.decompose is not None:
            found.setdefault(record.substitution, []).append(node)
    for kind, nodes in found.items():
        log.info("substituted %d %s op(s) (%s): %s", len(nodes), kind, _WHAT.get(kind, kind), _paths(nodes))


def _get(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _owner(gm: fx.GraphModule, target: str) -> tuple[nn.Module, str]:
    path, _, name = target.rpartition(".")
    return (gm.get_submodule(path) if path else gm), name


def _free_name(gm: fx.GraphModule, target: str) -> str:
    owner, name = _owner(gm, target)
    candidate, i = name, 1
    while hasattr(owner, candidate):
        candidate, i = f"{name}_{i}", i + 1
    path = target.rpartition(".")[0]
    return f"{path}.{candidate}" if path else candidate


def _set_param(gm: fx.GraphModule, target: str, value: torch.Tensor) -> None:
    owner, name = _owner(gm, target)
    if name in owner._parameters or name in owner._buffers:
        delattr(owner, name)
    owner.register_parameter(name, nn.Parameter(value.detach().to(torch.float32).clone()))


def _fake_like(reference: fx.Node, value: torch.Tensor) -> Any:
    val = reference.meta.get("val")
    mode = getattr(val, "fake_mode", None)
    return mode.from_tensor(value) if mode is not None else value.detach().clone()


def _param_node(gm: fx.GraphModule, before: fx.Node, target: str, value: torch.Tensor) -> fx.Node:
    _set_param(gm, target, value)
    with gm.graph.inserting_before(before):
        node = gm.graph.get_attr(target)
    node.meta["val"] = _fake_like(before, _get(gm, target))
    return node


def _args(node: fx.Node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    out.update(zip(names, node.args))
    out.update(node.kwargs)
    return out


def _batch_norm(node: fx.Node) -> tuple[fx.Node, dict[str, Any]] | None:
    """(the node that holds the BatchNorm's result, its arguments), None when it cannot be folded (batch stats)."""
    if node.target == aten.batch_norm.default:
        a = _args(node, ("input", "weight", "bias", "mean", "var", "training", "momentum", "eps", "cudnn"), {})
        if a.get("training"):
            return None
        out = node
    else:
        a = _args(node, ("input", "weight", "bias", "mean", "var", "momentum", "eps"), {})
        users = list(node.users)
        if not all(u.target is operator.getitem and u.args[1] == 0 for u in users) or len(users) != 1:
            return None
        out = users[0]
    if not all(isinstance(a.get(k), fx.Node) and a[k].op == "get_attr" for k in ("mean", "var")):
        return None
    for key in ("weight", "bias"):
        if a.get(key) is not None and not (isinstance(a[key], fx.Node) and a[key].op == "get_attr"):
            return None
    return out, a


def _foldable(gm: fx.GraphModule, producer: Any, channels: int) -> bool:
    if not (isinstance(producer, fx.Node) and producer.op == "call_function" and producer.target in _FOLDABLE):
        return False
    if len(producer.users) != 1:
        return False
    axis, groups_index = _FOLDABLE[producer.target]
    if groups_index is not None and len(producer.args) > groups_index and producer.args[groups_index] != 1:
        return False
    weight = producer.args[1]
    bias = producer.args[2] if len(producer.args) > 2 else producer.kwargs.get("bias")
    if not (isinstance(weight, fx.Node) and weight.op == "get_attr" and len(weight.users) == 1):
        return False
    if _get(gm, weight.target).shape[axis] != channels:
        return False
    if bias is not None and not (isinstance(bias, fx.Node) and bias.op == "get_attr" and len(bias.users) == 1):
        return False
    val = producer.meta.get("val")
    if producer.target == aten.linear.default and (val is None or val.dim() != 2):
        return False  # BatchNorm1d on (N, L, C') normalizes axis 1, not the linear's output features
    return True


# Pure data movement a ReLU commutes with (one input, one output, values only rearranged).
_RELU_COMMUTES = ("reshape", "transpose", "identity")


def relu_before_moves(gm: fx.GraphModule) -> int:
    """Move each ReLU (or ReLU6/hardtanh) written after a chain of reshapes/transposes of a computed tensor to
    right after its producer, in place; returns how many moved.

    relu(reshape(mul(a, b))) is reshape(relu(mul(a, b))). With the ReLU next to its producer the planner puts
    one quantizer after the ReLU (graph.py fuses it), and the file rounds the product once: TFLite's converter
    fuses the ReLU into the MUL/CONV across the reshape whatever the graph says, so a quantizer between them
    (two roundings in the simulation) made 26 % of asteroid DPTNet's mask codes differ from the file."""
    moved = 0
    for node in list(gm.graph.nodes):
        record = record_for(node.target) if node.op == "call_function" else None
        if record is None or record.kind != "relu" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        chain: list[fx.Node] = []
        current = node.args[0]
        while True:
            current_record = record_for(current.target) if current.op == "call_function" else None
            if current_record is None or current_record.name not in _RELU_COMMUTES or len(current.users) != 1:
                break
            if not current.args or not isinstance(current.args[0], fx.Node):
                break
            chain.append(current)
            current = current.args[0]
        producer_record = record_for(current.target) if current.op == "call_function" else None
        if not chain or producer_record is None or producer_record.kind not in ("weighted", "compute"):
            continue
        if len(current.users) != 1 or "val" not in current.meta:
            continue
        first, last = chain[-1], chain[0]  # producer -> first -> ... -> last -> relu
        node.replace_all_uses_with(last)
        first.replace_input_with(current, node)
        node.replace_input_with(last, current)
        current.append(node)
        node.meta["val"] = current.meta["val"]
        moved += 1
    if moved:
        gm.graph.lint()
        gm.recompile()
        log.info("quantize(): %d ReLU(s) moved before the reshapes/transposes after their producer", moved)
    return moved


def fold_batchnorm(gm: fx.GraphModule) -> None:
    """Fold (or turn into x * scale + shift) every eval-mode BatchNorm of ``gm``, in place; see the module doc."""
    folded: list[fx.Node] = []
    affine: list[fx.Node] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _BATCH_NORMS:
            continue
        found = _batch_norm(node)
        if found is None:
            continue  # left in the graph: quantize() refuses it and says why
        out, a = found
        mean = _get(gm, a["mean"].target).detach().double()
        var = _get(gm, a["var"].target).detach().double()
        gamma = _get(gm, a["weight"].target).detach().double() if a.get("weight") is not None else torch.ones_like(var)
        beta = _get(gm, a["bias"].target).detach().double() if a.get("bias") is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + float(a["eps"]))
        shift = beta - mean * scale
        producer = a["input"]
        if _foldable(gm, producer, scale.numel()):
            axis, _ = _FOLDABLE[producer.target]
            weight = producer.args[1]
            w = _get(gm, weight.target).detach().double()
            view = [1] * w.dim()
            view[axis] = -1
            _set_param(gm, weight.target, w * scale.view(view))
            bias = producer.args[2] if len(producer.args) > 2 else producer.kwargs.get("bias")
            b = _get(gm, bias.target).detach().double() if bias is not None else torch.zeros_like(scale)
            if bias is not None:
                _set_param(gm, bias.target, b * scale + shift)
            else:
                owner_path = weight.target.rpartition(".")[0]
                target = _free_name(gm, f"{owner_path}.bias" if owner_path else "bias")
                bias_node = _param_node(gm, producer, target, b * scale + shift)
                args = list(producer.args) + [None] * max(0, 3 - len(producer.args))
                args[2] = bias_node
                producer.args = tuple(args)
                producer.kwargs = {k: v for k, v in producer.kwargs.items() if k != "bias"}
            out.replace_all_uses_with(producer)
            folded.append(node)
        else:
            rank = out.meta["val"].dim()
            shape = [-1] + [1] * (rank - 2)
            stats_owner = a["mean"].target.rpartition(".")[0]
            prefix = f"{stats_owner}." if stats_owner else ""
            s_node = _param_node(gm, node, _free_name(gm, f"{prefix}folded_scale"), scale.view(shape))
            t_node = _param_node(gm, node, _free_name(gm, f"{prefix}folded_shift"), shift.view(shape))
            with gm.graph.inserting_before(node):
                mul = gm.graph.call_function(aten.mul.Tensor, (producer, s_node))
                add = gm.graph.call_function(aten.add.Tensor, (mul, t_node))
            for new in (mul, add):
                new.meta = {k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace", "torch_fn")}
                new.meta["val"] = out.meta["val"]
            out.replace_all_uses_with(add)
            affine.append(node)
        _remove(gm, node, out, a)
    if folded or affine:
        gm.graph.lint()
        gm.recompile()
    if folded:
        log.info("substituted %d batchnorm op(s) (folded into the conv/linear before): %s", len(folded),
                 _paths(folded))
    if affine:
        log.info("substituted %d batchnorm op(s) (per-channel mul + add, no foldable conv/linear before): %s",
                 len(affine), _paths(affine))


def _remove(gm: fx.GraphModule, node: fx.Node, out: fx.Node, a: dict[str, Any]) -> None:
    """Erase the BatchNorm and its tensors (parameters, statistics, num_batches_tracked) from ``gm``."""
    if out is not node:
        gm.graph.erase_node(out)
    gm.graph.erase_node(node)
    owners = set()
    for key in ("weight", "bias", "mean", "var"):
        attr = a.get(key)
        if isinstance(attr, fx.Node) and not attr.users:
            owners.add(attr.target.rpartition(".")[0])
            gm.graph.erase_node(attr)
            if not any(n.op == "get_attr" and n.target == attr.target for n in gm.graph.nodes):
                owner, name = _owner(gm, attr.target)
                delattr(owner, name)
    for path in owners:  # the counter BatchNorm keeps beside its statistics
        owner = gm.get_submodule(path) if path else gm
        if "num_batches_tracked" in owner._buffers:
            target = f"{path}.num_batches_tracked" if path else "num_batches_tracked"
            for n in [n for n in gm.graph.nodes if n.op == "get_attr" and n.target == target and not n.users]:
                gm.graph.erase_node(n)
            if not any(n.op == "get_attr" and n.target == target for n in gm.graph.nodes):
                delattr(owner, "num_batches_tracked")

# -- "norm_idiom": hand-written norms swapped for the standard norm they compute -----------------------------

NORM_IDIOM_TOLERANCE = 1e-5  # largest relative difference (max |a - b| / max |b|) on any probe for a swap
_EPS_CANDIDATES = (1e-5, 1e-8, 1e-6, 1e-12, 1e-3, 1e-4, 1e-7, 1e-9, 1e-10)
_GAIN_NAMES = ("weight", "gamma", "gain", "scale", "g", "w")
_SHIFT_NAMES = ("bias", "beta", "shift", "offset", "b")
_PROBE_LENGTHS = (5, 16, 37)


class ChannelNorm(nn.Module):
    """Layer norm over axis 1 of [N, C, *] at each position (asteroid's cLN), then a per-channel gain and shift,
    written with the "norm" substitution's ops (mean, x - m, square, mean, + eps, rsqrt, mul; no transposes)."""

    def __init__(self, channels: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dec._channel_affine(dec._normalize(x, [1], self.eps), self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.weight.numel()}, eps={self.eps}"


def _reference(form: str, x: torch.Tensor, gain: torch.Tensor, shift: torch.Tensor, eps: float) -> torch.Tensor:
    channels = x.shape[1]
    if form == "global":
        return torch.nn.functional.group_norm(x, 1, gain, shift, eps)
    if form == "instance":
        return torch.nn.functional.group_norm(x, channels, gain, shift, eps)
    view = [1, channels] + [1] * (x.dim() - 2)
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * gain.reshape(view) + shift.reshape(view)


def _per_channel(p: torch.Tensor) -> int | None:
    """C when ``p`` holds one value per channel ([C], [C, 1], [1, C, 1], ...), else None."""
    sizes = [s for s in p.shape if s != 1]
    return None if len(sizes) > 1 or p.dim() == 0 else (sizes[0] if sizes else 1)


def _affine_params(module: nn.Module) -> list[tuple[str, str]] | None:
    """(gain, shift) parameter-name orders to try for a norm candidate: two per-channel parameters, no buffers."""
    params = dict(module.named_parameters(recurse=False))
    if len(params) != 2 or list(module.buffers(recurse=False)) or list(module.children()):
        return None
    (a, pa), (b, pb) = params.items()
    if (_per_channel(pa) or 0) < 2 or _per_channel(pa) != _per_channel(pb) or pa.numel() != pb.numel():
        return None
    if a.lower() in _GAIN_NAMES and b.lower() in _SHIFT_NAMES:
        return [(a, b)]
    if b.lower() in _GAIN_NAMES and a.lower() in _SHIFT_NAMES:
        return [(b, a)]
    return [(a, b), (b, a)]


def _candidate(module: nn.Module) -> bool:
    """A leaf module of the user's code (not torch's nor the toolkit's) that may be a hand-written norm."""
    origin = type(module).__module__ or ""
    return not origin.startswith(("torch.", "compressor.")) and _affine_params(module) is not None


def _relative(out: Any, ref: torch.Tensor) -> float:
    if not isinstance(out, torch.Tensor) or out.shape != ref.shape:
        return float("inf")
    scale = ref.abs().max().item()
    diff = (out.to(ref.dtype) - ref).abs().max().item()
    return diff / scale if scale > 0 else diff


def _probe(module: nn.Module, shapes: list[tuple[int, ...]], orders: list[tuple[str, str]]
           ) -> tuple[str, float, str, str, float] | None:
    """(form, eps, gain name, shift name, worst relative difference) of the standard norm ``module`` computes on
    random inputs like those it was given (several lengths, non-zero mean, small variance), None if none."""
    gen = torch.Generator().manual_seed(0)
    inputs = []
    for shape in shapes:
        channels = shape[1]
        for i, length in enumerate(_PROBE_LENGTHS):
            size = (2, *shape[1:-1], length)
            offset = torch.randn(channels, generator=gen, dtype=torch.float64).reshape(1, -1, *[1] * (len(size) - 2))
            if i == 1:  # small variance: tells the eps values apart
                inputs.append(torch.randn(size, generator=gen, dtype=torch.float64) * 1e-3)
            else:  # non-zero mean, per-channel offsets
                inputs.append(torch.randn(size, generator=gen, dtype=torch.float64) * 1.5 + 2.0 + offset)
    for dtype in (torch.float64, torch.float32):
        probe = copy.deepcopy(module).to(dtype)
        params = dict(probe.named_parameters(recurse=False))
        with torch.no_grad():  # a random gain and shift: an identity affine would hide a module that ignores them
            for p in params.values():
                p.copy_(torch.rand(p.shape, generator=gen, dtype=torch.float64) + 0.5)
        outputs = []
        try:
            with torch.no_grad():
                for x in inputs:
                    outputs.append(probe(x.to(dtype)))
        except Exception:  # any failure on a probe: not a norm we can stand in for (or not in this dtype)
            continue
        tolerance = NORM_IDIOM_TOLERANCE
        best = None
        for gain_name, shift_name in orders:
            gain, shift = (params[n].detach().to(torch.float64).reshape(-1) for n in (gain_name, shift_name))
            for form in ("global", "channel", "instance"):
                for eps in _EPS_CANDIDATES:
                    worst = 0.0
                    for x, out in zip(inputs, outputs):
                        worst = max(worst, _relative(out, _reference(form, x, gain, shift, eps)))
                        if worst > tolerance:
                            break
                    if worst <= tolerance and (best is None or worst < best[4]):
                        best = (form, eps, gain_name, shift_name, worst)
        return best
    return None


def _input_shapes(model: nn.Module, candidates: dict[int, nn.Module], example_inputs: Sequence[torch.Tensor]
                  ) -> dict[int, list[tuple[int, ...]]]:
    """The shapes (one per rank) each candidate is called with in one eager run on the example; a candidate called
    with anything but one [N, C, ...] tensor (C its parameters' size) is left out."""
    seen: dict[int, list[tuple[int, ...]]] = {}
    refused: set[int] = set()

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        key = id(module)
        x = args[0] if len(args) == 1 and not kwargs else None
        params = list(module.parameters(recurse=False))
        if not isinstance(x, torch.Tensor) or x.dim() < 3 or not x.is_floating_point() \
                or x.shape[1] != params[0].numel():
            refused.add(key)
            return
        shapes = seen.setdefault(key, [])
        if all(len(s) != x.dim() for s in shapes):
            shapes.append(tuple(x.shape))

    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in candidates.values()]
    was_training = model.training
    try:
        set_training(model, False)
        with torch.no_grad():
            model(*example_inputs)
    except Exception:  # the model fails on its example: tracing will say why
        return {}
    finally:
        for h in handles:
            h.remove()
        set_training(model, was_training)
    return {k: v for k, v in seen.items() if k not in refused}


def substitute_norm_idioms(model: nn.Module, example_inputs: Sequence[torch.Tensor],
                           group_norm: bool = True) -> nn.Module:
    """A copy of ``model`` with each hand-written norm swapped for the standard norm it computes (the model
    itself when there is none); see the module doc.

    A candidate is a leaf module of the user's code with two per-channel parameters (gain and shift), called
    with one [N, C, ...] tensor in an eager run on the example. Its output, with a random gain and shift, on
    random inputs of the shapes it was given and several lengths (non-zero mean; small variance, which tells
    eps values apart), must equal GroupNorm(1, C), GroupNorm(C, C) or ``ChannelNorm`` for one of a few eps
    values within ``NORM_IDIOM_TOLERANCE`` (relative); a module that matches none is left as it is.
    ``group_norm=False`` (the "norm" kind off): only ChannelNorm swaps.
    """
    candidates = {id(m): m for m in model.modules() if _candidate(m)}
    if not candidates:
        return model
    shapes = _input_shapes(model, candidates, example_inputs)
    found: dict[int, tuple[str, float, str, str, float]] = {}
    for key, module_shapes in shapes.items():
        match = _probe(candidates[key], module_shapes, _affine_params(candidates[key]))
        if match is not None and (group_norm or match[0] == "channel"):
            found[key] = match
    if not found:
        return model
    paths = [(name, m) for name, m in model.named_modules(remove_duplicate=False) if id(m) in found]
    replacements: dict[int, nn.Module] = {}
    swapped: dict[str, tuple[list[str], float]] = {}  # log label -> module paths, worst relative difference
    for name, original in paths:
        form, eps, gain_name, shift_name, worst = found[id(original)]
        if id(original) not in replacements:
            gain, shift = getattr(original, gain_name), getattr(original, shift_name)
            channels = gain.numel()
            new: nn.Module = ChannelNorm(channels, eps) if form == "channel" else \
                nn.GroupNorm(1 if form == "global" else channels, channels, eps=eps)
            with torch.no_grad():
                new.weight.copy_(gain.detach().reshape(-1))
                new.bias.copy_(shift.detach().reshape(-1))
            replacements[id(original)] = new.to(device=gain.device, dtype=gain.dtype)
        what = ("ChannelNorm(C) (layer norm over the channels at each position)" if form == "channel" else
                f"GroupNorm({'1' if form == 'global' else 'C'}, C)")
        label = f"{type(original).__module__}.{type(original).__qualname__} -> {what}, eps={eps:g}"
        names, worst_seen = swapped.get(label, ([], 0.0))
        swapped[label] = (names + [name], max(worst_seen, worst))
    model = copy.deepcopy(model)  # the user's model keeps its modules
    for name, original in paths:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replacements[id(original)])
    for label, (names, worst) in swapped.items():
        log.info("substituted %d norm_idiom module(s) (hand-written norm as the standard one): %s (matches its "
                 "output within %.0e relative on probes) at %s", len(names), label, max(worst, 1e-16),
                 ", ".join(names))
    return model


__all__ = ["ChannelNorm", "NORM_IDIOM_TOLERANCE", "fold_batchnorm", "log_decompositions", "substitute_norm_idioms"]
