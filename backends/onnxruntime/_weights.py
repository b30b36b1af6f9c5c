"""A ModelProto with some initializers replaced, for :meth:`OnnxBackend.with_weights`.

The backend's graph is weight-free (its weights are kept apart, external data already read);
the copy gets every initializer back, with the replaced ones swapped in. An initializer that
several nodes read (exporters share identical constants) is not changed for the others: the
replaced node reads a new initializer of its own. Weights given in torch's layout by
:func:`._layers.layer_weights` (a MatMul or Gemm weight as (out, in)) are laid out back, and
stored at the initializer's own dtype. A weight that a node computes (a DequantizeLinear of
quantised values, a fused Mul) is no initializer: such a layer is refused, named.
"""
from __future__ import annotations

import numpy as np

from convscope._validate import param_error

from ._layers import _PARAMETER_NAMES, _value, layer_weights
from .adjoint._emit import attr

__all__ = ["replaceable_weights", "model_with_weights"]


def _input_index(node, key):
    names = _PARAMETER_NAMES.get(node.op_type, ())
    if key in names:
        return names.index(key)
    return int(key[len("input"):])  # layer_weights names the other constant inputs input{i}


def _transposed(node, value):
    """True where layer_weights hands the weight out transposed (MatMul, Gemm without transB)."""
    return value.ndim == 2 and (node.op_type == "MatMul" or (node.op_type == "Gemm" and not int(attr(node, "transB", 0))))


def replaceable_weights(graph, layer):
    """layer_weights(layer), after checking that none of its parameter inputs is computed."""
    node = graph.nodes[graph.producer[layer]]
    for i, key in enumerate(_PARAMETER_NAMES.get(node.op_type, ())):
        if i == 0 or i >= len(node.input) or not node.input[i] or _value(graph, node.input[i]) is not None:
            continue
        source = graph.producer.get(node.input[i])
        if source is not None and node.input[i] != graph.image:
            op = graph.nodes[source].op_type
            raise param_error("weights", "with_weights", "layers whose parameters are stored initializers",
                              f"{layer!r}, whose {key!r} is computed by a {op} node (fused or quantised "
                              "weights cannot be replaced)")
    return layer_weights(graph, node)


def model_with_weights(graph, weights, onnx):
    """A full ModelProto (initializers inline) of ``graph`` with ``weights`` ``{layer: {key: array}}``."""
    from onnx import numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(graph.proto)
    nodes = proto.graph.node
    readers = {}
    for node in nodes:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    inline = {t.name: t for t in proto.graph.initializer}
    stored = dict(graph.weights)
    fresh = 0
    for layer, params in weights.items():
        node = nodes[graph.producer[layer]]
        for key, value in params.items():
            i = _input_index(node, key)
            tensor = node.input[i]
            old = np.asarray(_value(graph, tensor))
            value = np.asarray(value)
            if _transposed(node, old):
                value = value.T
            value = np.ascontiguousarray(value.astype(old.dtype, copy=False))
            if readers.get(tensor, 0) == 1 and (tensor in stored or tensor in inline):
                target = tensor
            else:  # shared with other nodes, or a Constant node's output: a new initializer for this node
                fresh += 1
                target = f"{tensor}__with_weights_{fresh}"
                while target in readers or target in stored or target in inline:
                    fresh += 1
                    target = f"{tensor}__with_weights_{fresh}"
                node.input[i] = target
            if target in inline:
                inline[target].CopyFrom(numpy_helper.from_array(value, target))
            else:
                stored[target] = value
    proto.graph.initializer.extend(numpy_helper.from_array(np.asarray(a), name) for name, a in stored.items())
    return proto
