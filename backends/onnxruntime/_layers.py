"""Layer records and parameters of an ONNX graph.

A layer is a float tensor a node computes from the image (:mod:`._dataflow`: never a
constant, shape arithmetic, or an ``Identity`` of a weight), named by its tensor, so a model
exported with named outputs (the demo's conv1, bn1, relu1, ...) has the same layer names on
the ONNX backend as on the framework it came from. Each record has its layout
(:mod:`._dataflow`), its geometry (:mod:`._geometry`) and its ``inputs``: the layers (and
``"input"``, the image) its node reads, through tensors that are not layers (integer
intermediates); a tensor that is only a view of a map with its grid intact (the 5-d
reshape and transpose of a channel shuffle) is looked through as well, so the map it is
folded back into names the map it came from: a shuffle moves channels, not pixels.
"""
from __future__ import annotations

import numpy as np

from convscope.backend import INPUT, Layer

from .adjoint._emit import attr
from ._dataflow import VIEW_OPS, track_layouts
from ._geometry import Folder, node_geometry
from ._shapes import FLOAT

__all__ = ["layer_names", "layer_records", "layer_weights"]

_KINDS = {
    "conv": ("Conv",),
    "deconv": ("ConvTranspose",),
    "relu": ("Relu",),
    "activation": ("LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Softplus",
                   "Gelu", "Mish", "Clip"),
    "pool": ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"),
    "linear": ("Gemm", "MatMul"),
    "norm": ("BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization", "LRN"),
    "dropout": ("Dropout",),
    "flatten": ("Flatten",),
    "reshape": ("Reshape", "Squeeze", "Unsqueeze"),
    "softmax": ("Softmax", "LogSoftmax"),
}
_KIND = {op: kind for kind, ops in _KINDS.items() for op in ops}
_PARAMETER_NAMES = {
    "Conv": ("input", "weight", "bias"),
    "ConvTranspose": ("input", "weight", "bias"),
    "Gemm": ("input", "weight", "bias"),
    "MatMul": ("input", "weight"),
    "BatchNormalization": ("input", "weight", "bias", "running_mean", "running_var"),
    "PRelu": ("input", "weight"),
}


def _value(graph, name):
    return graph.constants.get(name, graph.weights.get(name)) if name else None


def _clip_bounds(graph, node):
    lo = _value(graph, node.input[1]) if len(node.input) > 1 else None
    hi = _value(graph, node.input[2]) if len(node.input) > 2 else None
    as_float = lambda v: None if v is None else float(np.asarray(v).reshape(-1)[0])  # noqa: E731
    return as_float(lo), as_float(hi)


def _kind_and_op(graph, node):
    if node.op_type == "Clip":
        lo, hi = _clip_bounds(graph, node)
        if lo == 0.0:  # a ReLU, or ReLU6 when hi = 6: the guided and deconvnet rules apply
            return "relu", "Clip" if hi is None else f"Clip[0, {hi:g}]"
    return _KIND.get(node.op_type, "other"), node.op_type


def layer_names(graph, dtypes, dependent):
    """Ordered names of the float tensors that nodes compute from the image."""
    names = []
    for node in graph.nodes:
        for out in node.output:
            if out and out in dependent and dtypes.get(out, FLOAT) == FLOAT and out not in graph.weights:
                names.append(out)
    return names


def _batch_first(dims) -> bool:
    """A tensor whose batch axis is axis 0 (or whose shape is unknown). Attention's stacked
    q, k, v (3, N, ...) is not one: an image's values are not its first index, so it is no layer."""
    return dims is None or not dims or None not in dims[1:]


def layer_records(graph, names, shapes, dependent):
    """Layer records in execution order for the shapes of one input size."""
    wanted = set(names)
    states = track_layouts(graph, dependent, shapes)
    folder = Folder(graph, dependent, shapes)
    sources = {graph.image: (INPUT,)}  # what a consumer of each dependent tensor names as its inputs
    records = []
    for node in graph.nodes:
        outs = [o for o in node.output if o in dependent]
        if not outs:
            continue
        inputs = tuple(dict.fromkeys(s for i in node.input if i in sources for s in sources[i]))
        layers = [o for o in outs if o in wanted and _batch_first(shapes.get(o))]
        for out in outs:
            state = states.get(out, ("other", None))
            see_through = out not in layers or (state[0] == "other" and state[1] is not None and node.op_type in VIEW_OPS)
            sources[out] = inputs if see_through else (out,)
        if not layers:
            continue
        kind, op = _kind_and_op(graph, node)
        first = next((i for i in node.input if i in states), None)
        in_dims = shapes.get(first) if first else None
        for out in layers:
            dims = shapes.get(out)
            shape = tuple(dims[1:]) if dims is not None and dims and None not in dims[1:] else None
            layout = states.get(out, ("other", None))[0]
            layout = layout if layout in ("chw", "hwc", "tokens", "vector") else "other"
            geometry = {}
            if out == node.output[0]:
                own_kind, geometry = node_geometry(node, folder, states.get(first), in_dims, dims)
                kind = own_kind or kind
            records.append(Layer(name=out, kind=kind, shape=shape, inputs=inputs, op=op, layout=layout, **geometry))
    return records


def layer_weights(graph, node):
    """Constant inputs of ``node`` as arrays named like torch parameters ('weight', 'bias', ...).

    A fully connected weight is returned as (out, in), as torch.nn.Linear holds it."""
    names = _PARAMETER_NAMES.get(node.op_type, ())
    found = {}
    for i, tensor in enumerate(node.input):
        value = _value(graph, tensor)
        if value is None:
            continue
        key = names[i] if i < len(names) else f"input{i}"
        found[key] = np.array(value, dtype=np.float32 if value.dtype.kind == "f" else value.dtype)
    w = found.get("weight")
    if w is not None and w.ndim == 2 and (node.op_type == "MatMul" or
                                         (node.op_type == "Gemm" and not int(attr(node, "transB", 0)))):
        found["weight"] = np.ascontiguousarray(w.T)
    return found
