"""Gradient rule for Resize (see :mod:`._emit`).

Nearest, linear and cubic Resize are separable: along each resized axis, y = A x with a
constant (out, in) matrix A that :func:`interpolation_matrix` builds from the ONNX
definition (coordinate transformation, nearest rounding, linear and cubic weights with the
input's edge repeated outside it). The adjoint applies A^T axis by axis: a MatMul with the
constant, or, for an integer nearest upsampling (nn.Upsample(mode="nearest")), a reshape
summing each block of repeated outputs. Coordinates are computed in float32, as ONNX
Runtime computes them, so that nearest picks the same source.
"""
from __future__ import annotations

import numpy as np

from ._emit import UnsupportedOperatorError, attr, describe_node, rule

__all__ = ["interpolation_matrix"]

_F = np.float32


def _source_coordinates(mode, out, n, scale):
    """x_original for each output index (float32)."""
    i = np.arange(out, dtype=_F)
    scale = _F(scale)
    if mode == "half_pixel":
        return (i + _F(0.5)) / scale - _F(0.5)
    if mode == "pytorch_half_pixel":
        return (i + _F(0.5)) / scale - _F(0.5) if out > 1 else np.zeros(out, _F)
    if mode == "half_pixel_symmetric":
        adjustment = _F(out) / (scale * _F(n))
        offset = _F(n) / _F(2) * (_F(1) - adjustment)
        return offset + (i + _F(0.5)) / scale - _F(0.5)
    if mode == "align_corners":
        return i * _F(n - 1) / _F(out - 1) if out > 1 else np.zeros(out, _F)
    if mode == "asymmetric":
        return i / scale
    raise ValueError(f"coordinate_transformation_mode {mode!r} is not supported")


def _nearest(x, rounding):
    if rounding == "floor":
        return np.floor(x)
    if rounding == "ceil":
        return np.ceil(x)
    half = (x - np.floor(x)) == _F(0.5)
    if rounding == "round_prefer_floor":
        return np.where(half, np.floor(x), np.round(x))
    if rounding == "round_prefer_ceil":
        return np.where(half, np.ceil(x), np.round(x))
    raise ValueError(f"nearest_mode {rounding!r} is not supported")


def _cubic_weights(ratio, a):
    s = np.stack([ratio + 1, ratio, 1 - ratio, 2 - ratio], axis=-1).astype(np.float64)
    near = ((a + 2) * s - (a + 3)) * s * s + 1
    far = ((a * s - 5 * a) * s + 8 * a) * s - 4 * a
    return np.where(s <= 1, near, far)


def interpolation_matrix(node, out, n, scale):
    """A (out, n) with y = A x along one axis of size n resized to ``out`` at ``scale``."""
    mode = attr(node, "mode", "nearest")
    coords = _source_coordinates(attr(node, "coordinate_transformation_mode", "half_pixel"), out, n, scale)
    matrix = np.zeros((out, n))
    rows = np.arange(out)
    if mode == "nearest":
        source = np.clip(_nearest(coords, attr(node, "nearest_mode", "round_prefer_floor")), 0, n - 1).astype(int)
        matrix[rows, source] = 1.0
    elif mode == "linear":
        x = np.clip(coords, 0, n - 1).astype(np.float64)
        low = np.floor(x).astype(int)
        high = np.minimum(low + 1, n - 1)
        weight = x - low
        np.add.at(matrix, (rows, low), 1 - weight)
        np.add.at(matrix, (rows, high), weight)
    elif mode == "cubic":
        base = np.floor(coords).astype(int)
        weights = _cubic_weights(coords.astype(np.float64) - base, float(attr(node, "cubic_coeff_a", -0.75)))
        taps = base[:, None] + np.arange(-1, 3)[None, :]
        if int(attr(node, "exclude_outside", 0)):
            weights = np.where((taps >= 0) & (taps < n), weights, 0.0)
            weights /= weights.sum(axis=1, keepdims=True)
        np.add.at(matrix, (np.repeat(rows, 4), np.clip(taps, 0, n - 1).reshape(-1)), weights.reshape(-1))
    else:
        raise ValueError(f"mode {mode!r} is not supported")
    return matrix


def _scales(em, node, shape, out_shape):
    """Per-axis (in size, out size, scale) for the resized axes."""
    rank = len(shape)
    axes = [int(a) % rank for a in (attr(node, "axes") or range(rank))]
    scales = node.input[2] if len(node.input) > 2 else ""
    given = em.value(scales) if scales else None
    if scales and given is None:
        raise UnsupportedOperatorError(f"{describe_node(node)} takes its scales from a computed tensor; the gradient "
                                       "rule needs them constant.")
    if given is not None and np.asarray(given).size:
        factors = [float(s) for s in np.asarray(given).reshape(-1)]
    else:
        factors = [out_shape[a] / shape[a] if shape[a] else 1.0 for a in axes]
        policy = attr(node, "keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            common = min(factors) if policy == "not_larger" else max(factors)
            factors = [common] * len(axes)
    return [(a, shape[a], out_shape[a], f) for a, f in zip(axes, factors)]


def _block_sum(em, t, shape, axis, n, factor):
    """Sum each run of ``factor`` equal outputs (nearest upsampling by an integer)."""
    after = list(shape[axis + 1:])
    if None in after or None in shape[1:axis]:
        return None
    viewed = em.op("Reshape", [t, em.ints([0] * axis + [n, factor] + after)])
    return em.reduce_sum(viewed, [axis + 1], keepdims=0)


@rule("Resize")
def _resize(em, node, dys):
    """dx = A^T dy along every resized axis, A the (out, in) interpolation matrix."""
    x, dy = node.input[0], dys[0]
    shape, out_shape = list(em.shape(x, node)), list(em.shape(node.output[0], node))
    rank = len(shape)
    if attr(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        raise UnsupportedOperatorError(f"{describe_node(node)} crops (tf_crop_and_resize); no gradient rule for it.")
    current = list(out_shape)
    for axis, n, out, scale in _scales(em, node, shape, out_shape):
        if n is None or out is None:
            if n == out and scale == 1.0:
                continue
            raise UnsupportedOperatorError(f"{describe_node(node)} resizes the batch axis; no gradient rule for it.")
        if int(attr(node, "antialias", 0)) and scale < 1 and attr(node, "mode", "nearest") != "nearest":
            raise UnsupportedOperatorError(f"{describe_node(node)} downsamples with antialias; "
                                           "no gradient rule for it.")
        try:
            matrix = interpolation_matrix(node, out, n, scale)
        except ValueError as err:
            raise UnsupportedOperatorError(f"{describe_node(node)}: {err}; no gradient rule for it.") from None
        if out == n and np.array_equal(matrix, np.eye(n)):
            continue
        factor = out // n
        blocks = np.kron(np.eye(n), np.ones((factor, 1))) if factor >= 1 and out == n * factor else None
        done = None
        if blocks is not None and np.array_equal(matrix, blocks):
            done = _block_sum(em, dy, current, axis, n, factor)
        if done is None:
            done = _apply_transposed(em, dy, rank, axis, matrix)
        dy, current[axis] = done, n
    return [dy]


def _apply_transposed(em, t, rank, axis, matrix):
    """A^T t along ``axis``: t @ A on the last axis, A^T @ t on the one before; others moved there."""
    if axis == rank - 1:
        return em.op("MatMul", [t, em.const(matrix)])
    if axis == rank - 2:
        return em.op("MatMul", [em.const(matrix.T), t])
    perm = list(range(rank))
    perm[axis], perm[rank - 1] = rank - 1, axis
    moved = em.op("MatMul", [em.op("Transpose", [t], perm=perm), em.const(matrix)])
    return em.op("Transpose", [moved], perm=perm)
