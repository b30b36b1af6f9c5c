"""Receptive fields from the layer geometry the backend reports.

Along each axis, a unit at position ``y`` of a layer sees the input rows
``[S y + a, S y + b]`` (inclusive), where the jump ``S`` and the offsets ``a <= b`` follow
from the conv and pool layers on the way, composed in execution order. A layer with
kernel ``k``, stride ``s``, padding ``p_top`` and dilation ``d``, whose input has
``(S_in, a_in, b_in)``, gives::

    S = S_in s,    a = a_in - S_in p_top,    b = b_in + S_in (d (k - 1) - p_top)

(the unit covers rows ``[s y - p_top, s y - p_top + d (k - 1)]`` of its own input).
Pointwise layers (ReLU, BatchNorm, adds) keep their input's field; where a layer has
several inputs (a residual add) the field is the union, ``min a`` and ``max b``. Offsets
may fall outside the image: that part of the field is padding.
"""
from __future__ import annotations

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
        if sa != sb:
            return _Unknown(f"its inputs have different strides ({sa} and {sb})")
        out.append((sa, min(lo_a, lo_b), max(hi_a, hi_b)))
    return tuple(out)


def _out_size(n_in, k, s, p0, p1, d):
    span = n_in + p0 + p1 - d * (k - 1) - 1
    return {span // s + 1, -(-span // s) + 1}  # floor and ceil mode


def field_geometry(records) -> dict:
    """``{layer name: ((S, a, b) for rows, (S, a, b) for columns)}`` for every layer, in the
    notation of the module docstring; ``"whole"`` for non-spatial layers. Layers whose
    field the records do not determine map to an object with a ``reason``."""
    records = list(records)
    by_name = {r.name: r for r in records}
    geo = {INPUT: ((1, 0, 0), (1, 0, 0))}
    first = next((r.name for r in records if r.kind != "block"), None)
    previous = None
    for r in records:
        if r.kind == "block":  # a container: its output is its last child's
            before = records[: records.index(r)]
            child = next((c.name for c in reversed(before) if c.name.startswith((r.name + ".", r.name + "/"))), None)
            geo[r.name] = geo.get(child, _Unknown(f"block {r.name!r} reports no children"))
            previous = r.name
            continue
        parents = list(r.inputs) or ([INPUT] if r.name == first or previous is None else [previous])
        field = None
        for p in parents:
            field = _union(field, geo.get(p, _Unknown(f"its input {p!r} is not a listed layer")))
        parent_shape = None
        if len(parents) == 1 and parents[0] in by_name:
            parent_shape = by_name[parents[0]].shape
        if r.shape is None or len(r.shape) != 3:
            field = _WHOLE if r.shape is not None else field
        elif isinstance(field, _Unknown) or field == _WHOLE:
            pass
        elif r.kernel is not None:
            k, s, d = r.kernel, r.stride or (1, 1), r.dilation or (1, 1)
            pad = r.padding or (0, 0, 0, 0)
            if parent_shape is not None and len(parent_shape) == 3:
                for axis in (0, 1):
                    if r.shape[1 + axis] not in _out_size(parent_shape[1 + axis], k[axis], s[axis], pad[axis],
                                                          pad[axis + 2], d[axis]):
                        field = _Unknown(f"its recorded input {parents[0]!r} of shape {parent_shape} does not give "
                                         f"its shape {r.shape}; the backend's data flow is incomplete")
                        break
            if not isinstance(field, _Unknown):
                field = tuple((S * s[i], a - S * pad[i], b + S * (d[i] * (k[i] - 1) - pad[i]))
                              for i, (S, a, b) in enumerate(field))
        elif parent_shape is not None and len(parent_shape) == 3 and tuple(parent_shape[1:]) != tuple(r.shape[1:]):
            field = _Unknown(f"it changes the spatial size ({parent_shape[1:]} -> {r.shape[1:]}) without reporting "
                             "kernel, stride and padding")
        geo[r.name] = field
        previous = r.name
    return geo


def unit_boxes(backend, layer: str, ys, xs, *, owner: str = "receptive_field"):
    """Full fields of units ``(ys[i], xs[i])`` of ``layer``: arrays (top, left, bottom, right),
    half-open, unclipped; and the stride (S_rows, S_cols)."""
    geo = field_geometry(backend.layers())
    field = geo.get(layer)
    if isinstance(field, _Unknown):
        raise ValueError(f"The receptive field of {layer!r} cannot be computed from the layer records: "
                         f"{field.reason}.")
    if field is None or field == _WHOLE:
        raise param_error("layer", owner, "a layer with a spatial (C, H, W) output", f"{layer!r}")
    (sy, ay, by), (sx, ax, bx) = field
    ys, xs = np.asarray(ys, np.int64), np.asarray(xs, np.int64)
    return (sy * ys + ay, sx * xs + ax, sy * ys + by + 1, sx * xs + bx + 1), (sy, sx)


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
    shape = next(r.shape for r in records if r.name == layer)
    if shape is None or len(shape) != 3:
        raise param_error("layer", "receptive_field", "a layer with a spatial (C, H, W) output",
                          f"{layer!r} of shape {shape}")
    y = check_int(y, "y", "receptive_field", low=0, high=shape[1] - 1)
    x = check_int(x, "x", "receptive_field", low=0, high=shape[2] - 1)
    (t, l, b, r), stride = unit_boxes(backend, layer, y, x)
    box = (int(t), int(l), int(b), int(r))
    clipped = None
    if image_size is not None:
        h, w = int(image_size[0]), int(image_size[1])
        clipped = (max(box[0], 0), max(box[1], 0), min(box[2], h), min(box[3], w))
    return ReceptiveField(layer=layer, y=y, x=x, box=box, clipped=clipped, stride=tuple(int(s) for s in stride))
