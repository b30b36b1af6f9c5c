"""Gradient rules for the normalisations computed from the input itself (see :mod:`._emit`):
LayerNormalization, GroupNormalization, InstanceNormalization. BatchNormalization (running
statistics, so an affine map at inference) and LRN are in :mod:`.rules_spatial`.

Each is y = scale * xhat + bias with xhat = (x - mean) r, r = 1 / sqrt(var + eps), mean and
(biased) var over a set of axes A of n elements. With g = dy * scale, its vector-Jacobian
product is

    dx = r (g - mean_A(g) - xhat mean_A(g xhat)).

The statistics are recomputed from x in the backward graph (float32, as stash_type=1 asks);
outputs beyond y (Mean, InvStdDev) are not differentiated.
"""
from __future__ import annotations

from ._emit import UnsupportedOperatorError, attr, describe_node, rule

__all__ = ["normalized_vjp"]


def normalized_vjp(em, x, g, axes, shape, eps):
    """dx for y = xhat over ``axes`` of ``x`` (static ``shape``), given g = dy * scale."""
    mean = em.mean(x, axes, shape)
    centred = em.op("Sub", [x, mean])
    var = em.mean(em.op("Mul", [centred, centred]), axes, shape)
    r = em.op("Reciprocal", [em.op("Sqrt", [em.op("Add", [var, em.const(eps)])])])
    xhat = em.op("Mul", [centred, r])
    inner = em.op("Add", [em.mean(g, axes, shape), em.op("Mul", [xhat, em.mean(em.op("Mul", [g, xhat]), axes, shape)])])
    return em.op("Mul", [r, em.op("Sub", [g, inner])])


def _outputs_beyond_first(node, dys):
    if any(d is not None for d in dys[1:]):
        raise UnsupportedOperatorError(f"{describe_node(node)}: only its first output (Y) is differentiated, "
                                       "and a later one (Mean or InvStdDev) is on the gradient path.")


@rule("LayerNormalization")
def _layer_norm(em, node, dys):
    """Normalised over axes [axis, rank); Scale and B broadcast over those axes."""
    _outputs_beyond_first(node, dys)
    x, scale = node.input[:2]
    shape = em.shape(x, node)
    axis = int(attr(node, "axis", -1)) % len(shape)
    g = em.op("Mul", [dys[0], scale])
    return [normalized_vjp(em, x, g, list(range(axis, len(shape))), shape, float(attr(node, "epsilon", 1e-5)))]


@rule("InstanceNormalization")
def _instance_norm(em, node, dys):
    """Normalised per sample and channel over the spatial axes; scale (C,) per channel."""
    x, scale = node.input[:2]
    shape = em.shape(x, node)
    per_channel = em.op("Reshape", [scale, em.ints([-1] + [1] * (len(shape) - 2))])
    g = em.op("Mul", [dys[0], per_channel])
    return [normalized_vjp(em, x, g, list(range(2, len(shape))), shape, float(attr(node, "epsilon", 1e-5)))]


@rule("GroupNormalization")
def _group_norm(em, node, dys):
    """Channels split into ``num_groups`` groups, each normalised (per sample) over its channels
    and the spatial axes. Scale is per group, shape (G,), in opset 18 and per channel, (C,), from
    opset 21; which one the model holds is read from its shape."""
    x, scale = node.input[:2]
    shape = em.shape(x, node)
    groups = int(attr(node, "num_groups"))
    channels = shape[1]
    sizes = shape[2:]
    if channels is None or None in sizes:
        raise UnsupportedOperatorError(f"{describe_node(node)} needs the channel and spatial sizes of its input.")
    scale_shape = em.shape(scale, node)
    size = 1
    for s in sizes:
        size *= s
    grouped_shape = (shape[0], groups, channels // groups * size)
    grouped = em.ints([0, groups, -1])
    xg = em.op("Reshape", [x, grouped])
    if tuple(scale_shape) == (channels,):
        per_channel = em.op("Reshape", [scale, em.ints([-1] + [1] * (len(shape) - 2))])
        g = em.op("Reshape", [em.op("Mul", [dys[0], per_channel]), grouped])
    elif tuple(scale_shape) == (groups,):
        g = em.op("Mul", [em.op("Reshape", [dys[0], grouped]), em.op("Reshape", [scale, em.ints([groups, 1])])])
    else:
        raise UnsupportedOperatorError(f"{describe_node(node)} has a scale of shape {tuple(scale_shape)}, neither "
                                       f"(num_groups,) nor (C,).")
    dx = normalized_vjp(em, xg, g, [2], grouped_shape, float(attr(node, "epsilon", 1e-5)))
    return [em.reshape_like(dx, x)]
