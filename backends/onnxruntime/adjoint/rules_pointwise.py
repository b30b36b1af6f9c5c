"""Gradient rules for pointwise, linear-algebra and shape operators (see :mod:`._emit`);
other activations are in :mod:`.rules_activation`, more arithmetic in :mod:`.rules_math`.

Every rule is the vector-Jacobian product of the operator's ONNX definition (opset >= 16):
for y = f(x) it returns dx = J_f(x)^T dy, with broadcasting undone by summation.
"""
from __future__ import annotations

import numpy as np

from ._emit import UnsupportedOperatorError, attr, describe_node, rule

__all__ = []


# --- ReLU-like units: the rule chosen by the caller applies -----------------------------------
@rule("Relu")
def _relu(em, node, dys):
    """dx = dy [x > 0], the mask read on y (y > 0 exactly where x > 0), so that ONNX Runtime
    can still fuse the Relu into the Conv before it."""
    y = node.output[0]
    return [em.relu_rule(dys[0], em.op("Greater", [y, em.const(0.0)]))]


@rule("Clip")
def _clip(em, node, dys):
    """y = min(max(x, lo), hi): dx = dy where lo < x < hi (read on y, which lets ONNX Runtime fuse
    the Clip into the Conv before it). A Clip with lo = 0 is a ReLU (ReLU6 when hi = 6) and
    follows the guided/deconvnet rule; any other Clip passes the plain gradient."""
    y, dy = node.output[0], dys[0]
    lo, lo_const = em.scalar(node.input[1] if len(node.input) > 1 else "", None)
    hi, hi_const = em.scalar(node.input[2] if len(node.input) > 2 else "", None)
    masks = []
    if lo is not None or not lo_const:
        masks.append(em.op("Greater", [y, em.const(lo) if lo_const else node.input[1]]))
    if hi is not None or not hi_const:
        masks.append(em.op("Less", [y, em.const(hi) if hi_const else node.input[2]]))
    if not masks:
        return [dy]
    inside = masks[0] if len(masks) == 1 else em.op("And", masks)
    if lo_const and lo == 0.0:
        return [em.relu_rule(dy, inside)]
    return [em.op("Where", [inside, dy, em.const(0.0)])]


@rule("Sigmoid")
def _sigmoid(em, node, dys):
    y = node.output[0]
    return [em.op("Mul", [dys[0], em.op("Mul", [y, em.op("Sub", [em.const(1.0), y])])])]


@rule("Tanh")
def _tanh(em, node, dys):
    y = node.output[0]
    return [em.op("Mul", [dys[0], em.op("Sub", [em.const(1.0), em.op("Mul", [y, y])])])]


# --- arithmetic with broadcasting ----------------------------------------------------------------
@rule("Identity", "Dropout")
def _identity(em, node, dys):
    if node.op_type == "Dropout" and len(node.input) > 2 and node.input[2]:
        training = em.value(node.input[2])
        if training is None or bool(np.asarray(training).reshape(-1)[0]):
            raise UnsupportedOperatorError(f"{describe_node(node)} may run in training mode; only inference "
                                           "Dropout (the identity) is differentiated.")
    return [dys[0]]


@rule("Neg")
def _neg(em, node, dys):
    return [em.op("Neg", [dys[0]])]


@rule("Add", "Sub", inputs=(0, 1))
def _add(em, node, dys):
    dy, y = dys[0], node.output[0]
    db = em.op("Neg", [dy]) if node.op_type == "Sub" else dy
    return [em.unbroadcast(dy, node.input[0], y, node), em.unbroadcast(db, node.input[1], y, node)]


@rule("Sum", inputs=None)
def _sum(em, node, dys):
    return [em.unbroadcast(dys[0], x, node.output[0], node) for x in node.input]


@rule("Mul", inputs=(0, 1))
def _mul(em, node, dys):
    a, b = node.input
    dy, y = dys[0], node.output[0]
    return [em.unbroadcast(em.op("Mul", [dy, b]), a, y, node) if em.varied(a) else None,
            em.unbroadcast(em.op("Mul", [dy, a]), b, y, node) if em.varied(b) else None]


@rule("Div", inputs=(0, 1))
def _div(em, node, dys):
    """y = a / b: da = dy / b, db = -dy y / b."""
    a, b = node.input
    dy, y = dys[0], node.output[0]
    da = em.unbroadcast(em.op("Div", [dy, b]), a, y, node) if em.varied(a) else None
    db = None
    if em.varied(b):
        db = em.unbroadcast(em.op("Neg", [em.op("Mul", [dy, em.op("Div", [y, b])])]), b, y, node)
    return [da, db]


# --- softmax -------------------------------------------------------------------------------------
@rule("Softmax")
def _softmax(em, node, dys):
    """dx = y (dy - sum(dy y, axis))."""
    y, dy = node.output[0], dys[0]
    axes = em.ints([attr(node, "axis", -1)])
    inner = em.op("ReduceSum", [em.op("Mul", [dy, y]), axes], keepdims=1)
    return [em.op("Mul", [y, em.op("Sub", [dy, inner])])]


@rule("LogSoftmax")
def _log_softmax(em, node, dys):
    """dx = dy - exp(y) sum(dy, axis)."""
    y, dy = node.output[0], dys[0]
    total = em.op("ReduceSum", [dy, em.ints([attr(node, "axis", -1)])], keepdims=1)
    return [em.op("Sub", [dy, em.op("Mul", [em.op("Exp", [y]), total])])]


# --- linear algebra ------------------------------------------------------------------------------
@rule("Gemm", inputs=(0, 1, 2))
def _gemm(em, node, dys):
    """y = alpha A' B' + beta C with A' = A^T if transA: dA' = alpha dy B'^T, dB' = alpha A'^T dy.

    Written as Gemm calls on the original operands, so a weight is never transposed (copied)."""
    a, b = node.input[:2]
    c = node.input[2] if len(node.input) > 2 else ""
    dy = dys[0]
    alpha, beta = float(attr(node, "alpha", 1.0)), float(attr(node, "beta", 1.0))
    ta, tb = int(attr(node, "transA", 0)), int(attr(node, "transB", 0))
    da = db = dc = None
    if em.varied(a):  # dA = alpha dy B'^T, or its transpose alpha B' dy^T when transA
        da = (em.op("Gemm", [dy, b], alpha=alpha, transB=1 - tb) if not ta
              else em.op("Gemm", [b, dy], alpha=alpha, transA=tb, transB=1))
    if em.varied(b):  # dB' = alpha A'^T dy; dB = dB'^T = alpha dy^T A' when transB
        db = (em.op("Gemm", [a, dy], alpha=alpha, transA=1 - ta) if not tb
              else em.op("Gemm", [dy, a], alpha=alpha, transA=1, transB=ta))
    if c and em.varied(c):
        scaled = dy if beta == 1.0 else em.op("Mul", [dy, em.const(beta)])
        dc = em.unbroadcast(scaled, c, node.output[0], node)
    return [da, db, dc]


def _swap_last(rank):
    return list(range(rank - 2)) + [rank - 1, rank - 2]


@rule("MatMul", inputs=(0, 1))
def _matmul(em, node, dys):
    """y = a @ b with numpy's rules (batched, broadcast over the batch axes; a 1-d a is a row,
    a 1-d b a column, and the added axis is dropped from y): da = dy @ b^T, db = a^T @ dy,
    each summed over the batch axes along which its operand was broadcast."""
    a, b = node.input
    dy, y = dys[0], node.output[0]
    sa, sb, sy = em.shape(a, node), em.shape(b, node), em.shape(y, node)
    da = db = None
    if em.varied(a) and len(sb) == 2 and len(sa) >= 2:  # a Linear layer: no transposed copy of the weight
        flat = dy if len(sy) == 2 else em.op("Reshape", [dy, em.ints([-1, sb[1]])])
        da = em.op("Gemm", [flat, b], transB=1)
        da = da if len(sa) == 2 else em.reshape_like(da, a)
        if not em.varied(b):
            return [da, None]
    a2 = em.op("Unsqueeze", [a, em.ints([0])]) if len(sa) == 1 else a
    b2 = em.op("Unsqueeze", [b, em.ints([1])]) if len(sb) == 1 else b
    sa2, sb2 = ((1,) + tuple(sa) if len(sa) == 1 else tuple(sa)), (tuple(sb) + (1,) if len(sb) == 1 else tuple(sb))
    sy2 = list(sy) + ([1] if len(sb) == 1 else [])
    if len(sa) == 1:
        sy2.insert(len(sy2) - 1, 1)
    added = ([len(sy2) - 2] if len(sa) == 1 else []) + ([len(sy2) - 1] if len(sb) == 1 else [])
    dy2 = em.op("Unsqueeze", [dy, em.ints(added)]) if added else dy
    batch = list(sy2[:-2])
    if em.varied(a) and da is None:
        da = em.op("MatMul", [dy2, em.op("Transpose", [b2], perm=_swap_last(len(sb2)))])
        da = em.sum_to(da, batch + list(sa2[-2:]), sa2)
        da = em.op("Squeeze", [da, em.ints([0])]) if len(sa) == 1 else da
    if em.varied(b):
        db = em.op("MatMul", [em.op("Transpose", [a2], perm=_swap_last(len(sa2))), dy2])
        db = em.sum_to(db, batch + list(sb2[-2:]), sb2)
        db = em.op("Squeeze", [db, em.ints([1])]) if len(sb) == 1 else db
    return [da, db]


# --- shape and layout ----------------------------------------------------------------------------
@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def _reshape(em, node, dys):
    return [em.reshape_like(dys[0], node.input[0])]


@rule("Transpose")
def _transpose(em, node, dys):
    perm = attr(node, "perm")
    if perm is None:
        perm = list(reversed(range(len(em.shape(node.input[0], node)))))
    return [em.op("Transpose", [dys[0]], perm=[int(i) for i in np.argsort(perm)])]


@rule("Concat", inputs=None)
def _concat(em, node, dys):
    """Each input's adjoint is its slice of dy along the concatenation axis."""
    rank = len(em.shape(node.output[0], node))
    axis = int(attr(node, "axis")) % rank
    grads, start = [], 0
    for x in node.input:
        size = em.shape(x, node)[axis]
        if size is None:
            raise UnsupportedOperatorError(f"{describe_node(node)} concatenates along an axis of unknown size; "
                                           "no gradient rule for it.")
        grads.append(em.op("Slice", [dys[0], em.ints([start]), em.ints([start + size]), em.ints([axis])])
                     if em.varied(x) else None)
        start += size
    return grads
