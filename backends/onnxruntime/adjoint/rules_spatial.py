"""Gradient rules for convolution and normalisation (see :mod:`._emit`); pooling is in
:mod:`.rules_pool`.

A convolution's adjoint with respect to its input is the transposed convolution with the
same weight (an ordinary convolution with the flipped kernel when the stride is 1).
"""
from __future__ import annotations

import numpy as np

from ._emit import UnsupportedOperatorError, attr, describe_node, rule

__all__ = ["window_geometry", "spatial_size", "transposed"]


def window_geometry(node, in_spatial):
    """(kernel, strides, dilations, pads_begin, pads_end) of a Conv or pool node, with
    ``auto_pad`` resolved for the input spatial size ``in_spatial`` (None where unknown)."""
    n = len(in_spatial)
    kernel = attr(node, "kernel_shape")
    kernel = list(kernel) if kernel is not None else None
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    pads = list(attr(node, "pads", [0] * 2 * n))
    auto = attr(node, "auto_pad", "NOTSET")
    if auto == "VALID":
        pads = [0] * 2 * n
    elif auto in ("SAME_UPPER", "SAME_LOWER") and kernel is not None and None not in in_spatial:
        pads = [0] * 2 * n
        for i in range(n):
            out = -(-in_spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_spatial[i])
            small, large = total // 2, total - total // 2
            pads[i], pads[n + i] = (small, large) if auto == "SAME_UPPER" else (large, small)
    return kernel, strides, dilations, pads[:n], pads[n:]


def spatial_size(em, name, node):
    dims = em.shape(name, node)
    if len(dims) < 3 or None in dims[2:]:
        raise UnsupportedOperatorError(f"{describe_node(node)} needs the spatial size of {name!r}, which is unknown; "
                                       "pass input_shape=(C, H, W) to convscope.load.")
    return list(dims[2:])


def transposed(em, dy, weight, node, kernel, strides, dilations, begin, group):
    """ConvTranspose of ``dy`` back to the input size: the adjoint of a windowed sum."""
    x, y = node.input[0], node.output[0]
    size_in, size_out = spatial_size(em, x, node), spatial_size(em, y, node)
    end, extra = [], []
    for i in range(len(size_in)):
        full = (size_out[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
        crop = full - begin[i] - size_in[i]
        end.append(max(crop, 0))
        extra.append(max(-crop, 0))
    return em.op("ConvTranspose", [dy, weight], strides=strides, dilations=dilations, pads=begin + end,
                 output_padding=extra if any(extra) else None, group=group, stem="conv_adjoint")


@rule("Conv")
def _conv(em, node, dys):
    """dx = ConvTranspose(dy, W). With stride 1 and a constant weight this is also an ordinary
    convolution of dy with the flipped, transposed kernel W'[i, o] = W[o, i, ::-1, ::-1] and pads
    d (k - 1) - p, which ONNX Runtime runs in its fast blocked layout: that form is used then."""
    x, w = node.input[:2]
    weight = em.value(w)
    wshape = em.shape(w, node) if weight is None else tuple(weight.shape)
    kernel, strides, dilations, begin, end = window_geometry(node, spatial_size(em, x, node))
    kernel = kernel or list(wshape[2:])
    group = int(attr(node, "group", 1))
    reach = [(k - 1) * d for k, d in zip(kernel, dilations)]
    if (weight is not None and group == 1 and all(s == 1 for s in strides)
            and all(p <= r for p, r in zip(begin + end, reach + reach))):
        flipped = em.const(np.flip(weight, axis=tuple(range(2, weight.ndim))).swapaxes(0, 1))
        pads = [r - p for r, p in zip(reach, begin)] + [r - p for r, p in zip(reach, end)]
        return [em.op("Conv", [dys[0], flipped], pads=pads, dilations=dilations, stem="conv_adjoint")]
    return [transposed(em, dys[0], w, node, kernel, strides, dilations, begin, group)]



@rule("BatchNormalization")
def _batch_norm(em, node, dys):
    """Inference BatchNorm y = scale (x - mean) / sqrt(var + eps) + B: dx = dy scale / sqrt(var + eps)."""
    if int(attr(node, "training_mode", 0)) or len([o for o in node.output if o]) > 1:
        raise UnsupportedOperatorError(f"{describe_node(node)} runs in training mode; only inference "
                                       "BatchNormalization is differentiated.")
    eps = float(attr(node, "epsilon", 1e-5))
    rank = len(em.shape(node.input[0], node))
    scale, var = em.value(node.input[1]), em.value(node.input[4])
    if scale is not None and var is not None:
        factor = em.const((scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)).reshape(-1, *[1] * (rank - 2)))
    else:
        root = em.op("Sqrt", [em.op("Add", [node.input[4], em.const(eps)])])
        factor = em.op("Reshape", [em.op("Div", [node.input[1], root]), em.ints([-1] + [1] * (rank - 2))])
    return [em.op("Mul", [dys[0], factor])]


def _channel_window_sum(em, t, channels, before, after):
    """s[c] = sum of t[c'] for c - before <= c' <= c + after (clipped), on an (N, C, ...) tensor."""
    folded = em.op("Reshape", [t, em.ints([0, 1, channels, -1])])
    summed = em.op("Conv", [folded, em.const(np.ones((1, 1, before + after + 1, 1)))],
                   pads=[before, 0, after, 0], stem="channel_window")
    return em.reshape_like(summed, t)


@rule("LRN")
def _lrn(em, node, dys):
    """y_c = x_c s_c^-beta with s_c = bias + alpha/size sum_{window(c)} x^2; window(c) runs from
    c - floor((size-1)/2) to c + ceil((size-1)/2). Then
    dx_j = dy_j s_j^-beta - (2 alpha beta / size) x_j sum_{c: j in window(c)} dy_c x_c s_c^(-beta-1)."""
    x, dy = node.input[0], dys[0]
    size = int(attr(node, "size"))
    alpha, beta, bias = float(attr(node, "alpha", 1e-4)), float(attr(node, "beta", 0.75)), float(attr(node, "bias", 1.0))
    channels = em.shape(x, node)[1]
    lo, hi = (size - 1) // 2, size - 1 - (size - 1) // 2
    squares = _channel_window_sum(em, em.op("Mul", [x, x]), channels, lo, hi)
    s = em.op("Add", [em.op("Mul", [squares, em.const(alpha / size)]), em.const(bias)])
    power = em.op("Pow", [s, em.const(-beta)])
    direct = em.op("Mul", [dy, power])
    inner = em.op("Div", [em.op("Mul", [direct, x]), s])
    spread = _channel_window_sum(em, inner, channels, hi, lo)
    cross = em.op("Mul", [em.op("Mul", [spread, x]), em.const(2.0 * alpha * beta / size)])
    return [em.op("Sub", [direct, cross])]


@rule("ConvTranspose")
def _conv_transpose(em, node, dys):
    """y = ConvTranspose(x, W) scatters each x through the kernel; its adjoint gathers: dx =
    Conv(dy, W) with the same strides, dilations, groups and begin pads, and end pads less
    output_padding (the rows output_padding adds receive no x; where it exceeds the end pad,
    they are cut off dy first). W (C_in, C_out / group, k...) reads as a Conv weight as it is."""
    x, w = node.input[:2]
    if attr(node, "output_shape") is not None or attr(node, "auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise UnsupportedOperatorError(f"{describe_node(node)} sets output_shape or auto_pad SAME; the gradient rule "
                                       "needs explicit pads.")
    size_in, size_out = spatial_size(em, x, node), spatial_size(em, node.output[0], node)
    n = len(size_in)
    weight = em.value(w)
    kernel = attr(node, "kernel_shape") or list((em.shape(w, node) if weight is None else weight.shape)[2:])
    strides = list(attr(node, "strides", [1] * n))
    dilations = list(attr(node, "dilations", [1] * n))
    pads = [0] * 2 * n if attr(node, "auto_pad", "NOTSET") == "VALID" else list(attr(node, "pads", [0] * 2 * n))
    extra = list(attr(node, "output_padding", [0] * n))
    dy, begin, end = dys[0], pads[:n], []
    for i in range(n):
        full = strides[i] * (size_in[i] - 1) + (kernel[i] - 1) * dilations[i] + 1 - begin[i]  # rows x reaches
        cut = size_out[i] - full
        if cut > 0:
            dy = em.op("Slice", [dy, em.ints([0]), em.ints([full]), em.ints([2 + i])])
        end.append(max(-cut, 0))
    return [em.op("Conv", [dy, w], strides=strides, dilations=dilations, pads=begin + end,
                  group=int(attr(node, "group", 1)), kernel_shape=list(kernel), stem="conv_transpose_adjoint")]
