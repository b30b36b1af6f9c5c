"""Gradient rules for reductions (see :mod:`._emit`).

The axes come from the ``axes`` input (ReduceSum from opset 13, the others from opset 18)
or the ``axes`` attribute (before that), and must be constant. No axes means every axis,
or the identity when ``noop_with_empty_axes`` is set. With ``keepdims=0`` dy first gets
the reduced axes back (Unsqueeze); it is then spread over the reduced elements.
"""
from __future__ import annotations

import numpy as np

from ._emit import rule

__all__ = ["reduced_axes"]

_REDUCTIONS = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare",
               "ReduceLogSumExp")


def reduced_axes(em, node, rank):
    """The reduced axes (sorted, non-negative), or None for the identity (noop_with_empty_axes)."""
    from ._emit import attr

    if len(node.input) > 1 and node.input[1]:
        axes = [int(a) for a in em.constant(node.input[1], node, "axes").reshape(-1)]
    else:
        axes = [int(a) for a in (attr(node, "axes") or [])]
    if not axes:
        return None if int(attr(node, "noop_with_empty_axes", 0)) else list(range(rank))
    return sorted({a % rank for a in axes})


@rule(*_REDUCTIONS)
def _reduce(em, node, dys):
    """Sum: dx = dy; Mean: dy / count; Max, Min: dy shared equally among the elements equal to
    the extreme (as torch.amax does); L1: dy sign(x); L2: dy x / y (0 where y = 0); SumSquare:
    2 dy x; LogSumExp: dy exp(x - y). Each with dy broadcast back over the reduced axes."""
    from ._emit import attr

    x, y, dy = node.input[0], node.output[0], dys[0]
    shape = em.shape(x, node)
    axes = reduced_axes(em, node, len(shape))
    if axes is None:
        return [dy]
    if not int(attr(node, "keepdims", 1)):
        dy = em.op("Unsqueeze", [dy, em.ints(axes)])
        y = em.op("Unsqueeze", [y, em.ints(axes)])
    op = node.op_type
    if op == "ReduceSum":
        return [em.op("Expand", [dy, em.op("Shape", [x])])]
    if op == "ReduceMean":
        sizes = [shape[a] for a in axes]
        if None in sizes:
            total = em.op("Cast", [em.op("Size", [x])], to=1)
            scaled = em.op("Div", [em.op("Mul", [dy, em.op("Cast", [em.op("Size", [dy])], to=1)]), total])
        else:
            scaled = em.op("Mul", [dy, em.const(1.0 / float(np.prod(sizes)))])
        return [em.op("Expand", [scaled, em.op("Shape", [x])])]
    if op in ("ReduceMax", "ReduceMin"):
        hits = em.op("Cast", [em.op("Equal", [x, y])], to=1)
        share = em.op("Div", [dy, em.reduce_sum(hits, axes)])
        return [em.op("Mul", [hits, share])]
    if op == "ReduceL1":
        return [em.op("Mul", [em.op("Sign", [x]), dy])]
    if op == "ReduceL2":
        positive = em.op("Greater", [y, em.const(0.0)])
        ratio = em.op("Where", [positive, em.op("Div", [dy, em.op("Where", [positive, y, em.const(1.0)])]),
                                em.const(0.0)])
        return [em.op("Mul", [x, ratio])]
    if op == "ReduceSumSquare":
        return [em.op("Mul", [x, em.op("Mul", [dy, em.const(2.0)])])]
    return [em.op("Mul", [em.op("Exp", [em.op("Sub", [x, y])]), dy])]  # ReduceLogSumExp
