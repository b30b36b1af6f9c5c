"""Gradient rules for activation functions (see :mod:`._emit`); ReLU and Clip are in
:mod:`.rules_pointwise`.

The rectifiers (LeakyRelu, PRelu, ThresholdedRelu) follow the caller's ReLU rule through
their positive part: the unit counts as *open* where it passes x with slope 1 (x > 0, or
x > alpha for ThresholdedRelu), and

* standard: the exact gradient, dy on the open side and slope * dy on the other;
* guided: max(dy, 0) where open, 0 elsewhere: the slope on the negative side is zeroed, so a
  LeakyReLU network's guided map is what the same network with ReLUs would give;
* deconvnet: max(dy, 0) everywhere, as for a ReLU (the rectifier applied to the signal).

Smooth activations (ELU, SELU, GELU, SiLU = x sigmoid(x), HardSwish, Softplus, Mish, ...)
are not rectifiers: under the guided and deconvnet rules they pass their plain gradient.
"""
from __future__ import annotations

import math

from ._emit import UnsupportedOperatorError, attr, describe_node, rule

__all__ = []


def _rectifier(em, dy, open_mask, slope):
    """dy where open, ``slope`` (a tensor name, or None for 0) times dy elsewhere; guided and
    deconvnet use the ReLU rule on ``open_mask``."""
    if em.relu != "standard" or slope is None:
        return em.relu_rule(dy, open_mask)
    return em.op("Where", [open_mask, dy, em.op("Mul", [dy, slope])])


@rule("LeakyRelu")
def _leaky_relu(em, node, dys):
    """y = x (x > 0), alpha x otherwise: dx = dy or alpha dy (standard). Under guided and
    deconvnet the negative side is zeroed (module docstring). The mask is read on y when
    alpha > 0 (y > 0 exactly where x > 0), which lets ONNX Runtime fuse the unit into a Conv."""
    alpha = float(attr(node, "alpha", 0.01))
    read = node.output[0] if alpha > 0 else node.input[0]
    positive = em.op("Greater", [read, em.const(0.0)])
    return [_rectifier(em, dys[0], positive, em.const(alpha) if alpha != 0 else None)]


@rule("PRelu")
def _prelu(em, node, dys):
    """y = x (x > 0), slope x otherwise, ``slope`` broadcast to x: dx = dy or slope dy; only x is
    differentiated (the slope is a weight). Guided and deconvnet as for LeakyRelu: the slope
    side is zeroed."""
    x, slope = node.input[:2]
    positive = em.op("Greater", [x, em.const(0.0)])
    return [_rectifier(em, dys[0], positive, slope)]


@rule("ThresholdedRelu")
def _thresholded_relu(em, node, dys):
    """y = x where x > alpha, else 0: dx = dy [x > alpha]; a rectifier for guided and deconvnet."""
    alpha = float(attr(node, "alpha", 1.0))
    return [em.relu_rule(dys[0], em.op("Greater", [node.input[0], em.const(alpha)]))]


@rule("Elu")
def _elu(em, node, dys):
    """y = x (x > 0), alpha (e^x - 1) otherwise: dx = dy, or dy (y + alpha). Smooth: no guided rule."""
    alpha = float(attr(node, "alpha", 1.0))
    x, y = node.input[0], node.output[0]
    negative = em.op("Mul", [dys[0], em.op("Add", [y, em.const(alpha)])])
    return [em.op("Where", [em.op("Greater", [x, em.const(0.0)]), dys[0], negative])]


@rule("Selu")
def _selu(em, node, dys):
    """y = gamma x (x > 0), gamma alpha (e^x - 1) otherwise: dx = gamma dy, or dy (y + gamma alpha)."""
    alpha = float(attr(node, "alpha", 1.67326319217681884765625))
    gamma = float(attr(node, "gamma", 1.05070102214813232421875))
    x, y, dy = node.input[0], node.output[0], dys[0]
    negative = em.op("Mul", [dy, em.op("Add", [y, em.const(gamma * alpha)])])
    return [em.op("Where", [em.op("Greater", [x, em.const(0.0)]), em.op("Mul", [dy, em.const(gamma)]), negative])]


@rule("Celu")
def _celu(em, node, dys):
    """y = max(0, x) + min(0, alpha (e^(x/alpha) - 1)): dx = dy (x > 0), dy e^(x/alpha) otherwise."""
    alpha = float(attr(node, "alpha", 1.0))
    x, dy = node.input[0], dys[0]
    negative = em.op("Mul", [dy, em.op("Exp", [em.op("Mul", [x, em.const(1.0 / alpha)])])])
    return [em.op("Where", [em.op("Greater", [x, em.const(0.0)]), dy, negative])]


@rule("HardSigmoid")
def _hard_sigmoid(em, node, dys):
    """y = max(0, min(1, alpha x + beta)): dx = alpha dy where 0 < alpha x + beta < 1."""
    alpha, beta = float(attr(node, "alpha", 0.2)), float(attr(node, "beta", 0.5))
    z = em.op("Add", [em.op("Mul", [node.input[0], em.const(alpha)]), em.const(beta)])
    inside = em.op("And", [em.op("Greater", [z, em.const(0.0)]), em.op("Less", [z, em.const(1.0)])])
    return [em.op("Where", [inside, em.op("Mul", [dys[0], em.const(alpha)]), em.const(0.0)])]


@rule("HardSwish")
def _hard_swish(em, node, dys):
    """y = x max(0, min(1, x / 6 + 1/2)): dx = dy (x / 3 + 1/2) for -3 < x < 3, dy for x >= 3,
    0 below. Smooth enough to be no rectifier: guided and deconvnet pass the plain gradient."""
    x, dy = node.input[0], dys[0]
    slope = em.op("Add", [em.op("Mul", [x, em.const(1.0 / 3.0)]), em.const(0.5)])
    slope = em.op("Where", [em.op("Less", [x, em.const(-3.0)]), em.const(0.0), slope])
    slope = em.op("Where", [em.op("Less", [x, em.const(3.0)]), slope, em.const(1.0)])
    return [em.op("Mul", [dy, slope])]


@rule("Softplus")
def _softplus(em, node, dys):
    """y = log(1 + e^x): dx = dy sigmoid(x)."""
    return [em.op("Mul", [dys[0], em.op("Sigmoid", [node.input[0]])])]


@rule("Softsign")
def _softsign(em, node, dys):
    """y = x / (1 + |x|): dx = dy / (1 + |x|)^2."""
    one_plus = em.op("Add", [em.op("Abs", [node.input[0]]), em.const(1.0)])
    return [em.op("Div", [dys[0], em.op("Mul", [one_plus, one_plus])])]


@rule("Mish")
def _mish(em, node, dys):
    """y = x tanh(softplus(x)): dx = dy (t + x (1 - t^2) sigmoid(x)), t = tanh(softplus(x))."""
    x = node.input[0]
    t = em.op("Tanh", [em.op("Softplus", [x])])
    inner = em.op("Mul", [em.op("Mul", [x, em.op("Sub", [em.const(1.0), em.op("Mul", [t, t])])]),
                          em.op("Sigmoid", [x])])
    return [em.op("Mul", [dys[0], em.op("Add", [t, inner])])]


@rule("Gelu")
def _gelu(em, node, dys):
    """GELU (opset 20). approximate="none": y = x Phi(x), dx = dy (Phi(x) + x phi(x)) with
    Phi(x) = (1 + erf(x / sqrt 2)) / 2 and phi the normal density. approximate="tanh":
    y = x (1 + t) / 2 with t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3), and
    dx = dy ((1 + t) / 2 + x (1 - t^2) sqrt(2/pi) (1 + 3 0.044715 x^2) / 2).
    Smooth: guided and deconvnet pass the plain gradient."""
    x, dy = node.input[0], dys[0]
    approximate = attr(node, "approximate", "none")
    if approximate == "none":
        cdf = em.op("Mul", [em.op("Add", [em.op("Erf", [em.op("Mul", [x, em.const(1.0 / math.sqrt(2.0))])]),
                                          em.const(1.0)]), em.const(0.5)])
        density = em.op("Mul", [em.op("Exp", [em.op("Mul", [em.op("Mul", [x, x]), em.const(-0.5)])]),
                                em.const(1.0 / math.sqrt(2.0 * math.pi))])
        return [em.op("Mul", [dy, em.op("Add", [cdf, em.op("Mul", [x, density])])])]
    if approximate != "tanh":
        raise UnsupportedOperatorError(f"{describe_node(node)} has approximate={approximate!r}; no gradient rule.")
    c, k = math.sqrt(2.0 / math.pi), 0.044715
    x2 = em.op("Mul", [x, x])
    u = em.op("Mul", [em.op("Mul", [x, em.op("Add", [em.op("Mul", [x2, em.const(k)]), em.const(1.0)])]), em.const(c)])
    t = em.op("Tanh", [u])
    half = em.op("Mul", [em.op("Add", [t, em.const(1.0)]), em.const(0.5)])
    du = em.op("Add", [em.op("Mul", [x2, em.const(3.0 * k * c)]), em.const(c)])
    inner = em.op("Mul", [em.op("Mul", [x, em.op("Sub", [em.const(1.0), em.op("Mul", [t, t])])]),
                          em.op("Mul", [du, em.const(0.5)])])
    return [em.op("Mul", [dy, em.op("Add", [half, inner])])]
