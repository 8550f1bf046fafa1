"""``quantize()``: trace a float model with torch.export and insert quantizers.

Two passes over the traced graph. The first decides, for every float tensor
the graph computes, which quantizer "group" it belongs to (data-movement ops
inherit their input's group, concat unites its inputs' groups, ReLU absorbs
its producer's). The second creates one module per group and inserts a call
after every node that makes new values, one per weight, one per bias.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from compressor.errors import ConfigError, UnsupportedOpError
from compressor.quant.config import QuantConfig
from compressor.ops.record import OpRecord
from compressor.ops.registry import SPECTRAL_HINT, op_name, record_for, substitution_refusal
from compressor.quant.precision import ACCUMULATOR_BITS, OUTPUT_ROLE, VARIANCE_ROLE, Precision, PrecisionOverride, resolve
from compressor.recurrent.op import cell_of
from compressor.recurrent.quantized import (RECURRENCE_ROOT, QuantizedRecurrence, cell_quantizers, scan_arguments,
                                           scan_outputs)
from compressor.quant.quantizers import (
    ActivationQuantizer,
    BiasQuantizer,
    FixedQParamsQuantizer,
    WeightQuantizer,
)

QUANTIZER_ROOT = "quantizers"


@dataclass(eq=False)
class _Group:
    """Tensors that share one activation quantizer."""

    name: str
    fixed: str | None = None
    positive: bool = False  # feeds rsqrt/sqrt/log/a divisor: floor at one LSB
    sites: list[fx.Node] = field(default_factory=list)
    parent: "_Group | None" = None

    def root(self) -> "_Group":
        g = self
        while g.parent is not None:
            g = g.parent
        return g


def _is_float_tensor(node: Any) -> bool:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    if isinstance(val, (list, tuple)):
        return any(isinstance(v, torch.Tensor) and v.is_floating_point() for v in val)
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _constant_source(node: fx.Node) -> fx.Node | None:
    """The stored float constant (get_attr) ``node`` is, through data movement; None for computed tensors."""
    for _ in range(16):
        if node.op == "get_attr":
            return node if _is_float_tensor(node) else None
        record = record_for(node.target) if node.op == "call_function" else None
        if record is None or record.kind != "move" or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        node = node.args[0]
    return None


def _is_complex_tensor(node: Any) -> bool:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    values = val if isinstance(val, (list, tuple)) else [val]
    return any(isinstance(v, torch.Tensor) and v.is_complex() for v in values)


def source_location(node: fx.Node) -> str:
    """'file.py:LINE: code' of the user's line that produced ``node``."""
    trace = node.meta.get("stack_trace") or ""
    # the code line is missing when the source was not readable at trace time (e.g. pytest-rewritten modules)
    where = re.findall(r'File "([^"]+)", line (\d+), in \S+(?:\n[ \t]+(?!File ")(.*))?', trace)
    if not where:
        return "unknown source line"
    user_frames = [w for w in where if "/torch/" not in w[0]]
    path, line, code = (user_frames or where)[-1]
    return f"{path}:{line}: {code.strip()}" if code.strip() else f"{path}:{line}"


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []

    def visit(a: Any) -> None:
        if isinstance(a, fx.Node):
            if _is_float_tensor(a):
                found.append(a)
        elif isinstance(a, (list, tuple)):
            for item in a:
                visit(item)

    for a in list(node.args) + list(node.kwargs.values()):
        visit(a)
    return found


def _safe(name: str) -> str:
    return re.sub(r"\W", "_", name)


class _Planner:
    def __init__(self, gm: fx.GraphModule, config: QuantConfig) -> None:
        self.gm = gm
        self.config = config
        self.group_of: dict[fx.Node, _Group] = {}
        self.groups: list[_Group] = []
        self.weights: dict[tuple[fx.Node, fx.Node], int | None] = {}  # (op, weight) -> axis
        self.biases: dict[fx.Node, fx.Node] = {}  # op -> bias node
        self.constants: set[fx.Node] = set()  # get_attr nodes used as data
        self.unsupported: list[str] = []
        self.recurrences: list[fx.Node] = []  # scan ops (compressor/recurrent)

    def new_group(self, site: fx.Node, fixed: str | None = None) -> _Group:
        group = _Group(name=f"act_{_safe(site.name)}", fixed=fixed, sites=[site])
        self.groups.append(group)
        self.group_of[site] = group
        return group

    def unite(self, groups: list[_Group]) -> _Group:
        roots = list(dict.fromkeys(g.root() for g in groups))
        keep = next((r for r in roots if r.fixed), roots[0])
        for r in roots:
            keep.positive = keep.positive or r.positive
            if r is not keep:
                r.parent = keep
                keep.sites.extend(r.sites)
                r.sites = []
        return keep

    def plan(self) -> None:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder" and _is_float_tensor(node):
                self.new_group(node)
            elif node.op == "get_attr" and _is_float_tensor(node):
                pass  # decided by its consumer
            elif node.op == "call_function":
                self.plan_call(node)
        for node in self.recurrences:
            self.share_states(node)
        if self.unsupported:
            listing = "\n  ".join(self.unsupported)
            raise UnsupportedOpError(
                f"quantize() cannot quantize {len(self.unsupported)} op(s); a float island is not allowed:\n  {listing}"
            )

    def plan_call(self, node: fx.Node) -> None:
        record = record_for(node.target)
        if record is not None and record.kind == "recurrent":
            w = scan_arguments(node)["w"]
            if isinstance(w, fx.Node) and w.op == "get_attr":  # per output row, like a Linear's
                self.weights[(node, w)] = 0 if self.config.per_channel else None
            self.recurrences.append(node)
            return
        refused = record is not None and not record.quantizable
        if refused or _is_complex_tensor(node):
            # refused whatever its dtype: a complex STFT is no float tensor, yet it is a float island
            self.refuse(node, record.hint if refused else SPECTRAL_HINT)
            return
        if not _is_float_tensor(node):
            return  # shapes, masks, indices: nothing to quantize
        if accumulated_square(node, self.config):
            return  # summed exactly in its mean's int32 accumulator (precision.ACCUMULATOR_BITS)
        if record is None:
            self.refuse(node, "no int8 form is known for it")
            return
        if record.substitution is not None and record.kind == "decomposed":  # not swapped: its kind is off
            self.refuse(node, substitution_refusal(record, record.substitution in self.config.substitutions))
            return
        inputs = _tensor_inputs(node)
        if record.positive_input is not None and len(inputs) > record.positive_input:
            group = self.group_of.get(inputs[record.positive_input])
            if group is not None:
                group.root().positive = True
        if record.kind == "weighted":
            self.plan_weighted(node, record)
        elif record.kind != "move":
            for inp in inputs:
                source = _constant_source(inp)
                if source is not None:
                    self.constants.add(source)  # quantized once where it is stored; moves keep its grid
        if record.kind in ("move",):
            src = inputs[0] if inputs else None
            if src is not None and _constant_source(src) is not None:
                return  # a reshaped constant: quantized where it is stored
            self.group_of[node] = self.group_of.get(src) or self.new_group(node)
            return
        if record.kind == "shared":
            members = [self.group_of[i] for i in inputs if i in self.group_of]
            self.group_of[node] = self.unite(members) if members else self.new_group(node)
            return
        if record.kind == "same_grid":
            # LiteRT's kernel keeps its input's qparams: the output is re-quantized on that same grid
            members = [self.group_of[i] for i in inputs if i in self.group_of]
            group = self.unite(members) if members else self.new_group(node)
            if node not in group.sites:
                group.sites.append(node)
            self.group_of[node] = group
            return
        if record.kind == "fixed":
            self.new_group(node, fixed=record.fixed)
            return
        if record.kind == "relu" and self.config.fuse_relu and inputs:
            producer = inputs[0]
            group = self.group_of.get(producer)
            if (
                group is not None
                and len(producer.users) == 1
                and producer.op == "call_function"
                and record_for(producer.target) is not None
                and record_for(producer.target).kind in ("weighted", "compute")
                and group.root().sites == [producer]
            ):
                group.root().sites = [node]
                self.group_of[node] = group.root()
                del self.group_of[producer]
                return
        self.new_group(node)

    def share_states(self, node: fx.Node) -> None:
        """A scan's initial state, per-frame outputs and last state on one grid (an LSTM's cell state on another)."""
        outputs, args = scan_outputs(node), scan_arguments(node)
        for out_index, initial in ((0, "h0"), (1, "h0"), (2, "c0")):
            members = [self.group_of[n] for n in (outputs.get(out_index), args.get(initial))
                       if isinstance(n, fx.Node) and n in self.group_of]
            if out_index == 1 and 0 in outputs and outputs[0] in self.group_of:
                members.append(self.group_of[outputs[0]])
            if len(members) > 1:
                self.unite(members)

    def refuse(self, node: fx.Node, hint: str) -> None:
        self.unsupported.append(f"{op_name(node.target)} ({node.name}) at {source_location(node)} — {hint}")

    def plan_weighted(self, node: fx.Node, record: OpRecord) -> None:
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            # A weight computed at run time (e.g. F.conv1d(x, f(w))) is an
            # activation: it already has a group from its producer.
            return
        groups = 1
        if node.target in (torch.ops.aten.conv_transpose1d.default, torch.ops.aten.conv_transpose2d.input):
            groups = node.args[6] if len(node.args) > 6 else node.kwargs.get("groups", 1)
        axis = record.weight_axis if (self.config.per_channel and groups == 1) else None
        if self.config.per_channel and groups != 1:
            # transposed conv weights are [C_in, C_out/groups, k...]: no axis holds the output channels, but in a
            # depthwise one ([C, 1, k...], groups = C) output channel c is input channel c, axis 0; others per tensor
            shape = get_attr_value(self.gm, weight.target).shape
            axis = 0 if (shape[1] == 1 and shape[0] == groups) else None
        self.weights[(node, weight)] = axis
        if isinstance(bias, fx.Node) and bias.op == "get_attr":
            self.biases[node] = bias


def _insert_after(graph: fx.Graph, node: fx.Node, target: str) -> fx.Node:
    with graph.inserting_after(node):
        q = graph.call_module(target, (node,))
    node.replace_all_uses_with(q, delete_user_cb=lambda user: user is not q)
    return q


def _module(gm: fx.GraphModule, name: str) -> nn.Module:
    return gm.get_submodule(f"{QUANTIZER_ROOT}.{name}")


def insert_quantizers(gm: fx.GraphModule, config: QuantConfig) -> dict[str, Any]:
    """Rewrite ``gm`` in place; returns a summary of what was inserted."""
    planner = _Planner(gm, config)
    planner.plan()
    graph = gm.graph
    root = nn.Module()
    gm.add_module(QUANTIZER_ROOT, root)

    act_module: dict[int, str] = {}
    for group in planner.groups:
        if group.parent is not None or not group.sites:
            continue
        # one grid per group: the widest any of its sites is given
        bits = max(precision_of(site, config, group.name).activation_bits for site in group.sites)
        if group.fixed:
            mod: nn.Module = FixedQParamsQuantizer(group.fixed, bits)
        else:
            mod = ActivationQuantizer(bits, config.learn_zero_point, config.ema_decay, positive=group.positive)
        root.add_module(group.name, mod)
        act_module[id(group)] = group.name
        for site in group.sites:
            _insert_after(graph, site, f"{QUANTIZER_ROOT}.{group.name}")

    weight_module: dict[str, str] = {}
    for (op, weight), axis in planner.weights.items():
        name = f"w_{_safe(weight.target)}"
        if name not in weight_module:
            precision = precision_of(op, config)
            axis = axis if precision.per_channel else None
            root.add_module(name, WeightQuantizer(get_attr_value(gm, weight.target), precision.weight_bits, axis))
            weight_module[name] = name
        with graph.inserting_before(op):
            q = graph.call_module(f"{QUANTIZER_ROOT}.{name}", (weight,))
        op.replace_input_with(weight, q)

    cell_quantizer_count = sum(insert_recurrence(gm, planner, node, root) for node in planner.recurrences)

    for op, bias in planner.biases.items():
        weight = op.args[1].args[0] if isinstance(op.args[1], fx.Node) else None
        x = op.args[0]
        src_group = planner.group_of.get(_strip_quant(x))
        if src_group is None or weight is None:
            continue  # input not on an int8 grid (cannot happen for a planned graph)
        in_q = _module(gm, src_group.root().name)
        w_q = _module(gm, f"w_{_safe(weight.target)}")
        name = f"b_{_safe(bias.target)}_{_safe(op.name)}"
        root.add_module(name, BiasQuantizer(in_q, w_q))
        with graph.inserting_before(op):
            q = graph.call_module(f"{QUANTIZER_ROOT}.{name}", (bias,))
        op.replace_input_with(bias, q)

    for const in planner.constants:
        tensor = get_attr_value(gm, const.target)
        name = f"c_{_safe(const.target)}"
        root.add_module(name, WeightQuantizer(tensor, config.weight_bits, axis=None))
        _insert_after(graph, const, f"{QUANTIZER_ROOT}.{name}")

    graph.lint()
    gm.recompile()
    pin_fixed_qparams(gm, config)  # rules with fixed qparams: set now, and calibration leaves them
    return {
        "activation_quantizers": len(act_module) + cell_quantizer_count,
        "weight_quantizers": len(weight_module),
        "bias_quantizers": len(planner.biases),
        "constant_quantizers": len(planner.constants),
    }


def insert_recurrence(gm: fx.GraphModule, planner: _Planner, node: fx.Node, root: nn.Module) -> int:
    """Replace one scan op by its simulation module; returns how many cell quantizers it added."""
    cell = cell_of(node.target)
    args = scan_arguments(node)
    outputs = scan_outputs(node)
    base = f"rnn_{_safe(node.name)}"
    names: dict[str, str] = {}
    added = 0

    def grid(index: int, suffix: str) -> str:
        nonlocal added
        out = outputs.get(index)
        if out is not None and out in planner.group_of:
            return planner.group_of[out].root().name
        name = f"{base}_{suffix}"  # e.g. an LSTM whose last cell state nobody reads
        root.add_module(name, ActivationQuantizer(bits_of(suffix), planner.config.learn_zero_point,
                                                  planner.config.ema_decay))
        added += 1
        return name

    def bits_of(suffix: str) -> int:  # a rule may name a cell tensor, '#rnn_lstm_scan_cell=a16'
        return precision_of(node, planner.config, tensor=f"{base}_{suffix}").activation_bits

    names["state"] = grid(0, "state")
    if cell == "lstm":
        names["cell"] = grid(2, "cell")
    for name, quantizer in cell_quantizers(cell, bits_of, planner.config.learn_zero_point,
                                           planner.config.ema_decay).items():
        root.add_module(f"{base}_{name}", quantizer)
        names[name] = f"{base}_{name}"
        added += 1
    w_node, b_node = args["w"], args["b"]
    if isinstance(b_node, fx.Node) and b_node.op == "get_attr" and isinstance(w_node, fx.Node):
        # the hidden Linear's bias: int32 on s_state * s_w, as a Linear's bias on its input's grid
        w_q = quantizer_at(gm, w_node)
        bias_name = f"b_{_safe(b_node.target)}_{_safe(node.name)}"
        root.add_module(bias_name, BiasQuantizer(_module(gm, names["state"]), w_q))
        with gm.graph.inserting_before(node):
            q = gm.graph.call_module(f"{QUANTIZER_ROOT}.{bias_name}", (b_node,))
        node.replace_input_with(b_node, q)
    if not hasattr(gm, RECURRENCE_ROOT):
        gm.add_module(RECURRENCE_ROOT, nn.Module())
    target = f"{RECURRENCE_ROOT}.{_safe(node.name)}"
    gm.get_submodule(RECURRENCE_ROOT).add_module(_safe(node.name), QuantizedRecurrence(cell, names, root))
    with gm.graph.inserting_before(node):
        call = gm.graph.call_module(target, tuple(node.args))
    call.meta = dict(node.meta)
    node.replace_all_uses_with(call)
    gm.graph.erase_node(node)
    return added


def module_path(node: fx.Node) -> str:
    """Dotted path of the innermost module whose forward made ``node`` ('' at the top level)."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else ""


def op_kind(node: fx.Node) -> str:
    """The op registry's name for what made ``node`` ('input' for a model input)."""
    if node.op == "placeholder":
        return "input"
    record = record_for(node.target) if node.op == "call_function" else None
    return record.name if record is not None else op_name(node.target)


def rule_site(node: fx.Node) -> fx.Node:
    """The node precision rules and reports name for a quantizer placed after ``node``."""
    record = record_for(node.target) if node.op == "call_function" else None
    if record is not None and record.kind == "relu" and node.args and isinstance(node.args[0], fx.Node):
        return node.args[0]  # a fused ReLU's quantizer is its producer's (the conv a rule names)
    return node


def precision_of(node: fx.Node, config: QuantConfig, tensor: str = "") -> Precision:
    site = rule_site(node)
    return resolve(config.overrides, module_path(site), op_kind(site), config.default_precision, tensor,
                   op_roles(node))


def op_roles(node: fx.Node) -> tuple[str, ...]:
    """Other names a precision rule's OP matches the op by that made the tensor a quantizer is placed after
    (``node``; a fused ReLU answers for its producer): ``VARIANCE_ROLE``, ``OUTPUT_ROLE``."""
    roles = (VARIANCE_ROLE,) if averaged_square(rule_site(node)) else ()
    return roles + ((OUTPUT_ROLE,) if model_output(node) else ())


def model_output(node: fx.Node) -> bool:
    """``node``'s value is one of the graph's outputs, reached through data-movement ops and quantizers only."""
    todo, seen = [node], set()
    while todo:
        current = todo.pop()
        for user in current.users:
            if user.op == "output":
                return True
            record = record_for(user.target) if user.op == "call_function" else None
            if user not in seen and (_is_quantizer_call(user) or (record is not None and record.kind == "move")):
                seen.add(user)
                todo.append(user)
    return False


def averaged_square(node: fx.Node) -> bool:
    """``x * x`` whose every use is a mean (through its quantizer once inserted): a norm's variance, an RMS."""
    if node.op != "call_function" or op_kind(node) != "mul" or len(node.args) != 2 or node.args[0] is not node.args[1]:
        return False
    users = list(node.users)
    while any(_is_quantizer_call(u) for u in users):
        users = [v for u in users for v in (u.users if _is_quantizer_call(u) else [u])]
    return bool(users) and all(u.op == "call_function" and op_kind(u) == "mean" for u in users)


def accumulated_square(node: fx.Node, config: QuantConfig) -> bool:
    """An averaged square the rules give ``ACCUMULATOR_BITS``: no quantizer, lowered into a matmul with its mean."""
    return averaged_square(node) and precision_of(node, config, f"act_{_safe(node.name)}").activation_bits == ACCUMULATOR_BITS


def _is_quantizer_call(node: fx.Node) -> bool:
    return node.op == "call_module" and str(node.target).startswith(f"{QUANTIZER_ROOT}.")


def pin_fixed_qparams(gm: fx.GraphModule, config: QuantConfig,
                      only: tuple[PrecisionOverride, ...] | None = None) -> list[str]:
    """Pin each activation quantizer whose resolved precision has fixed qparams (ActivationQuantizer.pin);
    with ``only``, just those one of these rules matches. Returns the names pinned.

    quantize() runs it as it builds the quantizers (so a checkpoint's rules pin the rebuilt model again), and
    ``QuantizedModel.add_overrides`` for rules a recipe adds once the quantizer names are known.
    """
    rules = config.overrides if only is None else only
    if not any(rule.fixes_qparams for rule in rules):
        return []
    prefix = f"{QUANTIZER_ROOT}."
    sites: dict[str, list[fx.Node]] = {}
    for node in gm.graph.nodes:  # each tensor sharing a quantizer has its own call to it
        if node.op == "call_module" and str(node.target).startswith(prefix) and node.args \
                and isinstance(node.args[0], fx.Node):
            sites.setdefault(str(node.target)[len(prefix):], []).append(node.args[0])
    pinned = []
    for name, nodes in sites.items():
        q = _module(gm, name)
        if not isinstance(q, (ActivationQuantizer, FixedQParamsQuantizer)):
            continue
        keys = [(module_path(rule_site(n)), op_kind(rule_site(n)), op_roles(n)) for n in nodes]
        if only is not None and not any(r.matches(m, op, name, roles) for r in only for m, op, roles in keys):
            continue
        fixing = list(dict.fromkeys(p.qparams_rule for p in (resolve(config.overrides, m, op, config.default_precision,
                                                                       name, roles) for m, op, roles in keys)
                                    if p.qparams_rule is not None))
        if not fixing:
            continue
        rule = fixing[0]
        if len({(r.scale, r.zero_point, r.learn_qparams) for r in fixing}) > 1:
            raise ConfigError(f"quantizer {name} is one grid for several tensors, and precision overrides "
                              f"{', '.join(r.pattern for r in fixing)} fix it to different qparams")
        if isinstance(q, FixedQParamsQuantizer):
            if q.qparams() != (rule.scale, rule.zero_point):
                raise ConfigError(f"precision override {rule.pattern}: quantizer {name} ({q.op}) has the qparams "
                                  f"the runtimes demand, {q.qparams()}, not scale={rule.scale}, zp={rule.zero_point}")
            continue
        try:
            q.pin(rule.scale, rule.zero_point, learn=rule.learn_qparams)
        except ValueError as exc:
            raise ConfigError(f"precision override {rule.pattern}: quantizer {name}: {exc}") from None
        pinned.append(name)
    return pinned


_REDUCTIONS = ("mean", "sum", "amax", "amin", "var", "std")


def statistic_quantizers(gm: fx.GraphModule) -> set[str]:
    """Activation quantizers of statistics: a reduction's output, or an op on statistics and constants only
    (a gLN's mean, variance, variance + eps, rsqrt). Calibration ranges them differently (``calibrate``)."""
    prefix = f"{QUANTIZER_ROOT}."
    statistic: dict[fx.Node, bool] = {}
    for node in gm.graph.nodes:  # topological order: every input is decided before its users
        if node.op != "call_function":
            continue
        inputs = [_strip_quant(a) for a in node.all_input_nodes]
        inputs = [a for a in inputs if a.op != "get_attr"]  # constants
        statistic[node] = op_kind(node) in _REDUCTIONS or (bool(inputs) and all(statistic.get(a, False)
                                                                                for a in inputs))
    return {str(n.target)[len(prefix):] for n in gm.graph.nodes
            if n.op == "call_module" and str(n.target).startswith(prefix) and n.args
            and isinstance(n.args[0], fx.Node) and statistic.get(n.args[0], False)}


def _strip_quant(node: Any) -> Any:
    """The node a quantizer call wraps (inputs were rewired to quantizer calls)."""
    while isinstance(node, fx.Node) and _is_quantizer_call(node):
        node = node.args[0]
    return node


def quantizer_at(gm: fx.GraphModule, node: Any) -> nn.Module | None:
    """The quantizer module a graph node calls, or None when the node is not a quantizer."""
    if isinstance(node, fx.Node) and _is_quantizer_call(node):
        return gm.get_submodule(str(node.target))
    return None


def grid_source(gm: fx.GraphModule, node: fx.Node) -> fx.Node | None:
    """The quantizer call that sets ``node``'s grid, through data movement (None: not quantized)."""
    while isinstance(node, fx.Node):
        if isinstance(quantizer_at(gm, node), (ActivationQuantizer, FixedQParamsQuantizer)):
            return node
        record = record_for(node.target) if node.op == "call_function" else None
        if record is None or record.kind != "move" or not node.args:
            return None
        node = node.args[0]
    return None


def get_attr_value(gm: fx.GraphModule, target: str) -> torch.Tensor:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
