"""DeepLift's rescale rule as rules of the adjoint graph (Shrikumar et al. 2017, as Captum's
``DeepLift``).

With a :class:`~convscope._relevance.DeepLiftRules` the plan also holds a copy of the forward
graph that runs on the reference input :data:`BASELINE` (a second graph input, fed with the
rule set's ``baseline``), so one session run computes x's forward, the baseline's, and the
multipliers. The adjoint of each node is then

* an elementwise nonlinearity y = f(u) (ReLU and its kin, sigmoid, tanh, GELU, ...):
  ``dy * (f(u) - f(u0)) / (u - u0)``, or its plain gradient where ``|u - u0| < eps``;
* MaxPool (Captum's rule): with the cross maximum m = max(y, y0), the routed differences
  ``unpool_x(dy (m - y0)) + unpool_x0(dy (y - m))`` (each to its own image's arg-max) divided
  by ``x - x0``, the plain gradient where ``|x - x0| < eps``;
* a linear or affine operator (conv, linear, BatchNorm, average pools, sums, elementwise ops
  with constants, routing): its gradient;
* any other operator (a product of two data-path tensors, a softmax or normalisation inside
  the model, a global max): ``ValueError`` naming the node, its layer and its operator.
"""
from __future__ import annotations

from ._affine import WEIGHTED_OPS
from ._emit import RULES, UnsupportedOperatorError, describe_node
from .relevance import NORM_OPS, ROUTE_OPS

__all__ = ["DeepLiftPlan", "BASELINE"]

BASELINE = "deeplift_baseline"
_PREFIX = "deeplift_baseline/"
#: elementwise nonlinearities of one data-path operand (the other inputs constant)
NONLINEAR_OPS = frozenset((
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Softplus",
    "Softsign", "Gelu", "Mish", "Erf", "ThresholdedRelu", "Clip", "Exp", "Log", "Sqrt", "Abs", "Reciprocal", "Pow"))
_LINEAR_OPS = frozenset(("Add", "Sub", "Sum", "Mul", "Div", "Neg", "Identity", "Dropout", "Cast", "CastLike",
                         "BatchNormalization", *WEIGHTED_OPS, *NORM_OPS, *ROUTE_OPS))
_SCALING = ("Mul", "Div")


class DeepLiftPlan:
    """The DeepLift rule of each node, and the baseline's copy of the forward graph."""

    def __init__(self, rules, graph):
        self.rules, self.graph = rules, graph
        self.extra_forward, self.extra_inputs = [], {}

    def base(self, name):
        """The baseline's counterpart of a forward tensor."""
        return self._renamed.get(name, name)

    def prepare(self, em, active):
        from onnx import helper

        from .._dataflow import dependent_tensors

        for node in active:
            self._check(em, node)
        dependent = dependent_tensors(self.graph)
        self._renamed = {t: _PREFIX + t for t in dependent}
        self._renamed[self.graph.image] = BASELINE
        em.shapes = dict(em.shapes)  # the backend's shape cache stays as it was
        for t, b in self._renamed.items():
            em._taken.add(b)
            if t in em.shapes:
                em.shapes[b] = em.shapes[t]
            if t in em.types:
                em.types[b] = em.types[t]
        for node in self.graph.nodes:
            if not any(o in dependent for o in node.output):
                continue
            clone = helper.make_node(node.op_type, [self.base(i) for i in node.input],
                                     [self.base(o) for o in node.output], domain=node.domain,
                                     name=f"{_PREFIX}{node.name}" if node.name else "")
            clone.attribute.extend(node.attribute)
            self.extra_forward.append(clone)
        self._clones = {id(n): c for n, c in zip([n for n in self.graph.nodes
                                                   if any(o in dependent for o in n.output)], self.extra_forward)}
        self.extra_inputs = {BASELINE: "baseline"}

    def _check(self, em, node):
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        data = [x for x in node.input if x and em.varied(x)]
        if op in NONLINEAR_OPS or op == "MaxPool":
            return
        if op in _LINEAR_OPS and not (op in _SCALING and len(data) > 1) and op not in ("Pow",):
            return
        why = ("it combines two data-path tensors (a product, as in a gate)" if op in _SCALING
               else "DeepLift has no rule for this operator")
        raise UnsupportedOperatorError(f"DeepLift cannot take layer {node.output[0]!r}, {describe_node(node)}: {why}. "
                                       "Rules exist for elementwise nonlinearities, max pools and linear operators.")

    # ------------------------------------------------------------ the rules
    def __call__(self, em, node, dys):
        op = node.op_type
        if op in NONLINEAR_OPS:
            return self._rescale(em, node, dys)
        if op == "MaxPool":
            return self._max_pool(em, node, dys)
        return RULES[op](em, node, dys)

    def _where_close(self, em, x, plain, ratio_of):
        """``plain`` where |x - x0| < eps, else ``ratio_of(safe difference)``."""
        delta = em.op("Sub", [x, self.base(x)], stem="deeplift_delta")
        close = em.op("Less", [em.op("Abs", [delta]), em.const(float(self.rules.eps))])
        safe = em.op("Where", [close, em.const(1.0), delta])
        return em.op("Where", [close, plain, ratio_of(safe)], stem="deeplift_multiplier")

    def _rescale(self, em, node, dys):
        u, y, dy = node.input[0], node.output[0], dys[0]
        plain = RULES[node.op_type](em, node, dys)
        difference = em.op("Mul", [dy, em.op("Sub", [y, self.base(y)])])
        dx = self._where_close(em, u, plain[0], lambda delta: em.op("Div", [difference, delta]))
        return [dx] + [None] * (len(node.input) - 1)

    def _max_pool(self, em, node, dys):
        x, y, dy = node.input[0], node.output[0], dys[0]
        y0 = self.base(y)
        cross = em.op("Max", [y, y0])
        unpool = lambda n, v: RULES["MaxPool"](em, em.patches.get(id(n), n), [v])[0]  # noqa: E731 (a patched
        # MaxPool, one that reports its arg-max, is reused as it is)
        mine = unpool(node, em.op("Mul", [dy, em.op("Sub", [cross, y0])]))
        theirs = unpool(self._clones[id(node)], em.op("Mul", [dy, em.op("Sub", [y, cross])]))
        routed = em.op("Add", [mine, theirs])
        plain = unpool(node, dy)
        return [self._where_close(em, x, plain, lambda delta: em.op("Div", [routed, delta]))]
