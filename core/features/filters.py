"""Pictures of convolution filters.

A first-layer filter (O, 3, kh, kw) on RGB input is shown as one colour tile per filter;
a deeper filter is a grid of grey kernels, one row per output channel and one column per
input channel. How weights become grey levels is an explicit choice (``scale``), because
it changes what the picture says:

- ``"each"`` (per filter): ``(w - min_o) / (max_o - min_o)`` over filter o. Every filter
  gets full contrast, so a filter with tiny weights looks as strong as the strongest one.
- ``"layer"`` (shared): one min and max over the layer. Strengths compare, but zero has no
  fixed grey: it sits wherever the layer's range puts it.
- ``"symmetric"``: ``0.5 + w / (2 max|w|)`` over the layer. Zero is mid-grey, positive
  weights lighter, negative darker, and strengths compare.
- ``"symmetric-each"``: as ``"symmetric"`` with ``max|w|`` per filter.
"""
from __future__ import annotations

import numpy as np

from .._plugins import load
from .._validate import check_int, param_error
from ..render import Renderable, grid
from ._common import caption, layer_record, scale_values, zoom, zoom_factor

__all__ = ["filters", "Filters"]


class Filters(Renderable):
    """Filter weights (O, I, kh, kw) of one layer and how to draw them.

    ``rgb`` is True when each filter is drawn as one colour tile (three input channels);
    ``values`` holds the weights mapped to [0, 1] under ``scale``, same shape.
    """

    def __init__(self, layer, weights, scale, rgb, tile):
        self.layer, self.weights, self.scale, self.rgb, self.tile = layer, weights, scale, rgb, tile
        self.values = scale_values(weights, scale, "filters")

    def __repr__(self):
        o, i, kh, kw = self.weights.shape
        return f"Filters(layer={self.layer!r}, {o}x{i}x{kh}x{kw}, scale={self.scale!r}, rgb={self.rgb})"

    def to_rgb(self) -> np.ndarray:
        o, i, kh, kw = self.values.shape
        f = zoom_factor(max(kh, kw), self.tile)
        if self.rgb:
            tiles = [zoom(v.transpose(1, 2, 0), f) for v in self.values]
            return caption(grid(tiles, ncols=int(np.ceil(np.sqrt(o))), pad=1),
                           f"{self.layer} ({self.scale})")
        th, tw = kh * f, kw * f
        out = np.ones((o * (th + 1) + 1, i * (tw + 1) + 1, 3), np.float32)
        for r in range(o):
            for c in range(i):
                out[1 + r * (th + 1):(r + 1) * (th + 1), 1 + c * (tw + 1):(c + 1) * (tw + 1)] = \
                    zoom(self.values[r, c], f)[..., None]
        return caption(out, f"{self.layer}: {o} out x {i} in ({self.scale})")


def _conv_weight(backend, layer, owner):
    params = backend.weights(layer)
    weight = params.get("weight")
    if weight is None or np.ndim(weight) != 4:
        weight = next((v for v in params.values() if np.ndim(v) == 4), None)
    if weight is None:
        found = ", ".join(f"{k} {np.shape(v)}" for k, v in params.items()) or "no parameters"
        raise param_error("layer", owner, "a convolution layer with 4-d weights (O, I, kh, kw)",
                          f"{layer!r} with {found}")
    return np.asarray(weight, np.float32)


def filters(model, layer: str | None = None, *, scale: str = "each", rgb: bool | None = None,
            max_out: int | None = None, max_in: int | None = None, tile: int = 12) -> Filters:
    """The filters of a convolution layer as a picture.

    ``layer`` defaults to the first convolution. ``rgb`` (default: when the filters have
    three input channels) draws each filter as one colour tile; otherwise each kernel is
    a grey tile in an (out x in) grid. ``scale`` is ``"each"``, ``"layer"``,
    ``"symmetric"`` or ``"symmetric-each"`` (see the module docstring for the formulas).
    ``max_out``/``max_in`` keep the first output/input channels of a large layer; ``tile``
    is the least size in pixels of one kernel in the picture.
    """
    owner = "filters"
    backend = load(model)
    if layer is None:
        layer = next((r.name for r in backend.layers() if r.kind == "conv"), None)
        if layer is None:
            raise param_error("layer", owner, "given: the model has no layer of kind 'conv'", "None")
    else:
        layer_record(backend, layer, owner)
    weight = _conv_weight(backend, layer, owner)
    if max_out is not None:
        weight = weight[: check_int(max_out, "max_out", owner, low=1)]
    if max_in is not None:
        weight = weight[:, : check_int(max_in, "max_in", owner, low=1)]
    if rgb is None:
        rgb = weight.shape[1] == 3
    elif rgb and weight.shape[1] != 3:
        raise param_error("rgb", owner, "False for filters that do not have 3 input channels",
                          f"True for filters of shape {weight.shape}")
    return Filters(layer, weight, scale, bool(rgb), check_int(tile, "tile", owner, low=1))
