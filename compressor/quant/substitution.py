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

A kind left out of ``QuantConfig.substitutions`` is not swapped, and quantize() refuses its op with the hint
it gave before substitutions existed (``compressor.ops.registry.substitution_refusal``).
"""
from __future__ import annotations

import logging
import operator
from typing import Any, Iterable

import torch
from torch import fx, nn

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


__all__ = ["fold_batchnorm", "log_decompositions"]
