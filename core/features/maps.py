"""Activation maps: a layer's channels for one image, as a grid of grey pictures.

The maps ``A[n, c]`` are mapped to grey levels with the same ``scale`` options as
filters: ``"each"`` (per map), ``"layer"`` (one range over all maps of the image),
``"symmetric"`` (``0.5 + A / (2 max|A|)`` over the image's maps) and ``"symmetric-each"``.
"""
from __future__ import annotations

import numpy as np

from .._plugins import load
from .._targets import entry_images
from .._validate import check_choice, check_int, param_error
from ..render import Renderable, grid, resize, to_rgb
from ._common import SCALES, caption, channel_list, layer_record, scale_values, zoom, zoom_factor

__all__ = ["activation_maps", "ActivationMaps"]


class ActivationMaps(Renderable):
    """Activations ``maps`` (N, C', h, w) of the chosen ``channels`` of ``layer`` for
    images ``x`` (N, C, H, W). :meth:`to_rgb` draws image ``index``: the input first,
    then one grey tile per channel."""

    def __init__(self, layer, x, maps, channels, scale, tile):
        self.layer, self.x, self.maps, self.channels = layer, x, maps, channels
        self.scale, self.tile, self.index = scale, tile, 0

    def __repr__(self):
        n, c, h, w = self.maps.shape
        return f"ActivationMaps(layer={self.layer!r}, images={n}, channels={c}, {h}x{w}, scale={self.scale!r})"

    def picture(self, index: int = 0) -> np.ndarray:
        """The grid for image ``index``, (H', W', 3) in [0, 1]."""
        index = check_int(index, "index", "ActivationMaps.picture", low=0, high=len(self.maps) - 1)
        values = scale_values(self.maps[index], self.scale, "activation_maps")
        h, w = values.shape[1:]
        f = zoom_factor(max(h, w), self.tile)
        tiles = [zoom(v, f) for v in values]
        image = to_rgb(self.x[index], channels_first=True)
        image = resize(image.transpose(2, 0, 1), tiles[0].shape[:2]).transpose(1, 2, 0)
        tiles = [np.clip(image, 0, 1)] + [np.repeat(t[..., None], 3, axis=2) for t in tiles]
        return caption(grid(tiles, ncols=int(np.ceil(np.sqrt(len(tiles)))), pad=1),
                       f"{self.layer} ({self.scale}), image {index}")

    def to_rgb(self) -> np.ndarray:
        return self.picture(self.index)


def activation_maps(model, x, layer: str, *, channels=None, scale: str = "each", tile: int = 64) -> ActivationMaps:
    """The activations of ``layer`` for images ``x`` (N, C, H, W) or one image (C, H, W).

    ``channels`` picks channels (None: all); ``scale`` maps values to grey (see the
    module docstring); ``tile`` is the least size of one map in the picture (maps are
    enlarged with nearest pixels, so each unit stays a visible square).
    """
    owner = "activation_maps"
    check_choice(scale, SCALES, "scale", owner)
    if isinstance(x, np.ndarray) and x.ndim == 3:
        x = x[None]
    backend = load(model)
    x = entry_images(backend, x, owner)
    layer_record(backend, layer, owner)
    a = backend.activations(x, [layer])[layer]
    if a.ndim != 4:
        raise param_error("layer", owner, "a layer with a spatial (C, H, W) output", f"{layer!r} of shape {a.shape[1:]}")
    chosen = channel_list(channels, a.shape[1], owner)
    return ActivationMaps(layer, x, a[:, chosen], chosen, scale, check_int(tile, "tile", owner, low=1))
