"""Reverse-mode (adjoint) graphs: the nodes that compute vector-Jacobian products.

For seeds s_t placed at tensors t and a tensor w to differentiate, the adjoint of every
tensor v is  a(v) = sum over consumers n of v of J_n(v)^T a(outputs of n)  (+ s_v if v is
seeded), accumulated by walking the forward nodes in reverse. Only *active* nodes get a
rule: those on a path from some ``wrt`` tensor to some seed (activity analysis), so shape
arithmetic, the part of the graph before an inner ``wrt`` layer and whatever lies after
the seeds are never differentiated. An active operator without a rule is reported here,
before anything runs.

The plan keeps the forward and backward nodes apart, so that one ONNX Runtime session can
run both (fixed seeds: one run), or a forward session can hand its residuals (the forward
tensors the backward nodes read) to a backward session after seeds were computed in NumPy.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from . import (rules_activation, rules_math, rules_norm, rules_pointwise, rules_pool, rules_reduce,  # noqa: F401
               rules_resize, rules_shape, rules_spatial)  # (they fill the rule table)
from ._emit import DIFFERENTIABLE, RULES, Emitter, UnsupportedOperatorError, describe_node
from .._shapes import FLOAT

__all__ = ["AdjointPlan", "build_adjoint", "supported_operators"]

_FLOATS = (FLOAT, 10, 11, 16)  # float, float16, double, bfloat16


@dataclass
class AdjointPlan:
    """Forward nodes (some patched, e.g. MaxPool with indices), backward nodes, constants,
    the seed inputs ``{tensor: input name}`` and gradient outputs ``{tensor: output name}``."""

    forward: list
    backward: list
    initializers: list
    seed_inputs: dict
    grad_outputs: dict
    dtypes: dict = field(default_factory=dict)
    residuals: list = field(default_factory=list)
    #: graph inputs besides the image and the seeds, fed batch by batch like the image: {name: role}
    #: (DeepLift's ``"baseline"``)
    inputs: dict = field(default_factory=dict)


def supported_operators():
    """Operator types with a gradient rule."""
    return sorted(RULES)


def _inputs_through(node):
    slots = DIFFERENTIABLE.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if slots is None:
        return [i for i in node.input if i]
    return [node.input[i] for i in slots if i < len(node.input) and node.input[i]]


def _activity(nodes, seeds, wrt, dtypes):
    """Tensors that depend on a wrt tensor (varied) and tensors some seed depends on (useful)."""
    varied = set(wrt)
    for node in nodes:
        if any(i in varied for i in _inputs_through(node)):
            varied.update(o for o in node.output if o and dtypes.get(o, FLOAT) in _FLOATS)
    useful = set(seeds)
    for node in reversed(nodes):
        if any(o in useful for o in node.output):
            useful.update(_inputs_through(node))
    active = [n for n in nodes if any(o in varied and o in useful for o in n.output)
              and any(i in varied for i in _inputs_through(n))]
    return varied, active


def _check_rules(active):
    """Every active node without a rule, named in one error (node by node, the first 10)."""
    missing = [n for n in active if n.domain not in ("", "ai.onnx") or n.op_type not in RULES]
    if missing:
        kinds = sorted({n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in missing})
        listed = "; ".join(describe_node(n) for n in missing[:10]) + ("; ..." if len(missing) > 10 else "")
        raise UnsupportedOperatorError(
            f"No gradient rule for {len(missing)} operator(s) on the gradient path ({', '.join(kinds)}): {listed}. "
            "Gradient methods cannot run on this model; forward, activations and the gradient-free methods "
            "(occlusion, Score-CAM, activation maps, top patches, dissection) still work. Operators with a rule: "
            f"{', '.join(supported_operators())}.")


def _rule_table(graph, relu, seeds):
    """What differentiates a node: the rule table for a ReLU rule name, else the rule set's plan
    (LRP: :mod:`.relevance`; DeepLift: :mod:`.deeplift`)."""
    if isinstance(relu, str):
        return None
    from convscope._relevance import DeepLiftRules

    if isinstance(relu, DeepLiftRules):
        from .deeplift import DeepLiftPlan

        return DeepLiftPlan(relu, graph)
    from .relevance import RelevancePlan

    return RelevancePlan(relu, graph, seeds)


def build_adjoint(graph, shapes, dtypes, seeds, wrt, relu) -> AdjointPlan:
    """Plan the gradients of sum_t <s_t, t> over ``seeds`` (tensor names) at each ``wrt`` tensor.

    ``relu`` is a ReLU rule name, or a rule set of :mod:`convscope._relevance` (LRP, DeepLift),
    whose plan then gives every node its rule."""
    nodes = list(graph.nodes)
    varied, active = _activity(nodes, seeds, wrt, dtypes)
    special = _rule_table(graph, relu, seeds)
    if special is None:
        _check_rules(active)
    taken = {o for n in nodes for o in n.output} | {v.name for v in graph.proto.graph.input}
    taken |= set(graph.weights) | set(graph.constants)
    em = Emitter(graph, shapes, relu if special is None else "standard", varied.__contains__, taken, types=dtypes)
    if special is not None:
        special.prepare(em, active)
    contributions = defaultdict(list)
    seed_inputs = {}
    for name in seeds:
        seed_inputs[name] = em.fresh(f"seed/{name}")
        contributions[name].append(seed_inputs[name])

    def total(name):
        parts = contributions[name]
        if len(parts) > 1:
            contributions[name] = parts = [em.op("Sum", parts, stem="accumulate")]
        return parts[0]

    for node in reversed(active):
        dys = [total(o) if contributions.get(o) else None for o in node.output]
        if all(d is None for d in dys):
            continue
        dxs = RULES[node.op_type](em, node, dys) if special is None else special(em, node, dys)
        for x, dx in zip(node.input, dxs):
            if dx is not None and x in varied:
                contributions[x].append(dx)
    grads = {}
    for name in wrt:
        if name in grads:
            continue
        g = total(name) if contributions.get(name) else em.zeros_like(name)
        grads[name] = em.op("Identity", [g], stem=f"d/{name}")
    forward = [em.patches.get(id(n), n) for n in nodes + getattr(special, "extra_forward", [])]
    inputs = getattr(special, "extra_inputs", {})
    produced = {o for n in forward for o in n.output} | {graph.image} | set(inputs)
    backward_reads = {i for n in em.nodes for i in n.input}
    residuals = sorted(backward_reads & produced)
    types = {**{r: dtypes.get(r, FLOAT) for r in residuals}, **em.dtypes}
    return AdjointPlan(forward=forward, backward=em.nodes, initializers=em.initializers, seed_inputs=seed_inputs,
                       grad_outputs=grads, dtypes=types, residuals=residuals, inputs=dict(inputs))
