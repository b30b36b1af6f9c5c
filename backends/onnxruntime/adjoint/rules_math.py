"""Gradient rules for elementwise arithmetic beyond + - * / (see :mod:`._emit`): powers,
exponentials, selections, casts, and the piecewise-constant operators whose gradient is 0.

Broadcasting is undone by summation, as in :mod:`.rules_pointwise`.
"""
from __future__ import annotations

import math

import numpy as np

from ._emit import FLOAT_TYPES, rule

__all__ = []


def _float_of(em, name):
    """``name`` as float32 (Pow's exponent may be an integer tensor)."""
    kind = em.types.get(name, 1)
    return name if kind == 1 else em.op("Cast", [name], to=1)


@rule("Exp")
def _exp(em, node, dys):
    return [em.op("Mul", [dys[0], node.output[0]])]


@rule("Log")
def _log(em, node, dys):
    return [em.op("Div", [dys[0], node.input[0]])]


@rule("Sqrt")
def _sqrt(em, node, dys):
    """y = sqrt(x): dx = dy / (2 y)."""
    return [em.op("Div", [em.op("Mul", [dys[0], em.const(0.5)]), node.output[0]])]


@rule("Reciprocal")
def _reciprocal(em, node, dys):
    """y = 1 / x: dx = -dy y^2."""
    y = node.output[0]
    return [em.op("Neg", [em.op("Mul", [dys[0], em.op("Mul", [y, y])])])]


@rule("Abs")
def _abs(em, node, dys):
    """dx = dy sign(x) (0 at x = 0)."""
    return [em.op("Mul", [dys[0], em.op("Sign", [node.input[0]])])]


@rule("Erf")
def _erf(em, node, dys):
    """dx = dy 2 / sqrt(pi) exp(-x^2)."""
    x = node.input[0]
    density = em.op("Exp", [em.op("Neg", [em.op("Mul", [x, x])])])
    return [em.op("Mul", [dys[0], em.op("Mul", [density, em.const(2.0 / math.sqrt(math.pi))])])]


@rule("Sin")
def _sin(em, node, dys):
    return [em.op("Mul", [dys[0], em.op("Cos", [node.input[0]])])]


@rule("Cos")
def _cos(em, node, dys):
    return [em.op("Neg", [em.op("Mul", [dys[0], em.op("Sin", [node.input[0]])])])]


@rule("Pow", inputs=(0, 1))
def _pow(em, node, dys):
    """y = a^b: da = dy b a^(b - 1) (a constant b written out), db = dy y log(a) where a > 0
    (0 elsewhere, where the real power has no derivative in b)."""
    a, b = node.input
    dy, y = dys[0], node.output[0]
    da = db = None
    if em.varied(a):
        exponent = em.value(b)
        if exponent is not None and np.asarray(exponent).size == 1:
            c = float(np.asarray(exponent).reshape(-1)[0])
            if c == 1.0:
                local = None
            elif c == 2.0:
                local = em.op("Mul", [a, em.const(2.0)])
            else:
                local = em.op("Mul", [em.op("Pow", [a, em.const(c - 1.0)]), em.const(c)])
        else:
            bf = _float_of(em, b)
            local = em.op("Mul", [em.op("Pow", [a, em.op("Sub", [bf, em.const(1.0)])]), bf])
        da = em.unbroadcast(dy if local is None else em.op("Mul", [dy, local]), a, y, node)
    if em.varied(b):
        positive = em.op("Greater", [a, em.const(0.0)])
        safe = em.op("Where", [positive, a, em.const(1.0)])
        db = em.unbroadcast(em.op("Mul", [em.op("Mul", [dy, y]), em.op("Log", [safe])]), b, y, node)
    return [da, db]


@rule("Max", "Min", inputs=None)
def _max_min(em, node, dys):
    """y = max (min) of the inputs, broadcast: each input equal to y receives dy, shared equally
    among tied inputs (as torch.maximum does for two)."""
    y, dy = node.output[0], dys[0]
    masks = {x: em.op("Cast", [em.op("Equal", [x, y])], to=1) for x in node.input if em.varied(x)}
    if len(node.input) > 1:
        every = [masks.get(x) or em.op("Cast", [em.op("Equal", [x, y])], to=1) for x in node.input]
        dy = em.op("Div", [dy, em.op("Sum", every) if len(every) > 1 else every[0]])
    return [em.unbroadcast(em.op("Mul", [dy, masks[x]]), x, y, node) if x in masks else None for x in node.input]


@rule("Mean", inputs=None)
def _mean(em, node, dys):
    """y = (x_1 + ... + x_n) / n (broadcast): dx_i = dy / n, summed back to x_i's shape."""
    dy = em.op("Mul", [dys[0], em.const(1.0 / len(node.input))])
    return [em.unbroadcast(dy, x, node.output[0], node) if em.varied(x) else None for x in node.input]


@rule("Where", inputs=(1, 2))
def _where(em, node, dys):
    """y = where(c, a, b): da = dy where c (0 elsewhere), db = dy where not c, each summed back."""
    c, a, b = node.input
    dy, y = dys[0], node.output[0]
    zero = em.const(0.0)
    da = em.unbroadcast(em.op("Where", [c, dy, zero]), a, y, node) if em.varied(a) else None
    db = em.unbroadcast(em.op("Where", [c, zero, dy]), b, y, node) if em.varied(b) else None
    return [None, da, db]


@rule("Cast", "CastLike")
def _cast(em, node, dys):
    """Between float types the gradient passes, cast back to the input's type; a cast to an
    integer or bool type carries no adjoint (its output is never differentiated)."""
    kind = em.types.get(node.input[0], 1)
    if kind not in FLOAT_TYPES or em.types.get(node.output[0], 1) not in FLOAT_TYPES:
        return [None]
    return [dys[0] if em.types.get(node.output[0], 1) == kind else em.op("Cast", [dys[0]], to=int(kind))]


@rule("Floor", "Ceil", "Round", "Sign")
def _piecewise_constant(em, node, dys):
    """A step function: its gradient is 0 wherever it exists."""
    return [None]
