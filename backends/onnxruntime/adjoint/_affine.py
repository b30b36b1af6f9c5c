"""The weighted layers of an ONNX graph as LRP sees them: a linear map with its bias and the
affine nodes merged into it (:mod:`.relevance`).

A layer is a Conv, ConvTranspose, Gemm, or MatMul with a constant weight, named (as on the
backend) by its output tensor. The affine nodes after it become part of it, read off the
initializers at graph-build time:

* the Add of a constant bias right after a MatMul (a Linear layer as exporters write it);
* with ``canonize``, a BatchNormalization right after the layer (or its bias), when it is that
  tensor's only consumer: W' = W gamma / sigma, b' = (b - mu) gamma / sigma + beta, with
  sigma = sqrt(var + eps) (Zennit's ``MergeBatchNorm``).

Each :class:`AffineLayer` can emit its map on a modified input with modified weights
(:meth:`AffineLayer.apply`) and the adjoint of that map (:meth:`AffineLayer.adjoint`); the
weights are float64 NumPy arrays in the operator's own layout, cast to float32 when emitted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._emit import attr
from .rules_spatial import spatial_size, transposed, window_geometry

__all__ = ["AffineLayer", "affine_layers", "WEIGHTED_OPS"]

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class AffineLayer:
    """``z = W a + b``: ``node`` the weighted node, ``x`` its input, ``out`` the tensor z (after
    the merged nodes), ``weight`` in the operator's layout (Gemm and MatMul: (out, in)),
    ``bias`` per output channel, ``merged`` the ids of the nodes folded into it."""

    node: object
    weight: np.ndarray
    bias: np.ndarray
    out: str
    merged: list = field(default_factory=list)
    _emitted: dict = field(default_factory=dict, repr=False)

    @property
    def name(self):
        return self.node.output[0]

    @property
    def x(self):
        return self.node.input[0]

    # ----------------------------------------------------------- emitting the map
    def const(self, em, array):
        """``array`` as a constant, emitted once however often a rule uses it (a VGG's dense W+ is
        hundreds of MB); the arrays are kept, so their ids stay theirs."""
        if id(array) not in self._emitted:
            self._emitted[id(array)] = (array, em.const(array))
        return self._emitted[id(array)][1]

    def apply(self, em, a, weight, bias=None):
        """``weight`` (same layout as :attr:`weight`) applied to tensor ``a``, plus ``bias`` (or none)."""
        node, op = self.node, self.node.op_type
        w = self.const(em, weight)
        if op in ("Conv", "ConvTranspose"):
            attrs = _attributes(node)
            attrs.setdefault("kernel_shape", list(weight.shape[2:]))
            inputs = [a, w] + ([em.const(bias)] if bias is not None else [])
            return em.op(op, inputs, stem=f"lrp_{op.lower()}", **attrs)
        if op == "Gemm":
            inputs = [a, w] + ([em.const(bias)] if bias is not None else [])
            return em.op("Gemm", inputs, transB=1, stem="lrp_gemm")
        z = em.op("MatMul", [a, em.const(np.ascontiguousarray(weight.T))], stem="lrp_matmul")
        return z if bias is None else em.op("Add", [z, em.const(bias)])

    def adjoint(self, em, s, weight):
        """The transpose of the map with ``weight`` applied to ``s`` (shaped like z)."""
        node, op = self.node, self.node.op_type
        if op == "Conv":
            return _conv_adjoint(em, node, s, weight)
        if op == "ConvTranspose":
            from onnx import helper

            from ._emit import RULES

            attrs = _attributes(node)
            attrs["kernel_shape"] = list(weight.shape[2:])
            fake = helper.make_node("ConvTranspose", [node.input[0], self.const(em, weight)], [node.output[0]], **attrs)
            return RULES["ConvTranspose"](em, fake, [s])[0]
        if op == "Gemm":
            return em.op("Gemm", [s, self.const(em, weight)], stem="lrp_gemm_adjoint")
        return em.op("MatMul", [s, self.const(em, weight)], stem="lrp_matmul_adjoint")


def _attributes(node):
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _conv_adjoint(em, node, s, weight):
    """ConvTranspose of ``s`` with ``weight``; with stride 1, no groups and pads within reach,
    the same as a Conv with the flipped kernel (ONNX Runtime's fast path), as in the Conv rule."""
    kernel, strides, dilations, begin, end = window_geometry(node, spatial_size(em, node.input[0], node))
    kernel = kernel or list(weight.shape[2:])
    group = int(attr(node, "group", 1))
    reach = [(k - 1) * d for k, d in zip(kernel, dilations)]
    if group == 1 and all(st == 1 for st in strides) and all(p <= r for p, r in zip(begin + end, reach + reach)):
        flipped = em.const(np.flip(weight, axis=tuple(range(2, weight.ndim))).swapaxes(0, 1))
        pads = [r - p for r, p in zip(reach, begin)] + [r - p for r, p in zip(reach, end)]
        return em.op("Conv", [s, flipped], pads=pads, dilations=dilations, stem="lrp_conv_adjoint")
    return transposed(em, s, em.const(weight), node, kernel, strides, dilations, begin, group)


def _consumers(graph):
    found = {}
    for node in graph.nodes:
        for name in node.input:
            if name:
                found.setdefault(name, []).append(node)
    return found


def _dense_weight(em, node):
    """(W (out, in) float64, b (out,) float64) of a Gemm or a constant-weight MatMul, else None."""
    if node.op_type == "MatMul":
        w = em.value(node.input[1])
        if w is None or em.varied(node.input[1]) or np.asarray(w).ndim != 2:
            return None
        w = np.asarray(w, np.float64)
        return np.ascontiguousarray(w.T), np.zeros(w.shape[1])
    if int(attr(node, "transA", 0)):  # not a layer: an active one is named by the relevance plan
        return None
    w = em.value(node.input[1])
    if w is None:
        return None
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    w = np.asarray(w, np.float64)
    w = alpha * (w if int(attr(node, "transB", 0)) else w.T)
    bias = np.zeros(w.shape[0])
    if len(node.input) > 2 and node.input[2]:
        c = em.value(node.input[2])
        if c is None:
            return None
        bias = beta * np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (w.shape[0],))
    return w, bias


def _spatial_weight(em, node):
    w = em.value(node.input[1])
    if w is None:
        return None
    w = np.asarray(w, np.float64)
    out = w.shape[0] if node.op_type == "Conv" else w.shape[1] * int(attr(node, "group", 1))
    bias = np.zeros(out)
    if len(node.input) > 2 and node.input[2]:
        b = em.value(node.input[2])
        if b is None:
            return None
        bias = np.asarray(b, np.float64).reshape(-1)
    return w, bias


def _bias_add(em, node, layer, channels):
    """The constant of an Add that adds a bias of ``channels`` to a dense layer's output, else None."""
    if node.op_type != "Add" or len(node.input) != 2:
        return None
    other = node.input[1] if node.input[0] == layer else node.input[0]
    if other == layer or em.varied(other):
        return None
    value = em.value(other)
    if value is None:
        return None
    value = np.asarray(value, np.float64)
    if value.size != channels or (value.ndim and value.shape[-1] != channels):
        return None
    return value.reshape(-1)


def _batch_norm(em, node, channels):
    """(scale, shift) of an inference BatchNormalization with constant parameters, else None."""
    if node.op_type != "BatchNormalization" or int(attr(node, "training_mode", 0)):
        return None
    values = [em.value(name) for name in node.input[1:5]]
    if any(v is None for v in values):
        return None
    gamma, beta, mean, var = (np.asarray(v, np.float64).reshape(-1) for v in values)
    if gamma.size != channels:
        return None
    scale = gamma / np.sqrt(var + float(attr(node, "epsilon", 1e-5)))
    return scale, beta - mean * scale


def _scale_outputs(node, weight, scale):
    """``weight`` with each output channel multiplied by ``scale``."""
    if node.op_type == "Conv" or node.op_type in ("Gemm", "MatMul"):
        return weight * scale.reshape(-1, *[1] * (weight.ndim - 1))
    return weight * scale.reshape(1, -1, *[1] * (weight.ndim - 2))  # ConvTranspose, group 1


def affine_layers(em, graph, canonize, keep=()) -> dict:
    """``{id(weighted node): AffineLayer}`` and the merged nodes, for every weighted node whose
    weight is constant. Tensors in ``keep`` (seeded ones) are never merged away."""
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.proto.graph.output}
    layers = {}
    for node in graph.nodes:
        if node.op_type not in WEIGHTED_OPS or node.domain not in ("", "ai.onnx"):
            continue
        found = _dense_weight(em, node) if node.op_type in ("Gemm", "MatMul") else _spatial_weight(em, node)
        if found is None:
            continue
        weight, bias = found
        layer = AffineLayer(node=node, weight=weight, bias=bias, out=node.output[0])

        def sole_consumer(tensor):
            users = consumers.get(tensor, [])
            if len(users) != 1 or tensor in outputs or tensor in keep:
                return None
            return users[0]

        nxt = sole_consumer(layer.out)
        if node.op_type == "MatMul" and nxt is not None:
            b = _bias_add(em, nxt, layer.out, weight.shape[0])
            if b is not None:
                layer.bias = layer.bias + b
                layer.out, layer.merged = nxt.output[0], [id(nxt)]
                nxt = sole_consumer(layer.out)
        grouped = node.op_type == "ConvTranspose" and int(attr(node, "group", 1)) != 1
        if canonize and nxt is not None and not grouped and nxt.input[0] == layer.out:
            affine = _batch_norm(em, nxt, layer.bias.size)
            if affine is not None:
                scale, shift = affine
                layer.weight = _scale_outputs(node, layer.weight, scale)
                layer.bias = layer.bias * scale + shift
                layer.out = nxt.output[0]
                layer.merged.append(id(nxt))
        layers[id(node)] = layer
    return layers
