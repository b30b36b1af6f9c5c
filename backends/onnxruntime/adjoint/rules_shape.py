"""Gradient rules for operators that select, repeat or pad elements (see :mod:`._emit`).

Each of them copies input elements to output positions, so its adjoint adds dy back onto
the elements it was copied from. Along one axis that copy is an index map ``source[j]``
(the input index output position j reads, -1 for a padded constant), and
:func:`index_map_adjoint` splits it into runs that read consecutive, reversed or repeated
sources: each run's slab of dy is sliced, reversed or summed, and padded into place. An
irregular map (a strided slice, a wrap of many periods) is scattered instead
(:func:`scatter_add`: ScatterND with ``reduction="add"``, which also serves Gather).
"""
from __future__ import annotations

import numpy as np

from ._emit import INT64_MAX, UnsupportedOperatorError, attr, describe_node, rule

__all__ = ["index_map_adjoint", "scatter_add"]

MAX_RUNS = 8


def scatter_add(em, t, rank, axis, q, indices, n):
    """out[..., indices[k], ...] += t[..., k, ...] along ``axis``: ``t`` has rank ``rank`` with the
    ``q`` axes of ``indices`` (an int64 tensor of values in [0, n)) at ``axis``; out has n there
    (an int, or the name of a 1-element int64 tensor holding it when it is known only at run time)."""
    perm = list(range(axis, axis + q)) + list(range(axis)) + list(range(axis + q, rank))
    updates = t if perm == list(range(rank)) else em.op("Transpose", [t], perm=perm)
    rest = em.op("Slice", [em.op("Shape", [updates]), em.ints([q]), em.ints([INT64_MAX])])
    data_shape = em.op("Concat", [em.ints([n]) if not isinstance(n, str) else n, rest], axis=0)
    zeros = em.op("ConstantOfShape", [data_shape], value=_zero_tensor())
    out = em.op("ScatterND", [zeros, em.op("Unsqueeze", [indices, em.ints([-1])]), updates], reduction="add")
    rank_out = rank - q + 1
    if axis == 0:
        return out
    return em.op("Transpose", [out], perm=list(range(1, axis + 1)) + [0] + list(range(axis + 1, rank_out)))


def _zero_tensor():
    from onnx import helper

    return helper.make_tensor("value", 1, [1], [0.0])


def _runs(source):
    """Split ``source`` into (j0, j1, step) runs of valid entries whose step is -1, 0 or 1."""
    runs, j, size = [], 0, len(source)
    while j < size:
        if source[j] < 0:
            j += 1
            continue
        k, step = j + 1, None
        while k < size and source[k] >= 0:
            d = int(source[k] - source[k - 1])
            if step is None and d in (-1, 0, 1):
                step = d
            if d != step:
                break
            k += 1
        runs.append((j, k, 1 if step is None else step))
        j = k
    return runs


def index_map_adjoint(em, t, rank, axis, source, n):
    """The adjoint of out[..., j, ...] = x[..., source[j], ...] (0 where source[j] < 0) along
    ``axis`` of a rank-``rank`` tensor: returns dx, of size n along ``axis``."""
    source = np.asarray(source, np.int64).reshape(-1)
    if np.array_equal(source, np.arange(n)):
        return t
    runs = _runs(source)
    if not runs:
        return None
    if len(runs) > MAX_RUNS:
        valid = np.flatnonzero(source >= 0)
        if len(valid) < len(source):
            t = em.op("Gather", [t, em.ints(valid)], axis=axis)
        return scatter_add(em, t, rank, axis, 1, em.ints(source[valid]), n)
    parts = []
    for j0, j1, step in runs:
        slab = t if (j0, j1) == (0, len(source)) else em.op("Slice", [t, em.ints([j0]), em.ints([j1]), em.ints([axis])])
        if step == -1:
            slab = em.reverse(slab, axis)
        elif step == 0 and j1 - j0 > 1:
            slab = em.reduce_sum(slab, [axis])
        low = int(source[j0:j1].min())
        length = 1 if step == 0 else j1 - j0
        parts.append(em.pad(slab, rank, axis, low, n - low - length))
    return parts[0] if len(parts) == 1 else em.op("Sum", parts, stem="gather_back")


def _axis_size(em, node, name, axis):
    size = em.shape(name, node)[axis]
    if size is None:
        raise UnsupportedOperatorError(f"{describe_node(node)} works along axis {axis} of {name!r}, whose size is "
                                       "unknown (the batch axis); no gradient rule for it.")
    return size


def slice_source(start, end, step, n):
    """The input indices a Slice (ONNX clamping rules) reads along an axis of size n."""
    if step == 0:
        raise ValueError("The 'steps' of a Slice must be nonzero. Got 0 instead.")
    start, end = (start + n if start < 0 else start), (end + n if end < 0 else end)
    if step > 0:
        start, end = min(max(start, 0), n), min(max(end, 0), n)
    else:
        start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
    return np.arange(start, end, step, dtype=np.int64)


@rule("Slice")
def _slice(em, node, dys):
    """dx is zero but for the sliced elements, which receive dy; one axis after another. With
    constant starts and ends the source indices are known here (slices and pads); with computed
    ones (torch.chunk on a dynamic batch) ONNX Runtime slices a range 0..n-1 with the very same
    inputs, and dy is scattered to the indices that come out."""
    x, dy = node.input[0], dys[0]
    rank = len(em.shape(x, node))
    names = list(node.input[1:5]) + [""] * (5 - len(node.input))
    values = [em.value(name) if name else None for name in names]
    if names[2] and values[2] is None:
        em.constant(names[2], node, "axes")  # raises: the axis to scatter along must be known
    count = int(em.shape(names[0], node)[0]) if values[0] is None else np.asarray(values[0]).size
    axes = [int(a) % rank for a in (np.arange(count) if values[2] is None else np.asarray(values[2]).reshape(-1))]
    known = all(v is not None for v, name in zip(values, names) if name)
    for k, axis in enumerate(axes):
        n = _axis_size(em, node, x, axis)
        if known:
            start, end = (int(np.asarray(v).reshape(-1)[k]) for v in values[:2])
            step = 1 if values[3] is None else int(np.asarray(values[3]).reshape(-1)[k])
            dy = index_map_adjoint(em, dy, rank, axis, slice_source(start, end, step, n), n)
            if dy is None:  # an empty slice: nothing depends on x
                return [None]
            continue
        pick = [em.op("Gather", [name, em.ints([k])]) for name in (names[0], names[1])]
        steps = [em.op("Gather", [names[3], em.ints([k])])] if names[3] else []
        index_type = np.int64 if em.types.get(names[0], 7) == 7 else np.int32  # Slice's inputs share one type
        iota = em.const(np.arange(n, dtype=np.int64), np.int64)
        source = em.op("Slice", [iota, *pick, em.const(np.zeros(1), index_type), *steps])
        dy = scatter_add(em, dy, rank, axis, 1, source, n)
    return [dy]


@rule("Split")
def _split(em, node, dys):
    """dx = the outputs' adjoints concatenated back (zeros for an output without one)."""
    rank = len(em.shape(node.input[0], node))
    axis = int(attr(node, "axis", 0)) % rank
    parts = [d if d is not None else em.zeros_like(o) for o, d in zip(node.output, dys)]
    return [em.op("Concat", parts, axis=axis)]


@rule("Gather")
def _gather(em, node, dys):
    """y = x[..., indices, ...] along ``axis`` (negative indices count from the end; scalar
    indices drop the axis, as in a class token x[:, 0]): dx adds dy at the gathered indices."""
    x, indices = node.input
    rank, rank_y = len(em.shape(x, node)), len(em.shape(node.output[0], node))
    axis = int(attr(node, "axis", 0)) % rank
    n = em.shape(x, node)[axis]
    q = rank_y - rank + 1
    value = em.value(indices)
    dy = dys[0]
    if n is None:  # a size known only at run time (attention's stacked q, k, v): read it from x
        n = em.op("Slice", [em.op("Shape", [x]), em.ints([axis]), em.ints([axis + 1])])
        if value is not None:
            indices = em.const(np.asarray(value, np.int64), np.int64)
    elif value is not None:
        value = np.asarray(value, np.int64)
        value = np.where(value < 0, value + n, value)
        if value.ndim <= 1:  # a constant row: slices and pads where the indices run in order
            if value.ndim == 0:
                dy = em.op("Unsqueeze", [dy, em.ints([axis])])
            return [index_map_adjoint(em, dy, rank, axis, value.reshape(-1), n)]
        return [scatter_add(em, dy, rank_y, axis, q, em.const(value, np.int64), n)]
    if em.types.get(indices, 7) != 7:
        indices = em.op("Cast", [indices], to=7)
    negative = em.op("Less", [indices, em.const(np.int64(0), np.int64)])
    size = em.const(np.int64(n), np.int64) if not isinstance(n, str) else em.op("Squeeze", [n, em.ints([0])])
    indices = em.op("Where", [negative, em.op("Add", [indices, size]), indices])
    return [scatter_add(em, dy, rank_y, axis, q, indices, n)]


@rule("GatherElements")
def _gather_elements(em, node, dys):
    """y[i][j] = x[index[i][j]][j] (along ``axis``): dx = ScatterElements(0, index, dy, add)."""
    x, indices = node.input
    rank = len(em.shape(x, node))
    axis = int(attr(node, "axis", 0)) % rank
    n = _axis_size(em, node, x, axis)
    if em.types.get(indices, 7) != 7:
        indices = em.op("Cast", [indices], to=7)
    negative = em.op("Less", [indices, em.const(np.int64(0), np.int64)])
    indices = em.op("Where", [negative, em.op("Add", [indices, em.const(np.int64(n), np.int64)]), indices])
    return [em.op("ScatterElements", [em.zeros_like(x), indices, dys[0]], axis=axis, reduction="add")]


@rule("Expand")
def _expand(em, node, dys):
    return [em.unbroadcast(dys[0], node.input[0], node.output[0], node)]


@rule("Tile")
def _tile(em, node, dys):
    """y = x repeated r_i times along each axis i: dy viewed as (r_0, d_0, r_1, d_1, ...) and summed
    over the repeats."""
    x, repeats = node.input
    rank = len(em.shape(x, node))
    reps = em.op("Unsqueeze", [repeats, em.ints([1])])
    dims = em.op("Unsqueeze", [em.op("Shape", [x]), em.ints([1])])
    split = em.op("Reshape", [em.op("Concat", [reps, dims], axis=1), em.ints([-1])])
    viewed = em.op("Reshape", [dys[0], split])
    return [em.reduce_sum(viewed, list(range(0, 2 * rank, 2)), keepdims=0)]


def pad_source(mode, n, before, after):
    """The input index each output position of a Pad reads along an axis (-1: the constant)."""
    p = np.arange(-before, n + after, dtype=np.int64)
    if mode == "constant":
        return np.where((p >= 0) & (p < n), p, -1)
    if mode == "edge":
        return np.clip(p, 0, n - 1)
    if mode == "wrap":
        return np.mod(p, n)
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(p)
        m = np.mod(p, 2 * (n - 1))
        return np.where(m < n, m, 2 * (n - 1) - m)
    raise ValueError(f"The 'mode' of a Pad must be constant, reflect, edge or wrap. Got {mode!r} instead.")


@rule("Pad")
def _pad(em, node, dys):
    """constant: dx is dy's interior; reflect, edge, wrap: the padded positions' dy is added onto the
    elements they copy. Pads (and axes, opset 18) must be constant; negative pads crop."""
    x, dy = node.input[0], dys[0]
    shape = em.shape(x, node)
    rank = len(shape)
    mode = attr(node, "mode", "constant")
    if len(node.input) > 1 and node.input[1]:
        pads = em.constant(node.input[1], node, "pads").reshape(-1).astype(np.int64)
    else:
        pads = np.asarray(attr(node, "pads"), np.int64)
    axes = list(range(rank))
    if len(node.input) > 3 and node.input[3]:
        axes = [int(a) % rank for a in em.constant(node.input[3], node, "axes").reshape(-1)]
    count = len(axes)
    for i, axis in enumerate(axes):
        before, after = int(pads[i]), int(pads[count + i])
        if before == 0 and after == 0:
            continue
        n = _axis_size(em, node, x, axis)
        try:
            source = pad_source(mode, n, before, after)
        except ValueError as err:
            raise UnsupportedOperatorError(f"{describe_node(node)}: {err}") from None
        dy = index_map_adjoint(em, dy, rank, axis, source, n)
        if dy is None:
            return [None]
    return [dy]


@rule("CumSum")
def _cumsum(em, node, dys):
    """The adjoint of a (reverse, exclusive) cumulative sum is the cumulative sum the other way."""
    return [em.op("CumSum", [dys[0], node.input[1]], exclusive=int(attr(node, "exclusive", 0)),
                  reverse=1 - int(attr(node, "reverse", 0)))]


@rule("DepthToSpace", "SpaceToDepth")
def _depth_space(em, node, dys):
    """Permutations of elements: the adjoint is the inverse permutation."""
    block = int(attr(node, "blocksize"))
    if node.op_type == "SpaceToDepth":
        return [em.op("DepthToSpace", [dys[0]], blocksize=block, mode="DCR")]
    if attr(node, "mode", "DCR") == "DCR":
        return [em.op("SpaceToDepth", [dys[0]], blocksize=block)]
    n, c, h, w = em.shape(node.input[0], node)  # CRD: y[n, c, h*b+i, w*b+j] = x[n, (c*b + i)*b + j, h, w]
    viewed = em.op("Reshape", [dys[0], em.ints([0, c // (block * block), h, block, w, block])])
    moved = em.op("Transpose", [viewed], perm=[0, 1, 3, 5, 2, 4])
    return [em.reshape_like(moved, node.input[0])]
