"""Receptive-field geometry of ONNX nodes, in the conventions of :class:`convscope.backend.Layer`.

Geometry is reported for nodes that map a channels-first map to a channels-first map (and for
global pooling of one):

* Conv, MaxPool, AveragePool, LpPool: kernel, strides, pads (``auto_pad`` resolved), dilations;
* ConvTranspose (kind ``"deconv"``): the op's kernel, strides, dilations and pads, with
  ``output_padding`` (rows the op adds at the end) taken off the end padding, so that
  ``out = s (in - 1) + d (k - 1) + 1 - top - bottom`` holds; ``auto_pad``/``output_shape``
  pads are recovered from the sizes;
* Pad with pads known (constants, or a constant-only subgraph as torch writes F.pad): kernel
  (1, 1), stride (1, 1) and the H/W pads (any mode); Slice with step 1 on H or W (a crop): the
  same with negative padding (kind ``"crop"``);
* Resize/Upsample by integer factors (out / in) on H and W: kind ``"upsample"``, the factors as
  ``stride``;
* GlobalAveragePool, GlobalMaxPool, GlobalLpPool, and ReduceMean/ReduceMax over the H and W
  axes: kind ``"pool"`` with the whole map as kernel and stride.

Values the geometry needs (pads, starts) are read from constants, or folded from the
constant-only subgraph that computes them, where ``Shape`` of a tensor of known size counts
as a constant (a crop written with sizes, torch.chunk on a dynamic graph). Where a node
changes the spatial size and none of this applies, the record keeps only its ``op`` (the
ONNX op type), so that an error about it names the operator.
"""
from __future__ import annotations

import numpy as np

from .adjoint._emit import attr
from .adjoint.rules_spatial import window_geometry

__all__ = ["Folder", "node_geometry"]

_WINDOWED = ("Conv", "MaxPool", "AveragePool", "LpPool")
_GLOBAL = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
_REDUCE_POOL = ("ReduceMean", "ReduceMax")
_UNIT = dict(kernel=(1, 1), stride=(1, 1), dilation=(1, 1))
_FOLD_LIMIT = 64


class Folder:
    """Values of constant tensors of one graph, for one input size's ``shapes``."""

    def __init__(self, graph, dependent, shapes):
        self.graph, self.dependent, self.shapes = graph, dependent, shapes
        self._values = {}

    def value(self, name):
        """The value of ``name`` (an array), or None when it depends on the image or cannot be folded."""
        if not name or name in self.dependent:
            return None
        graph = self.graph
        found = graph.constants.get(name, graph.weights.get(name))
        if found is not None:
            return np.asarray(found)
        if name not in self._values:
            self._values[name] = self._fold(name)
        return self._values[name]

    def _shape_value(self, node):
        dims = self.shapes.get(node.input[0])
        if dims is None or None in dims[1:]:
            return None
        dims = np.array([self.graph.fixed_batch or 1, *dims[1:]], np.int64)
        if node.op_type == "Size":
            return np.array(np.prod(dims), np.int64)
        start, end = attr(node, "start", 0), attr(node, "end", None)
        return dims[start:end]

    def _fold(self, name):
        graph, nodes, leaves, todo = self.graph, {}, {}, [name]
        while todo:
            t = todo.pop()
            if not t or t in nodes or t in leaves:
                continue
            if t in self.dependent:
                return None
            if t in graph.constants or t in graph.weights:
                leaves[t] = np.asarray(graph.constants[t] if t in graph.constants else graph.weights[t])
                continue
            index = graph.producer.get(t)
            if index is None or len(nodes) >= _FOLD_LIMIT:
                return None
            node = graph.nodes[index]
            if node.op_type in ("Shape", "Size") and node.domain in ("", "ai.onnx"):
                leaves[t] = self._shape_value(node)
                if leaves[t] is None:
                    return None
                continue
            if node.domain not in ("", "ai.onnx") or node.op_type.startswith("Random") or any(
                    a.type in (5, 10) for a in node.attribute):  # GRAPH / GRAPHS: no control flow
                return None
            nodes[t] = index
            todo.extend(node.input)
        if name in leaves:
            return leaves[name]
        from onnx import helper, numpy_helper
        from onnx.reference import ReferenceEvaluator

        order = [graph.nodes[i] for i in sorted(set(nodes.values()))]
        inits = [numpy_helper.from_array(v, k) for k, v in leaves.items()]
        model = helper.make_model(helper.make_graph(order, "fold", [], [helper.make_value_info(name, helper.TypeProto())],
                                                    inits), opset_imports=list(graph.proto.opset_import))
        try:
            return np.asarray(ReferenceEvaluator(model).run(None, {})[0])
        except Exception:  # an operator the reference evaluator lacks: the value stays unknown
            return None


def _ints(folder, node, index):
    if len(node.input) <= index or not node.input[index]:
        return None
    value = folder.value(node.input[index])
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]


def _whole(size):
    return dict(kernel=tuple(size), stride=tuple(size), padding=(0, 0, 0, 0), dilation=(1, 1))


def _windowed(node, folder, size_in):
    if node.op_type == "Conv" and attr(node, "kernel_shape") is None:
        w = folder.value(node.input[1]) if len(node.input) > 1 else None
        if w is None:
            return {}
        node = _with_attribute(node, "kernel_shape", list(w.shape[2:]))
    kernel, strides, dilations, begin, end = window_geometry(node, list(size_in))
    if kernel is None or len(kernel) != 2:
        return {}
    return dict(kernel=tuple(kernel), stride=tuple(strides), padding=(begin[0], begin[1], end[0], end[1]),
                dilation=tuple(dilations))


def _deconv(node, folder, size_in, size_out):
    kernel = attr(node, "kernel_shape")
    if kernel is None:
        w = folder.value(node.input[1])
        if w is None:
            return {}
        kernel = list(w.shape[2:])
    strides = list(attr(node, "strides", [1, 1]))
    dilations = list(attr(node, "dilations", [1, 1]))
    extra = list(attr(node, "output_padding", [0, 0]))
    auto = attr(node, "auto_pad", "NOTSET")
    pads = [0, 0, 0, 0] if auto == "VALID" else list(attr(node, "pads", [0, 0, 0, 0]))
    if auto in ("SAME_UPPER", "SAME_LOWER") or attr(node, "output_shape") is not None:
        pads = [0, 0, 0, 0]
        for i in range(2):
            total = strides[i] * (size_in[i] - 1) + (kernel[i] - 1) * dilations[i] + 1 - size_out[i]
            small, large = total // 2, total - total // 2
            pads[i], pads[2 + i] = (small, large) if auto == "SAME_UPPER" else (large, small)
        extra = [0, 0]
    return dict(kernel=tuple(kernel), stride=tuple(strides), dilation=tuple(dilations),
                padding=(pads[0], pads[1], pads[2] - extra[0], pads[3] - extra[1]))


def _pad(node, folder, rank):
    pads = _ints(folder, node, 1)
    if pads is None:
        pads = attr(node, "pads")  # opset < 11
    axes = _ints(folder, node, 3)
    if pads is None:
        return None
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    if len(pads) != 2 * len(axes):
        return None
    begin, end = dict(zip(axes, pads[:len(axes)])), dict(zip(axes, pads[len(axes):]))
    return dict(padding=(begin.get(2, 0), begin.get(3, 0), end.get(2, 0), end.get(3, 0)), **_UNIT)


def _crop(node, folder, dims):
    starts, ends = _ints(folder, node, 1), _ints(folder, node, 2)
    if starts is None or ends is None:
        return None
    axes = _ints(folder, node, 3) or list(range(len(starts)))
    steps = _ints(folder, node, 4) or [1] * len(starts)
    rank = len(dims)
    cut = {2: (0, 0), 3: (0, 0)}
    for axis, start, end, step in zip(axes, starts, ends, steps):
        axis %= rank
        if axis not in cut:
            continue
        if step != 1:
            return None
        n = dims[axis]
        start = min(max(start + n if start < 0 else start, 0), n)
        end = min(max(end + n if end < 0 else end, 0), n)
        cut[axis] = (start, n - max(end, start))
    return dict(padding=(-cut[2][0], -cut[3][0], -cut[2][1], -cut[3][1]), **_UNIT)


def _reduced_axes(node, folder, rank):
    axes = attr(node, "axes")
    if axes is None:
        axes = _ints(folder, node, 1)
    if axes is None:
        return None if attr(node, "noop_with_empty_axes", 0) else list(range(rank))
    return sorted({int(a) % rank for a in axes})


def node_geometry(node, folder, in_state, in_dims, out_dims):
    """(kind or None to keep the op's own kind, {kernel, stride, padding, dilation}) of ``node``."""
    op = node.op_type
    if in_state is None or in_state[0] != "chw" or in_dims is None or len(in_dims) != 4 or None in in_dims[2:]:
        return None, {}
    size_in = tuple(in_dims[2:])
    if op in _GLOBAL:
        return None, _whole(size_in)
    if op in _REDUCE_POOL:
        return ("pool", _whole(size_in)) if _reduced_axes(node, folder, 4) == [2, 3] else (None, {})
    if out_dims is None or len(out_dims) != 4 or None in out_dims[2:]:
        return None, {}
    size_out = tuple(out_dims[2:])
    if op in _WINDOWED:
        return None, _windowed(node, folder, size_in)
    if op == "ConvTranspose":
        return "deconv", _deconv(node, folder, size_in, size_out)
    if size_out == size_in:
        return ("pad" if op == "Pad" else None), {}
    if op == "Pad":
        found = _pad(node, folder, 4)
        return ("pad", found) if found else (None, {})
    if op == "Slice":
        found = _crop(node, folder, in_dims)
        return ("crop", found) if found else (None, {})
    if op in ("Resize", "Upsample"):
        factors = [o // i if i and o % i == 0 else 0 for i, o in zip(size_in, size_out)]
        if all(f >= 1 for f in factors):
            return "upsample", dict(stride=tuple(factors))
    return None, {}


def _with_attribute(node, name, value):
    from onnx import NodeProto, helper

    copy = NodeProto()
    copy.CopyFrom(node)
    copy.attribute.append(helper.make_attribute(name, value))
    return copy
