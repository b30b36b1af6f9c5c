"""Gradient rules for pooling (see :mod:`._emit`).

Max pooling sends dy to the element that won each window (the first maximum, as ONNX
Runtime and torch choose it). Two ways, chosen by measurement (ONNX Runtime 1.32, CPU):

- MaxPool reports its argmax (``Indices``) and dy is scattered there. ONNX Runtime's MaxPool
  with indices runs single-threaded and several times slower than the plain one, but the
  whole gradient still wins: ResNet's 3x3/2 stem pool, 10.3 against 13.7 ms for a small
  net's gradient at two threads (16.1 against 18.4 at one); also 3x3/1, 2x2/1, 3x3/3, 4x4/4.
- Disjoint windows of up to :data:`MAX_OFFSETS` offsets (2x2/2, as in VGG), where that
  costs more (9.2 against 8.4 ms): a depthwise Conv with one-hot kernels gathers each
  window's elements, comparing them with y finds the winner, and the ConvTranspose with the
  same kernels puts dy back in place. This leaves the forward MaxPool untouched.

Average pooling is a depthwise convolution
with a kernel of ones divided by each window's count, so its adjoint is the matching
ConvTranspose.
"""
from __future__ import annotations

import numpy as np

from ._emit import UnsupportedOperatorError, attr, describe_node, rule
from .rules_spatial import spatial_size, transposed, window_geometry

__all__ = ["MAX_OFFSETS"]

MAX_OFFSETS = 4


@rule("MaxPool")
def _max_pool(em, node, dys):
    """dx[p] = sum of dy over the windows whose first maximum is at p."""
    if int(attr(node, "storage_order", 0)) != 0:
        raise UnsupportedOperatorError(f"{describe_node(node)} uses storage_order=1; no gradient rule for it.")
    x = node.input[0]
    kernel, strides, dilations, begin, end = window_geometry(node, spatial_size(em, x, node))
    disjoint = all(s >= k for s, k in zip(strides, kernel))
    if (len(kernel) == 2 and disjoint and int(np.prod(kernel)) <= MAX_OFFSETS
            and not (len(node.output) > 1 and node.output[1])):
        return [_max_pool_by_offsets(em, node, dys[0], kernel, strides, dilations, begin)]
    return [_max_pool_by_indices(em, node, dys[0])]


def _max_pool_by_offsets(em, node, dy, kernel, strides, dilations, begin):
    """A depthwise Conv with one-hot kernels lays out, for every window, the x at each of its
    kh * kw offsets as channels (N, C * K, Ho, Wo); an offset won the window if its x equals y,
    lies inside the input (not padding) and no earlier offset won (an exclusive cumulative sum).
    The winners' dy go back through the ConvTranspose with the same one-hot kernels."""
    x, y = node.input[0], node.output[0]
    (h, w), (ho, wo) = spatial_size(em, x, node), spatial_size(em, y, node)
    channels, count = em.shape(x, node)[1], int(np.prod(kernel))
    reach = [(n - 1) * s + (k - 1) * d + 1 for n, s, k, d in zip((ho, wo), strides, kernel, dilations)]
    after = [max(0, r - b - size) for r, b, size in zip(reach, begin, (h, w))]
    one_hot = np.zeros((channels, count, 1, *kernel), np.float32)
    inside = np.ones((count, ho, wo), bool)
    for index, (i, j) in enumerate(np.ndindex(*kernel)):
        one_hot[:, index, 0, i, j] = 1.0
        rows = np.arange(ho) * strides[0] + i * dilations[0] - begin[0]
        cols = np.arange(wo) * strides[1] + j * dilations[1] - begin[1]
        inside[index] = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    kernels = em.const(one_hot.reshape(channels * count, 1, *kernel))
    taps = em.op("Conv", [x, kernels], group=channels, strides=strides, dilations=dilations, pads=begin + after,
                 stem="maxpool_taps")
    taps = em.op("Reshape", [taps, em.ints([0, channels, count, ho, wo])])
    won = em.op("Equal", [taps, em.op("Unsqueeze", [y, em.ints([2])])])
    if not inside.all():
        won = em.op("And", [won, em.const(inside[None, None], np.bool_)])
    if count > 1:  # keep the first winner of each window, as MaxPool itself picks it
        before = em.op("CumSum", [em.op("Cast", [won], to=1), em.const(np.int64(2), np.int64)], exclusive=1)
        won = em.op("And", [won, em.op("Less", [before, em.const(0.5)])])
    routed = em.masked(em.op("Unsqueeze", [dy, em.ints([2])]), won, stem="routed")
    routed = em.op("Reshape", [routed, em.ints([0, channels * count, ho, wo])])
    return transposed(em, routed, kernels, node, kernel, strides, dilations, begin, channels)


def _max_pool_by_indices(em, node, dy):
    """dx[argmax of each window] += dy: ScatterElements with reduction 'add' on the flattened
    input (0.2 ms faster than ScatterND on ResNet's stem pool)."""
    x = node.input[0]
    if len(node.output) > 1 and node.output[1]:
        indices = node.output[1]
    else:
        from onnx import helper

        indices = em.fresh("argmax")
        patched = helper.make_node("MaxPool", [x], [node.output[0], indices], name=node.name)
        patched.attribute.extend(node.attribute)
        em.patch_forward(node, patched)
        em.dtypes[indices] = 7  # int64
    zero = em.op("ConstantOfShape", [em.op("Reshape", [em.op("Size", [x]), em.ints([1])])],
                 value=_float_tensor(0.0))
    flat = em.op("ScatterElements", [zero, em.op("Reshape", [indices, em.ints([-1])]),
                                     em.op("Reshape", [dy, em.ints([-1])])], axis=0, reduction="add")
    return em.reshape_like(flat, x)


def _float_tensor(value):
    from onnx import helper

    return helper.make_tensor("value", 1, [1], [value])


def _window_counts(size_in, size_out, kernel, stride, begin, end, include_pad):
    """How many elements each output of an AveragePool averages, along one axis (ONNX Runtime's
    convention: the window is clipped to the padded input, and to the input when pads are excluded)."""
    start = np.arange(size_out) * stride - begin
    stop = np.minimum(start + kernel, size_in + end)
    if include_pad:
        return (stop - start).astype(np.float64)
    return (np.minimum(stop, size_in) - np.maximum(start, 0)).astype(np.float64)


@rule("AveragePool")
def _average_pool(em, node, dys):
    """y = window sum of x / count: dx = ConvTranspose(dy / count, ones) per channel."""
    x, y = node.input[0], node.output[0]
    size_in, size_out = spatial_size(em, x, node), spatial_size(em, y, node)
    kernel, strides, dilations, begin, end = window_geometry(node, size_in)
    if any(d != 1 for d in dilations):
        raise UnsupportedOperatorError(f"{describe_node(node)} is dilated; no gradient rule for it.")
    include = int(attr(node, "count_include_pad", 0))
    counts = np.ones(())
    for i in range(len(size_in)):
        c = _window_counts(size_in[i], size_out[i], kernel[i], strides[i], begin[i], end[i], include)
        counts = np.multiply.outer(counts, c)
    scaled = em.op("Mul", [dys[0], em.const((1.0 / counts)[None, None])])
    channels = em.shape(x, node)[1]
    ones = em.const(np.ones([channels, 1, *kernel]))
    return [transposed(em, scaled, ones, node, kernel, strides, dilations, begin, channels)]


@rule("GlobalAveragePool")
def _global_average_pool(em, node, dys):
    x = node.input[0]
    area = float(np.prod(spatial_size(em, x, node)))
    return [em.op("Expand", [em.op("Mul", [dys[0], em.const(1.0 / area)]), em.op("Shape", [x])])]


@rule("GlobalMaxPool")
def _global_max_pool(em, node, dys):
    x, y = node.input[0], node.output[0]
    spread = em.op("Expand", [dys[0], em.op("Shape", [x])])
    return [em.op("Where", [em.op("Equal", [x, y]), spread, em.const(0.0)])]
