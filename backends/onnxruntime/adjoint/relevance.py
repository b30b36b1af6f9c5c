"""Layer-wise relevance propagation as rules of the adjoint graph (Bach et al. 2015; the rules
of Montavon et al. 2019, named and defined as in Zennit).

With a :class:`~convscope._relevance.RelevanceRules`, :func:`~.build_adjoint` walks the same
active nodes as for a gradient, but the tensors it carries backward are relevance, and each
node gets the rule of :mod:`convscope._relevance` (whose docstring is the semantics):

* a weighted layer (:mod:`._affine`: Conv, ConvTranspose, Gemm, constant-weight MatMul, with a
  bias Add and, when canonizing, a BatchNorm merged in) gets its rule from the rule set by its
  layer name: ``R_in = a' * (W'^T (R / z'))`` with the modified input, weights and divisor;
* a BatchNormalization not merged: the epsilon rule of its own affine map, epsilon = ``sum_stabilizer``;
* average pools, GlobalAveragePool, ReduceMean and ReduceSum: Zennit's Norm, ``R_in = x *
  adjoint(R / stab(y))`` with ``sum_stabilizer``; MaxPool and GlobalMaxPool: winner takes all;
* Add, Sub and Sum of two or more data-path tensors: ``R_i = x_i R / stab(sum_j x_j)``;
* elementwise activations, Dropout, Identity, casts, and elementwise ops whose other operands
  are constants: relevance passes (Zennit's Pass);
* Concat, Split, Slice, reshapes, Transpose, Pad, Resize, Expand, Gather: the plain adjoint;
* anything else raises ``ValueError`` naming the node, its layer and its operator.

``stab(z, e) = z + e sign(z)`` with sign(0) = +1 (Zennit's ``stabilize``); with e = 0 (LRP-0)
a zero divisor gives zero relevance.
"""
from __future__ import annotations

import numpy as np

from ._affine import WEIGHTED_OPS, affine_layers
from ._emit import RULES, UnsupportedOperatorError, describe_node

__all__ = ["RelevancePlan", "PASS_OPS", "ROUTE_OPS", "NORM_OPS"]

#: elementwise operators that pass relevance unchanged (with at most one data-path operand)
PASS_OPS = frozenset((
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Mish", "Erf", "ThresholdedRelu", "Clip", "Identity", "Dropout", "Cast", "CastLike",
    "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Sqrt", "Exp", "Log", "Reciprocal", "Pow"))
#: operators whose plain adjoint routes relevance
ROUTE_OPS = frozenset(("Concat", "Split", "Slice", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Pad",
                       "Resize", "Expand", "Gather", "Tile", "DepthToSpace", "SpaceToDepth"))
#: linear poolings under Zennit's Norm rule
NORM_OPS = frozenset(("AveragePool", "GlobalAveragePool", "ReduceMean", "ReduceSum"))
_MAX_OPS = frozenset(("MaxPool", "GlobalMaxPool"))
_SUM_OPS = frozenset(("Add", "Sub", "Sum"))


def _stabilized(em, z, e):
    """z + e sign(z), sign(0) = +1."""
    if e == 0:
        return z
    return em.op("Where", [em.op("GreaterOrEqual", [z, em.const(0.0)]), em.op("Add", [z, em.const(e)]),
                           em.op("Sub", [z, em.const(e)])], stem="stabilize")


def _ratio(em, r, z, e):
    """R / stab(z, e); 0 where the divisor is exactly 0 (only possible for e = 0)."""
    if e != 0:
        return em.op("Div", [r, _stabilized(em, z, e)], stem="lrp_ratio")
    zero = em.op("Equal", [z, em.const(0.0)])
    safe = em.op("Where", [zero, em.const(1.0), z])
    return em.op("Where", [zero, em.const(0.0), em.op("Div", [r, safe])], stem="lrp_ratio")


class RelevancePlan:
    """The relevance rule of each node for one rule set (made per :func:`~.build_adjoint` call)."""

    def __init__(self, rules, graph, seeds):
        self.rules, self.graph, self.seeds = rules, graph, set(seeds)
        self.layers, self.merged = None, set()

    def prepare(self, em, active):
        """Find the weighted layers and check that every active node has a rule (first error raised)."""
        self.layers = affine_layers(em, self.graph, self.rules.canonize, keep=self.seeds)
        for layer in self.layers.values():
            self.merged.update(layer.merged)
        for node in active:
            self._check(em, node)

    # ------------------------------------------------------------ what a node is
    def _data_inputs(self, em, node):
        return [x for x in node.input if x and em.varied(x)]

    def _check(self, em, node):
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if id(node) in self.merged or id(node) in self.layers:
            if id(node) in self.layers and self.rules.rule_for(node.output[0]) is None:
                raise ValueError(f"The LRP rule set gives layer {node.output[0]!r} ({op}) no rule and has no default; "
                                 "give it a rule or set a default.")
            return
        data = self._data_inputs(em, node)
        if op in WEIGHTED_OPS:
            self._unsupported(node, "its weight is not a constant (or a Gemm transposes its input)")
        if op in _SUM_OPS:
            return
        if op in PASS_OPS or op == "BatchNormalization" or op in ROUTE_OPS or op in NORM_OPS or op in _MAX_OPS:
            if op in ("Mul", "Div", "Pow") and len(data) > 1:
                self._unsupported(node, "it combines two data-path tensors (a product, as in a gate)")
            return
        self._unsupported(node, "LRP has no rule for this operator")

    def _unsupported(self, node, why):
        raise UnsupportedOperatorError(
            f"LRP cannot propagate relevance through layer {node.output[0]!r}, {describe_node(node)}: {why}. "
            "Rules exist for conv, linear, pooling, BatchNorm, additions, concatenations, reshapes and elementwise "
            "activations.")

    # ------------------------------------------------------------ the rules
    def __call__(self, em, node, dys):
        r = dys[0]
        op = node.op_type
        if id(node) in self.layers:
            layer = self.layers[id(node)]
            return [self._weighted(em, layer, self.rules.rule_for(layer.name), r)] + [None] * (len(node.input) - 1)
        if id(node) in self.merged:
            return self._pass(em, node, r)
        data = self._data_inputs(em, node)
        if op in _SUM_OPS and len(data) > 1:
            return self._sum(em, node, r)
        if op == "BatchNormalization":
            return self._batch_norm(em, node, r)
        if op in NORM_OPS:
            s = _ratio(em, r, node.output[0], self.rules.sum_stabilizer)
            back = RULES[op](em, node, [s])[0]
            return [em.op("Mul", [node.input[0], back], stem="lrp_norm")] + [None] * (len(node.input) - 1)
        if op in _MAX_OPS or op in ROUTE_OPS:
            return RULES[op](em, node, dys)
        return self._pass(em, node, r)

    def _pass(self, em, node, r):
        """Relevance of the one data-path operand: R itself (summed back where it was broadcast)."""
        out = node.output[0]
        return [em.unbroadcast(r, x, out, node) if x and em.varied(x) else None for x in node.input]

    def _sum(self, em, node, r):
        """R_i = x_i R / stab(y) (Sub: the subtrahend's share is -x_i R / stab(y))."""
        s = _ratio(em, r, node.output[0], self.rules.sum_stabilizer)
        parts = []
        for i, x in enumerate(node.input):
            if not (x and em.varied(x)):
                parts.append(None)
                continue
            share = em.op("Mul", [x, s], stem="lrp_sum")
            if node.op_type == "Sub" and i == 1:
                share = em.op("Neg", [share])
            parts.append(em.unbroadcast(share, x, node.output[0], node))
        return parts

    def _batch_norm(self, em, node, r):
        """y = scale x + shift: R_in = x scale R / stab(y, sum_stabilizer), the epsilon rule of that map
        (as the torch backend's, with the stabilizer of pools and sums)."""
        dx = RULES["BatchNormalization"](em, node, [_ratio(em, r, node.output[0], self.rules.sum_stabilizer)])[0]
        return [em.op("Mul", [node.input[0], dx], stem="lrp_bn")] + [None] * (len(node.input) - 1)

    def _weighted(self, em, layer, rule, r):
        """The rule's R_in for a weighted layer (formulas: :mod:`convscope._relevance`)."""
        a, w = layer.x, layer.weight
        b = np.zeros_like(layer.bias) if rule.zero_bias else layer.bias
        name, stab = rule.name, rule.stabilizer
        mul = lambda p, q: em.op("Mul", [p, q])  # noqa: E731
        if name in ("epsilon", "zero"):
            eps = 0.0 if name == "zero" else rule.epsilon
            z = layer.out if not rule.zero_bias else layer.apply(em, a, w)
            return mul(a, layer.adjoint(em, _ratio(em, r, z, eps), w))
        if name == "gamma":
            wg, bg = w + rule.gamma * np.maximum(w, 0), b + rule.gamma * np.maximum(b, 0)
            s = _ratio(em, r, layer.apply(em, a, wg, bg), stab)
            return mul(a, layer.adjoint(em, s, wg))
        if name in ("alphabeta", "zplus"):
            alpha, beta = (1.0, 0.0) if name == "zplus" else (rule.alpha, rule.beta)
            return self._alpha_beta(em, layer, r, w, b, alpha, beta, stab)
        if name in ("wsquare", "flat"):
            wm = w * w if name == "wsquare" else np.ones_like(w)
            ones = em.op("ConstantOfShape", [em.op("Shape", [a])], value=_float_tensor(1.0))
            s = _ratio(em, r, layer.apply(em, ones, wm), stab)  # no bias: the formula of convscope._relevance
            return layer.adjoint(em, s, wm)
        if name == "zbox":
            wp, wn = np.maximum(w, 0), np.minimum(w, 0)
            low, high = _filled(em, a, rule.low), _filled(em, a, rule.high)
            z = em.op("Sub", [em.op("Sub", [layer.apply(em, a, w), layer.apply(em, low, wp)]),
                              layer.apply(em, high, wn)])
            s = _ratio(em, r, z, stab)
            total = em.op("Sub", [mul(a, layer.adjoint(em, s, w)), mul(low, layer.adjoint(em, s, wp))])
            return em.op("Sub", [total, mul(high, layer.adjoint(em, s, wn))])
        raise ValueError(f"Unknown LRP rule {name!r} for layer {layer.name!r}.")

    def _nonnegative(self, name, depth=0):
        """Whether tensor ``name`` is >= 0 by construction: a ReLU's (or a Clip from 0's, a sigmoid's)
        output, possibly through max or average pools, reshapes, slices and concatenations of such."""
        graph = self.graph
        index = graph.producer.get(name)
        if index is None or depth > 32:
            return False
        node = graph.nodes[index]
        op = node.op_type
        if op in ("Relu", "Sigmoid", "HardSigmoid", "Softplus"):
            return True
        if op == "Clip" and len(node.input) > 1 and node.input[1] in graph.constants:
            return float(np.asarray(graph.constants[node.input[1]]).reshape(-1)[0]) >= 0
        if op in ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten", "Reshape", "Squeeze",
                  "Unsqueeze", "Transpose", "Identity", "Dropout", "Slice", "Concat", "Split", "Pad", "Resize"):
            data = [i for i in node.input[:1 if op != "Concat" else None] if i]
            if op == "Pad" and len(node.input) > 2 and node.input[2]:
                return False  # a constant value that may be negative
            return bool(data) and all(self._nonnegative(i, depth + 1) for i in data)
        return False

    def _alpha_beta(self, em, layer, r, w, b, alpha, beta, stab):
        """alpha [a+ W+ and a- W- part] - beta [a+ W- and a- W+ part], each over its own z'."""
        a = layer.x
        signed = not self._nonnegative(a)  # after a ReLU the a- terms vanish: not emitted
        pos = em.op("Relu", [a]) if signed else a
        neg = em.op("Sub", [a, pos]) if signed else None
        wp, wn = np.maximum(w, 0), np.minimum(w, 0)

        def part(w1, w2, bias):
            z = layer.apply(em, pos, w1, bias)
            if signed:
                z = em.op("Add", [z, layer.apply(em, neg, w2)])
            s = _ratio(em, r, z, stab)
            out = em.op("Mul", [pos, layer.adjoint(em, s, w1)])
            return em.op("Add", [out, em.op("Mul", [neg, layer.adjoint(em, s, w2)])]) if signed else out

        out = part(wp, wn, np.maximum(b, 0))
        if alpha != 1.0:
            out = em.op("Mul", [out, em.const(alpha)])
        if beta != 0.0:
            out = em.op("Sub", [out, em.op("Mul", [part(wn, wp, np.minimum(b, 0)), em.const(beta)])])
        return out


def _filled(em, a, value):
    """A tensor shaped like ``a`` holding ``value``: a number, or one per channel (axis 1)."""
    value = np.asarray(value, np.float64)
    if value.ndim == 0:
        return em.op("ConstantOfShape", [em.op("Shape", [a])], value=_float_tensor(float(value)))
    rank = len(em.shape(a))
    return em.op("Expand", [em.const(value.reshape(1, -1, *[1] * (rank - 2))), em.op("Shape", [a])], stem="bounds")


def _float_tensor(value):
    from onnx import helper

    return helper.make_tensor("value", 1, [1], [float(value)])
