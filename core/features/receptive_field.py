"""Receptive fields from the layer geometry the backend reports.

Along each axis, a unit at position ``y`` of a layer sees the input rows
``[S y + a, S y + b]`` (inclusive), where the jump ``S`` and the offsets ``a <= b`` follow
from the conv and pool layers on the way, composed in execution order. A layer with
kernel ``k``, stride ``s``, padding ``p_top`` and dilation ``d``, whose input has
``(S_in, a_in, b_in)``, gives::

    S = S_in s,    a = a_in - S_in p_top,    b = b_in + S_in (d (k - 1) - p_top)

(the unit covers rows ``[s y - p_top, s y - p_top + d (k - 1)]`` of its own input). A
padding layer is the case ``k = s = 1``; a cropping layer the same with negative padding.
A transposed conv (``kind == "deconv"``) inverts the relation: output ``y`` receives from
inputs ``i`` with ``(y + p - d (k - 1)) / s <= i <= (y + p) / s``, so::

    S = S_in / s,    a = a_in + S_in (p_top - d (k - 1)) / s,    b = b_in + S_in p_top / s

and an upsampling by an integer factor ``f`` (nearest or bilinear) reads inputs within one
of ``y / f``: ``S = S_in / f``, ``a = a_in - S_in``, ``b = b_in + S_in``. Fractional bounds
are rounded outwards, so the box always contains the field.

Pointwise layers (ReLU, BatchNorm, adds, a permute to channels-last and back) keep their
input's field; where a layer has several inputs (a residual add, a concatenation) the field
is the union, ``min a`` and ``max b``. An input whose map is 1 x 1 while the layer's is
larger is a broadcast gate (squeeze-excitation: ``x * gate``) and leaves the field that of
``x``. A container (``kind == "block"``) whose inputs name some of its own children is
such a pointwise combination of them (its output is ``x * gate`` or ``x + f(x)``);
otherwise its output is taken to be its last child's. Token sequences and vectors
see the whole image. Offsets may fall outside the image: that part of the field is padding.
Where the records cannot determine a field, the error names the layer and the operator.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._plugins import load
from .._validate import check_int, check_name, param_error
from ..backend import INPUT

__all__ = ["receptive_field", "ReceptiveField", "field_geometry", "unit_boxes"]


@dataclass(frozen=True)
class ReceptiveField:
    """The input box a unit sees, as half-open pixel ranges: rows ``top:bottom``, columns
    ``left:right``. ``box`` is the full field (it may reach past the image edge, into the
    padding); ``clipped`` is its part inside the image, when the image size is known.
    ``stride`` is the jump between neighbouring units in input pixels (rows, columns)."""

    layer: str
    y: int
    x: int
    box: tuple
    clipped: tuple | None
    stride: tuple

    @property
    def size(self) -> tuple:
        """(height, width) of the full field."""
        return self.box[2] - self.box[0], self.box[3] - self.box[1]

    def slices(self) -> tuple:
        """(rows, cols) slices of the part inside the image."""
        t, l, b, r = self.clipped if self.clipped is not None else self.box
        return slice(max(t, 0), b), slice(max(l, 0), r)


class _Unknown:
    """Marks a layer whose field cannot be derived from the records, with the reason."""

    def __init__(self, reason):
        self.reason = reason


_WHOLE = "whole"  # a non-spatial layer: every unit sees the whole input


def _union(a, b):
    if isinstance(a, _Unknown) or a is None:
        return a if a is not None else b
    if isinstance(b, _Unknown):
        return b
    if a == _WHOLE or b == _WHOLE:
        return _WHOLE
    out = []
    for (sa, lo_a, hi_a), (sb, lo_b, hi_b) in zip(a, b):
        if not math.isclose(sa, sb):
            return _Unknown(f"its inputs have different strides ({_num(sa)} and {_num(sb)})")
        out.append((sa, min(lo_a, lo_b), max(hi_a, hi_b)))
    return tuple(out)


def _num(v):
    return int(v) if float(v).is_integer() else round(float(v), 4)


def _out_size(n_in, k, s, p0, p1, d):
    span = n_in + p0 + p1 - d * (k - 1) - 1
    return {span // s + 1, -(-span // s) + 1}  # floor and ceil mode


def _grid(record):
    """(H, W) of a spatial record (channels first or last), else None."""
    shape = record.shape
    if shape is None or len(shape) != 3 or None in shape:
        return None
    if record.layout == "hwc":
        return tuple(shape[:2])
    if record.layout in ("", "chw"):
        return tuple(shape[1:])
    return None


def _is_gate(parent, grid):
    """A (C, 1, 1) input of a layer whose map is larger: a broadcast factor, not a branch."""
    g = _grid(parent) if parent is not None else None
    return g == (1, 1) and grid is not None and grid != (1, 1)


def _step(r, field, parent_grid):
    """The field of ``r`` from its input's field, by ``r``'s geometry."""
    grid = _grid(r)
    what = f"{r.op or r.kind} layer {r.name!r}"
    if r.kind == "upsample":
        f = r.stride or (1, 1)
        return tuple((S / f[i], a - S, b + S) for i, (S, a, b) in enumerate(field))
    k, s, d = r.kernel, r.stride or (1, 1), r.dilation or (1, 1)
    pad = r.padding or (0, 0, 0, 0)
    if r.kind == "deconv":
        return tuple((S / s[i], a + S * (pad[i] - d[i] * (k[i] - 1)) / s[i], b + S * pad[i] / s[i])
                     for i, (S, a, b) in enumerate(field))
    if parent_grid is not None and grid is not None:
        for axis in (0, 1):
            if grid[axis] not in _out_size(parent_grid[axis], k[axis], s[axis], pad[axis], pad[axis + 2], d[axis]):
                return _Unknown(f"the {what} maps its input of size {parent_grid} to {grid}, which its kernel, "
                                "stride and padding do not give; the backend's data flow is incomplete")
    return tuple((S * s[i], a - S * pad[i], b + S * (d[i] * (k[i] - 1) - pad[i])) for i, (S, a, b) in enumerate(field))


def field_geometry(records) -> dict:
    """``{layer name: ((S, a, b) for rows, (S, a, b) for columns)}`` for every layer, in the
    notation of the module docstring; ``"whole"`` for non-spatial layers. Layers whose
    field the records do not determine map to an object with a ``reason``."""
    records = list(records)
    by_name = {r.name: r for r in records}
    geo = {INPUT: ((1, 0, 0), (1, 0, 0))}
    first = next((r.name for r in records if r.kind != "block"), None)
    previous = None
    for index, r in enumerate(records):
        inner = (r.name + ".", r.name + "/")
        if r.kind == "block" and not any(p.startswith(inner) for p in r.inputs):
            # a container whose data flow names none of its children: take its last child's output
            child = next((c.name for c in reversed(records[:index]) if c.name.startswith(inner)), None)
            if child is not None or not r.inputs:
                geo[r.name] = geo.get(child, _Unknown(f"block {r.name!r} reports no children and no inputs"))
                previous = r.name
                continue
        grid = _grid(r)
        parents = list(r.inputs) or ([INPUT] if r.name == first or previous is None else [previous])
        branches = [p for p in parents if not _is_gate(by_name.get(p), grid)] or parents
        field = None
        for p in branches:
            field = _union(field, geo.get(p, _Unknown(f"its input {p!r} is not a listed layer")))
        parent = by_name.get(branches[0]) if len(branches) == 1 else None
        parent_grid = _grid(parent) if parent is not None else None
        if r.shape is None:
            pass  # unknown shape: keep the input's field
        elif grid is None:
            field = _WHOLE  # a token sequence, a vector: every unit sees the whole image
        elif isinstance(field, _Unknown) or field == _WHOLE:
            pass
        elif r.kernel is not None or r.kind == "upsample":
            field = _step(r, field, parent_grid)
        elif parent_grid is not None and parent_grid != grid:
            field = _Unknown(f"the {r.op or r.kind} layer {r.name!r} changes the spatial size ({parent_grid} -> {grid}) "
                             "without reporting kernel, stride and padding")
        geo[r.name] = field
        previous = r.name
    return geo


def unit_boxes(backend, layer: str, ys, xs, *, owner: str = "receptive_field"):
    """Full fields of units ``(ys[i], xs[i])`` of ``layer``: arrays (top, left, bottom, right),
    half-open, unclipped, rounded outwards to whole pixels; and the stride (S_rows, S_cols),
    an int where it is whole (a float after upsampling)."""
    geo = field_geometry(backend.layers())
    field = geo.get(layer)
    if isinstance(field, _Unknown):
        raise ValueError(f"The receptive field of {layer!r} cannot be computed from the layer records: "
                         f"{field.reason}.")
    if field is None or field == _WHOLE:
        raise param_error("layer", owner, "a layer with a spatial (C, H, W) output", f"{layer!r}")
    (sy, ay, by), (sx, ax, bx) = field
    ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
    box = (np.floor(sy * ys + ay), np.floor(sx * xs + ax), np.ceil(sy * ys + by) + 1, np.ceil(sx * xs + bx) + 1)
    return tuple(v.astype(np.int64) for v in box), (_num(sy), _num(sx))


def receptive_field(model, layer: str, y: int, x: int, *, image_size: tuple | None = None) -> ReceptiveField:
    """The input box that unit ``(y, x)`` of ``layer`` sees (any channel: the box is the
    same for all), from the conv/pool geometry in ``load(model).layers()``.

    ``image_size`` (H, W) clips the box to the image; the layer's grid is the one the
    backend reports (for PyTorch, the size of the last batch it ran, or ``input_shape``).
    See the module docstring for the formulas.
    """
    backend = load(model)
    records = backend.layers()
    check_name(layer, [r.name for r in records], "layer", "receptive_field")
    record = next(r for r in records if r.name == layer)
    grid = _grid(record)
    if grid is None:
        raise param_error("layer", "receptive_field", "a layer with a spatial (C, H, W) output",
                          f"{layer!r} of shape {record.shape}")
    y = check_int(y, "y", "receptive_field", low=0, high=grid[0] - 1)
    x = check_int(x, "x", "receptive_field", low=0, high=grid[1] - 1)
    (t, l, b, r), stride = unit_boxes(backend, layer, y, x)
    box = (int(t), int(l), int(b), int(r))
    clipped = None
    if image_size is not None:
        h, w = int(image_size[0]), int(image_size[1])
        clipped = (max(box[0], 0), max(box[1], 0), min(box[2], h), min(box[3], w))
    return ReceptiveField(layer=layer, y=y, x=x, box=box, clipped=clipped, stride=tuple(stride))
