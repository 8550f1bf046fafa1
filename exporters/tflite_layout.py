"""Channels-last activations between the convolutions of a converted .tflite graph.

litert-torch runs each Conv1d as an NHWC CONV_2D and brings the result back
to PyTorch's channels-first layout straight away:

    conv -> TRANSPOSE -> RESHAPE [N, C, T] -> norms, PReLU, adds ... -> RESHAPE -> TRANSPOSE -> conv

Its own layout pass removes those pairs only in 4-D graphs. In Conv-TasNet
they are ~190 of ~570 ops (~15 KB of the int8 file) and two copies of every
activation per convolution. ``to_channels_last`` keeps each 3-D activation
[N, C, T] that lives only between such boundaries in the convolutions' own
NHWC form [N, 1, T, C] instead: the boundary pairs disappear (the conv's
output tensor is used as it is), and the ops in between get their
constants, axes and paddings permuted to match. Integer results are
unchanged (each op computes the same values; only their order in memory
differs), which the export tests check bit for bit.

A group of tensors is rewritten only when every op touching it is one this
pass understands; anything else (graph inputs and outputs, a reshape that
changes more than the layout, an op with axis semantics not listed here)
leaves that group as the converter wrote it.
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Any

import numpy as np

from compressor.ops.registry import target_op


def _layout(name: str) -> str:
    """How this pass may treat a TFLite op: its layout in the op registry ('opaque' if unknown)."""
    op = target_op("tflite", name)
    return op.layout if op is not None else "opaque"


_AXIS = {0: 0, 1: 3, 2: 2}  # [N, C, T] axis -> [N, 1, T, C] axis
_TO_CHANNELS_FIRST = [0, 3, 1, 2]  # NHWC -> NCHW
_TO_CHANNELS_LAST = [0, 2, 3, 1]


def to_channels_last(model: Any, schema: Any) -> dict[str, int]:
    """Rewrite ``model`` (a ``ModelT``) in place; returns its op count before and after."""
    counts = {"ops_before": 0, "ops_after": 0}
    for subgraph in model.subgraphs:
        counts["ops_before"] += len(subgraph.operators)
        _Rewriter(model, subgraph, schema).run()
        counts["ops_after"] += len(subgraph.operators)
    return counts  # the constants it replaced stay in model.buffers, unreferenced: finish() drops them


class _Rewriter:
    def __init__(self, model: Any, subgraph: Any, schema: Any) -> None:
        self.model, self.sg, self.schema = model, subgraph, schema
        codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
        self.op_names = [codes.get(max(int(c.builtinCode), int(c.deprecatedBuiltinCode)), "?")
                         for c in model.operatorCodes]
        self.dead: set[int] = set()
        self._made: dict[tuple, int] = {}  # one new tensor per distinct replacement, shared by its users

    # -- graph queries -----------------------------------------------------
    def name(self, op: Any) -> str:
        return self.op_names[op.opcodeIndex]

    def shape(self, t: int) -> list[int]:
        return [int(d) for d in self.sg.tensors[t].shape] if self.sg.tensors[t].shape is not None else []

    def is_constant(self, t: int) -> bool:
        data = self.model.buffers[self.sg.tensors[t].buffer].data
        return data is not None and len(data) > 0

    def constant(self, t: int) -> np.ndarray:
        tensor = self.sg.tensors[t]
        raw = np.asarray(self.model.buffers[tensor.buffer].data, dtype=np.uint8).tobytes()
        return np.frombuffer(raw, dtype=_dtype(tensor.type, self.schema)).reshape(self.shape(t) or [-1])

    def index(self) -> tuple[dict[int, int], dict[int, list[int]]]:
        producer, consumers = {}, defaultdict(list)
        for i, op in enumerate(self.sg.operators):
            if i in self.dead:
                continue
            for t in op.outputs:
                producer[int(t)] = i
            for t in op.inputs:
                if t >= 0:
                    consumers[int(t)].append(i)
        return producer, consumers

    def perm(self, op: Any) -> list[int] | None:
        if len(op.inputs) < 2 or not self.is_constant(int(op.inputs[1])):
            return None
        return [int(p) for p in self.constant(int(op.inputs[1])).reshape(-1)]

    # -- the pass ----------------------------------------------------------
    def run(self) -> None:
        self.cancel_transpose_pairs()
        self.remove_dead_ops()
        groups, boundaries = self.groups()
        for members in groups:
            self.rewrite(members, boundaries)
        self.remove_dead_ops()
        self.drop_unused_tensors()

    def cancel_transpose_pairs(self) -> None:
        """TRANSPOSE(TRANSPOSE(x)) that composes to the identity reads x instead."""
        producer, _ = self.index()
        graph_io = self.graph_io()
        for i, op in enumerate(self.sg.operators):
            if _layout(self.name(op)) != "transpose" or int(op.outputs[0]) in graph_io:
                continue
            first = producer.get(int(op.inputs[0]))
            if first is None or _layout(self.name(self.sg.operators[first])) != "transpose":
                continue
            p1, p2 = self.perm(self.sg.operators[first]), self.perm(op)
            if p1 is None or p2 is None or [p1[k] for k in p2] != list(range(len(p1))):
                continue
            self.replace_uses(int(op.outputs[0]), int(self.sg.operators[first].inputs[0]))
            self.dead.add(i)

    def graph_io(self) -> set[int]:
        io = {int(t) for t in self.sg.inputs} | {int(t) for t in self.sg.outputs}
        for signature in self.model.signatureDefs or []:
            io |= {int(m.tensorIndex) for m in (signature.inputs or []) + (signature.outputs or [])}
        return io

    def replace_uses(self, old: int, new: int) -> None:
        for op in self.sg.operators:
            op.inputs = np.asarray([new if int(t) == old else int(t) for t in op.inputs], dtype=np.int32)

    def groups(self) -> tuple[list[list[int]], dict[int, tuple[str, int]]]:
        """Sets of 3-D activations that can change layout together, and the boundary RESHAPEs."""
        producer, consumers = self.index()
        graph_io = self.graph_io()
        parent: dict[int, int] = {}

        def find(t: int) -> int:
            while parent.setdefault(t, t) != t:
                parent[t] = parent[parent[t]]
                t = parent[t]
            return t

        def union(a: int, b: int) -> None:
            parent[find(a)] = find(b)

        bad: set[int] = set()
        boundaries: dict[int, tuple[str, int]] = {}  # op index -> ("out"|"in", transpose op index)
        activations = {t for t in range(len(self.sg.tensors)) if len(self.shape(t)) == 3 and not self.is_constant(t)}
        for i, op in enumerate(self.sg.operators):
            if i in self.dead:
                continue
            name = self.name(op)
            touched = [int(t) for t in list(op.inputs) + list(op.outputs) if t >= 0 and int(t) in activations]
            if not touched:
                continue
            if _layout(name) == "reshape" and self.flattened_for_sum_of_squares(i, producer, consumers):
                continue  # any layout of its input gives the same sums: it leaves the group alone
            if self.uniform_broadcast(op):
                continue  # ones whatever the layout; a sum_with_ones reshapes it with its matmul
            if name == "BATCH_MATMUL" and (self.sums_of_squares(op, producer) is not None
                                           or self.sum_with_ones(op, producer) is not None):
                find(int(op.outputs[0]))  # one sum per item, [N, 1, 1]: joins the norm's group
                continue
            if _layout(name) == "reshape" and self.per_item_sum(i, producer):
                find(int(op.outputs[0]))  # a FULLY_CONNECTED sum [N, 1] made [N, 1, 1]: joins the group
                continue
            if _layout(name) == "reshape":
                kind = self.boundary(i, producer, consumers, activations)
                if kind is None:
                    bad.update(touched)
                else:
                    boundaries[i] = kind
                continue
            if not self.understood(op, name, activations):
                bad.update(touched)
                continue
            for t in touched[1:]:
                union(touched[0], t)
            find(touched[0])
        bad |= activations & graph_io
        bad_roots = {find(t) for t in bad if t in parent} | {t for t in bad if t not in parent}
        members: dict[int, list[int]] = defaultdict(list)
        for t in activations:
            root = find(t)
            if root not in bad_roots and t not in bad:
                members[root].append(t)
        # a group is worth rewriting only if a boundary touches it
        touched_by_boundary = set()
        for i in boundaries:
            op = self.sg.operators[i]
            touched_by_boundary |= {int(t) for t in list(op.inputs) + list(op.outputs) if t >= 0}
        return [sorted(m) for m in members.values() if touched_by_boundary & set(m)], boundaries

    def understood(self, op: Any, name: str, activations: set[int]) -> bool:
        ins = [int(t) for t in op.inputs if t >= 0]
        if _layout(name) == "elementwise":
            for t in ins:
                if t in activations:
                    continue
                if self.is_constant(t) and (len(self.shape(t)) == 3 or int(np.prod(self.shape(t) or [1])) == 1):
                    continue
                return False
            return all(int(t) in activations for t in op.outputs)
        data_and_out = [ins[0], int(op.outputs[0])]
        if not all(t in activations for t in data_and_out) or len(op.outputs) != 1:
            return False
        params = ins[1:]
        if _layout(name) == "reducer":
            return len(params) == 1 and self.is_constant(params[0]) and bool(getattr(op.builtinOptions, "keepDims", False))
        if _layout(name) == "pad":
            return self.is_constant(params[0]) and all(t in activations or self.is_constant(t) for t in params)
        if _layout(name) == "slice":
            return len(params) == 2 and all(self.is_constant(t) for t in params)
        if _layout(name) == "concat":
            return all(t in activations for t in ins)
        return False

    def boundary(self, i: int, producer: dict[int, int], consumers: dict[int, list[int]],
                 activations: set[int]) -> tuple[str, int] | None:
        """("out", t): NHWC conv result -> TRANSPOSE t -> this RESHAPE to [N, C, T];
        ("in", t): [N, C, T] -> this RESHAPE to [N, C, 1, T] -> TRANSPOSE t (its only user) to NHWC."""
        op = self.sg.operators[i]
        src, dst = int(op.inputs[0]), int(op.outputs[0])
        if dst in activations and src not in activations:
            t = producer.get(src)
            n, c, w = self.shape(dst)
            if (t is not None and _layout(self.name(self.sg.operators[t])) == "transpose"
                    and self.perm(self.sg.operators[t]) == _TO_CHANNELS_FIRST and self.shape(src) == [n, c, 1, w]
                    and self.same_qparams(dst, int(self.sg.operators[t].inputs[0]))):
                return ("out", t)
            return None
        if src in activations and dst not in activations:
            users = consumers.get(dst, [])
            n, c, w = self.shape(src)
            if (len(users) == 1 and _layout(self.name(self.sg.operators[users[0]])) == "transpose"
                    and self.perm(self.sg.operators[users[0]]) == _TO_CHANNELS_LAST
                    and self.shape(dst) == [n, c, 1, w] and dst not in self.graph_io()
                    and int(self.sg.operators[users[0]].outputs[0]) not in self.graph_io()
                    and self.same_qparams(src, int(self.sg.operators[users[0]].outputs[0]))):
                return ("in", users[0])
        return None

    def flattened_for_sum_of_squares(self, i: int, producer: dict[int, int], consumers: dict[int, list[int]]) -> bool:
        """This RESHAPE flattens an activation [N, C, T] to [N, 1, C*T] or [N, C*T, 1], and only BATCH_MATMULs of
        two such flattenings of the same tensor read it: a norm's sum of squares (exporters/lowering.py), the same
        sums whatever order the flattening visits C and T in, so the activation may be channels-last. A long
        mean's sum with ones (``sum_with_ones``; also [N, C*T]) is order-free the same way."""
        op = self.sg.operators[i]
        src, dst = int(op.inputs[0]), int(op.outputs[0])
        shape = self.shape(src)
        if len(shape) != 3 or self.shape(dst) not in ([shape[0], 1, shape[1] * shape[2]],
                                                      [shape[0], shape[1] * shape[2], 1],
                                                      [shape[0], shape[1] * shape[2]]):
            return False
        users = consumers.get(dst, [])
        return bool(users) and all(
            (self.name(self.sg.operators[u]) == "BATCH_MATMUL"
             and self.sums_of_squares(self.sg.operators[u], producer) == src)
            or self.sum_with_ones(self.sg.operators[u], producer) == src for u in users)

    def sum_with_ones(self, op: Any, producer: dict[int, int]) -> int | None:
        """The activation [N, C, T] this BATCH_MATMUL or FULLY_CONNECTED sums per item (a long mean,
        exporters/lowering.py ``lower_long_means``): a RESHAPE of it to [N, 1, C*T] or [N, C*T] times a
        BROADCAST_TO of one constant value; else None."""
        if self.name(op) not in ("BATCH_MATMUL", "FULLY_CONNECTED") or len(op.inputs) < 2:
            return None
        p_data, p_ones = producer.get(int(op.inputs[0])), producer.get(int(op.inputs[1]))
        if p_data is None or p_ones is None or _layout(self.name(self.sg.operators[p_data])) != "reshape":
            return None
        while _layout(self.name(self.sg.operators[p_ones])) in ("reshape", "transpose"):  # the converter's views
            p_ones = producer.get(int(self.sg.operators[p_ones].inputs[0]))
            if p_ones is None:
                return None
        if not self.uniform_broadcast(self.sg.operators[p_ones]):
            return None
        src = int(self.sg.operators[p_data].inputs[0])
        shape = self.shape(src)
        if len(shape) != 3 or self.shape(int(op.inputs[0])) not in ([shape[0], 1, shape[1] * shape[2]],
                                                                     [shape[0], shape[1] * shape[2]]):
            return None
        return src

    def uniform_broadcast(self, op: Any) -> bool:
        """A BROADCAST_TO of a constant holding one value (the column of ones of a long mean's sum)."""
        return (self.name(op) == "BROADCAST_TO" and self.is_constant(int(op.inputs[0]))
                and np.unique(self.constant(int(op.inputs[0]))).size == 1)

    def per_item_sum(self, i: int, producer: dict[int, int]) -> bool:
        """This RESHAPE makes a FULLY_CONNECTED sum with ones, [N, 1], the norm's [N, 1, 1]."""
        op = self.sg.operators[i]
        p = producer.get(int(op.inputs[0]))
        if p is None or self.sum_with_ones(self.sg.operators[p], producer) is None:
            return False
        n = self.shape(int(op.inputs[0]))[0]
        return self.shape(int(op.inputs[0])) == [n, 1] and self.shape(int(op.outputs[0])) == [n, 1, 1]

    def sums_of_squares(self, op: Any, producer: dict[int, int]) -> int | None:
        """The activation [N, C, T] whose squares this BATCH_MATMUL sums per item (its rows times its columns,
        two RESHAPEs of it, [N, 1, C*T] x [N, C*T, 1] -> [N, 1, 1]), else None."""
        sources = []
        for operand in (int(op.inputs[0]), int(op.inputs[1])):
            p = producer.get(operand)
            if p is None or _layout(self.name(self.sg.operators[p])) != "reshape":
                return None
            sources.append(int(self.sg.operators[p].inputs[0]))
        src = sources[0]
        shape = self.shape(src)
        if sources[1] != src or len(shape) != 3:
            return None
        k = shape[1] * shape[2]
        if (self.shape(int(op.inputs[0])), self.shape(int(op.inputs[1])), self.shape(int(op.outputs[0]))) != (
                [shape[0], 1, k], [shape[0], k, 1], [shape[0], 1, 1]):
            return None
        return src

    def same_qparams(self, a: int, b: int) -> bool:
        qa, qb = self.sg.tensors[a].quantization, self.sg.tensors[b].quantization
        if qa is None or qb is None or qa.scale is None or qb.scale is None:
            return qa is None and qb is None and self.sg.tensors[a].type == self.sg.tensors[b].type
        return (self.sg.tensors[a].type == self.sg.tensors[b].type and np.array_equal(qa.scale, qb.scale)
                and np.array_equal(qa.zeroPoint, qb.zeroPoint))

    def rewrite(self, members: list[int], boundaries: dict[int, tuple[str, int]]) -> None:
        group = set(members)
        for t in members:
            tensor = self.sg.tensors[t]
            tensor.shape = _to_nhwc(tensor.shape)
            tensor.shapeSignature = None
        ours = []
        for i, op in enumerate(self.sg.operators):
            touched = {int(t) for t in list(op.inputs) + list(op.outputs) if t >= 0}
            if i not in self.dead and touched & group:
                ours.append(i)
        for i in ours:  # the ops inside first: the boundaries below re-point some of their inputs
            op, name = self.sg.operators[i], self.name(self.sg.operators[i])
            if i in boundaries:
                continue
            if _layout(name) == "elementwise":
                op.inputs = np.asarray([self.nhwc_constant(int(t)) if t >= 0 and self.is_constant(int(t))
                                        and len(self.shape(int(t))) == 3 else int(t) for t in op.inputs], dtype=np.int32)
            elif _layout(name) == "reducer":
                before = {int(a) % 3 for a in self.constant(int(op.inputs[1])).reshape(-1)}
                # over channels and time: over every non-batch axis, the singleton one included
                axes = {_AXIS[a] for a in before} | ({1} if {1, 2} <= before else set())
                op.inputs[1] = self.new_constant(int(op.inputs[1]), np.asarray(sorted(axes), dtype=np.int32))
            elif _layout(name) == "pad":
                pads = self.constant(int(op.inputs[1])).reshape(3, 2)
                pads = np.stack([pads[0], np.zeros(2, dtype=pads.dtype), pads[2], pads[1]])
                op.inputs[1] = self.new_constant(int(op.inputs[1]), pads)
            elif _layout(name) == "slice":
                for k, singleton in ((1, 0), (2, 1)):
                    v = self.constant(int(op.inputs[k])).reshape(-1)
                    values = np.asarray([v[0], singleton, v[2], v[1]], dtype=v.dtype)
                    op.inputs[k] = self.new_constant(int(op.inputs[k]), values)
            elif _layout(name) == "concat":
                op.builtinOptions = copy.copy(op.builtinOptions)
                op.builtinOptions.axis = _AXIS[int(op.builtinOptions.axis) % 3]
            elif name == "BATCH_MATMUL":  # sums (of squares): [N, 1, 1, K] x [N, 1, K, 1] -> [N, 1, 1, 1]
                n, _, k = self.shape(int(op.inputs[0]))
                for operand, shape in ((int(op.inputs[0]), [n, 1, 1, k]), (int(op.inputs[1]), [n, 1, k, 1])):
                    self.reshape_to(self.producer_of(operand), shape)
            elif _layout(name) == "reshape" and int(op.outputs[0]) in group and self.shape(int(op.inputs[0])) == [
                    self.shape(int(op.outputs[0]))[0], 1]:  # per_item_sum: [N, 1] -> [N, 1, 1, 1] (already NHWC)
                self.reshape_to(i, self.shape(int(op.outputs[0])))
        for i in ours:
            if i in boundaries:
                self.remove_boundary(i, *boundaries[i])

    def remove_boundary(self, i: int, kind: str, transpose: int) -> None:
        """The conv's own NHWC tensor takes the place of the [N, C, T] one (same bytes, same qparams)."""
        op, t_op = self.sg.operators[i], self.sg.operators[transpose]
        if kind == "out":  # conv -> TRANSPOSE -> RESHAPE -> B: B's users read the conv output
            self.replace_uses(int(op.outputs[0]), int(t_op.inputs[0]))
        else:  # B -> RESHAPE -> TRANSPOSE -> X -> conv: the conv reads B
            self.replace_uses(int(t_op.outputs[0]), int(op.inputs[0]))
            self.dead.add(transpose)
        self.dead.add(i)

    def producer_of(self, t: int) -> int:
        return next(i for i, op in enumerate(self.sg.operators) if i not in self.dead and t in set(map(int, op.outputs)))

    def reshape_to(self, i: int, shape: Any) -> None:
        """RESHAPE op ``i`` now makes ``shape`` (its output tensor, shape operand and options)."""
        op = self.sg.operators[i]
        values = np.asarray(shape, dtype=np.int32)
        out = self.sg.tensors[int(op.outputs[0])]
        out.shape, out.shapeSignature = values.copy(), None
        if len(op.inputs) > 1 and int(op.inputs[1]) >= 0:
            op.inputs[1] = self.new_constant(int(op.inputs[1]), values)
        if getattr(op.builtinOptions, "newShape", None) is not None:
            op.builtinOptions = copy.copy(op.builtinOptions)
            op.builtinOptions.newShape = values.copy()

    def nhwc_constant(self, t: int) -> int:
        """A constant operand [a, b, c] as [a, 1, c, b] (data transposed; no copy when b or c is 1)."""
        key = ("nhwc", t)
        if key not in self._made:
            shape = self.shape(t)
            if shape[1] == 1 or shape[2] == 1:
                buffer = self.sg.tensors[t].buffer
            else:
                buffer = self.new_buffer(np.ascontiguousarray(np.swapaxes(self.constant(t), 1, 2)))
            self._made[key] = self.clone_tensor(t, _to_nhwc(self.sg.tensors[t].shape), buffer)
        return self._made[key]

    def new_constant(self, t: int, values: np.ndarray) -> int:
        """A constant like ``t`` holding ``values`` (``t`` itself when it already does)."""
        values = np.ascontiguousarray(values.astype(_dtype(self.sg.tensors[t].type, self.schema)))
        if self.shape(t) == list(values.shape) and np.array_equal(self.constant(t), values):
            return t
        key = ("constant", self.sg.tensors[t].type, values.shape, values.tobytes())
        if key not in self._made:
            self._made[key] = self.clone_tensor(t, np.asarray(values.shape, dtype=np.int32), self.new_buffer(values))
        return self._made[key]

    def clone_tensor(self, t: int, shape: Any, buffer: int) -> int:
        tensor = copy.copy(self.sg.tensors[t])
        tensor.shape = np.asarray(shape, dtype=np.int32)
        tensor.shapeSignature = None
        tensor.buffer = buffer
        quant = tensor.quantization
        if quant is not None and quant.scale is not None and len(quant.scale) > 1 and len(self.shape(t)) == 3:
            tensor.quantization = copy.copy(quant)
            tensor.quantization.quantizedDimension = _AXIS[int(quant.quantizedDimension) % 3]
        self.sg.tensors.append(tensor)
        return len(self.sg.tensors) - 1

    def new_buffer(self, values: np.ndarray) -> int:
        buffer = self.schema.BufferT()
        buffer.data = np.frombuffer(np.ascontiguousarray(values).tobytes(), dtype=np.uint8).copy()
        self.model.buffers.append(buffer)
        return len(self.model.buffers) - 1

    # -- clean-up ----------------------------------------------------------
    def remove_dead_ops(self) -> None:
        graph_io = self.graph_io()
        while True:
            _, consumers = self.index()
            newly = {i for i, op in enumerate(self.sg.operators) if i not in self.dead
                     and not any(consumers.get(int(t)) or int(t) in graph_io for t in op.outputs)}
            if not newly:
                break
            self.dead |= newly
        self.sg.operators = [op for i, op in enumerate(self.sg.operators) if i not in self.dead]
        self.dead = set()

    def drop_unused_tensors(self) -> None:
        used = self.graph_io()
        for op in self.sg.operators:
            used |= {int(t) for t in list(op.inputs) + list(op.outputs) if t >= 0}
            if op.intermediates is not None:
                used |= {int(t) for t in op.intermediates}
        keep = sorted(used)
        new_index = {old: new for new, old in enumerate(keep)}

        def remap(values: Any) -> np.ndarray:
            return np.asarray([new_index[int(t)] if t >= 0 else int(t) for t in values], dtype=np.int32)

        for op in self.sg.operators:
            op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
            if op.intermediates is not None:
                op.intermediates = remap(op.intermediates)
        self.sg.inputs, self.sg.outputs = remap(self.sg.inputs), remap(self.sg.outputs)
        subgraph_index = self.model.subgraphs.index(self.sg)
        for signature in self.model.signatureDefs or []:
            if signature.subgraphIndex == subgraph_index:
                for m in (signature.inputs or []) + (signature.outputs or []):
                    m.tensorIndex = new_index[int(m.tensorIndex)]
        self.sg.tensors = [self.sg.tensors[t] for t in keep]


def _to_nhwc(shape: Any) -> np.ndarray:
    n, c, t = (int(d) for d in shape)
    return np.asarray([n, 1, t, c], dtype=np.int32)


def _dtype(tensor_type: int, schema: Any) -> np.dtype:
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return np.dtype({"FLOAT32": np.float32, "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8,
                     "INT16": np.int16, "INT64": np.int64, "BOOL": np.bool_, "FLOAT16": np.float16}[names[tensor_type]])
