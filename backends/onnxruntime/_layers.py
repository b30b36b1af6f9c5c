"""Layer records and parameters of an ONNX graph: every float node output is a layer.

A layer is named by its tensor, so a model exported with named outputs (the demo's conv1,
bn1, relu1, ...) has the same layer names on the ONNX backend as on the framework it came
from. Conv and pool geometry comes from the node attributes (``auto_pad`` resolved).
"""
from __future__ import annotations

import numpy as np

from convscope.backend import Layer

from .adjoint._emit import attr
from .adjoint.rules_spatial import window_geometry
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
    "softmax": ("Softmax", "LogSoftmax"),
}
_KIND = {op: kind for kind, ops in _KINDS.items() for op in ops}
_WINDOWED = ("Conv", "MaxPool", "AveragePool", "LpPool")
_GLOBAL = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
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


def layer_names(graph, dtypes):
    """Ordered names of the float tensors that nodes produce (Constant nodes excluded)."""
    names = []
    for node in graph.nodes:
        if node.op_type == "Constant":
            continue
        for out in node.output:
            if out and dtypes.get(out, FLOAT) == FLOAT and out not in graph.weights:
                names.append(out)
    return names


def _geometry(node, in_dims, out_dims):
    spatial = in_dims[2:] if in_dims is not None and len(in_dims) == 4 else None
    if node.op_type in _GLOBAL and spatial is not None and None not in spatial:
        return dict(kernel=tuple(spatial), stride=tuple(spatial), padding=(0, 0, 0, 0), dilation=(1, 1))
    if node.op_type not in _WINDOWED or (out_dims is not None and len(out_dims) != 4):
        return {}
    kernel, strides, dilations, begin, end = window_geometry(node, list(spatial) if spatial else [None, None])
    if kernel is None or len(kernel) != 2:
        return {}
    return dict(kernel=tuple(kernel), stride=tuple(strides), padding=(begin[0], begin[1], end[0], end[1]),
                dilation=tuple(dilations))


def layer_records(graph, names, shapes):
    """Layer records in execution order for the shapes of one input size."""
    wanted = set(names)
    producer_of = {}
    records = []
    for node in graph.nodes:
        outs = [o for o in node.output if o in wanted]
        if not outs:
            continue
        kind, op = _kind_and_op(graph, node)
        if node.op_type == "Conv":
            w = _value(graph, node.input[1])
            kernel = attr(node, "kernel_shape")
            if kernel is None and w is not None:  # kernel_shape is optional: read it off the weight
                node = _with_kernel(node, list(w.shape[2:]))
        inputs = tuple(dict.fromkeys(producer_of[i] for i in node.input if i in producer_of))
        in_dims = shapes.get(node.input[0]) if node.input else None
        for out in outs:
            dims = shapes.get(out)
            shape = tuple(dims[1:]) if dims is not None and dims and None not in dims[1:] else None
            geometry = _geometry(node, in_dims, dims) if out == node.output[0] else {}
            records.append(Layer(name=out, kind=kind, shape=shape, inputs=inputs, op=op, **geometry))
            producer_of[out] = out
    return records


def _with_kernel(node, kernel):
    from onnx import NodeProto, helper

    copy = NodeProto()
    copy.CopyFrom(node)
    copy.attribute.append(helper.make_attribute("kernel_shape", kernel))
    return copy


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
