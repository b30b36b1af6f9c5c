"""Small pieces shared by the feature pictures: layer lookup, value scaling, tiles, captions."""
from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_int, check_name, param_error
from ..render import normalize

#: How raw values (weights, activations) become grey levels, see :func:`scale_values`.
SCALES = ("each", "layer", "symmetric", "symmetric-each")
_TONE = {"each": "minmax", "layer": "batch", "symmetric": "symmetric-batch", "symmetric-each": "symmetric"}


def scale_values(values: np.ndarray, scale: str, owner: str) -> np.ndarray:
    """Map (N, ...) values to [0, 1], one tile per first-axis entry.

    - ``"each"``: per tile, ``(v - min) / (max - min)``: full contrast for every tile, but
      a weak tile looks as strong as a strong one;
    - ``"layer"``: one ``min``/``max`` over all tiles, so tiles compare;
    - ``"symmetric"``: ``0.5 + v / (2 max|v|)`` with one ``max|v|`` over all tiles: zero is
      mid-grey, positive lighter, negative darker, and tiles compare;
    - ``"symmetric-each"``: as ``"symmetric"`` with ``max|v|`` per tile.
    """
    check_choice(scale, SCALES, "scale", owner)
    return normalize(values, _TONE[scale])


def layer_record(backend, layer: str, owner: str):
    """The backend's record of ``layer``; unknown names list the close matches."""
    records = backend.layers()
    check_name(layer, [r.name for r in records], "layer", owner)
    return next(r for r in records if r.name == layer)


def channel_list(channels, n_channels: int, owner: str) -> list:
    """``None`` (all), an int or a sequence of ints, each checked to lie in [0, n_channels)."""
    if channels is None:
        return list(range(n_channels))
    if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
        channels = [channels]
    try:
        channels = list(channels)
    except TypeError:
        raise param_error("channels", owner, "None, an int or a sequence of ints", repr(channels), TypeError) from None
    if not channels:
        raise param_error("channels", owner, "a non-empty sequence of channel indices", "[]")
    for c in channels:
        check_int(c, "channels", owner, low=0, high=n_channels - 1)
    return [int(c) for c in channels]


def zoom(tile: np.ndarray, factor: int) -> np.ndarray:
    """Enlarge an (H, W, ...) tile by an integer factor, nearest pixels."""
    if factor <= 1:
        return tile
    return np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)


def zoom_factor(size: int, target: int) -> int:
    """The integer factor that brings ``size`` pixels to at least ``target``."""
    return max(1, -(-int(target) // max(int(size), 1)))


def caption(rgb: np.ndarray, text: str, *, height: int = 14) -> np.ndarray:
    """``rgb`` with a white strip of ``text`` above it (Pillow's built-in font); the picture
    is widened with white when the text is wider than it."""
    from PIL import Image, ImageDraw

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(rgb.shape[1], int(np.ceil(probe.textlength(text))) + 4)
    strip = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(strip).text((2, 1), text, fill=(0, 0, 0))
    top = np.asarray(strip, dtype=np.float32) / 255.0
    body = np.ones((rgb.shape[0], width, 3), np.float32)
    body[:, : rgb.shape[1]] = np.clip(rgb, 0, 1)
    return np.concatenate([top, body], axis=0)


def _join(panels, axis: int, pad: int) -> np.ndarray:
    """Panels (H_i, W_i, 3) joined along ``axis`` (1: a row, 0: a column) on white, aligned
    at the top-left corner, ``pad`` pixels apart."""
    across = 1 - axis
    size = [0, 0]
    size[axis] = sum(p.shape[axis] for p in panels) + pad * (len(panels) - 1)
    size[across] = max(p.shape[across] for p in panels)
    out = np.ones((*size, 3), np.float32)
    at = 0
    for p in panels:
        index = [slice(0, p.shape[0]), slice(0, p.shape[1])]
        index[axis] = slice(at, at + p.shape[axis])
        out[tuple(index)] = p
        at += p.shape[axis] + pad
    return out


def side_by_side(panels, *, pad: int = 8) -> np.ndarray:
    """Panels (H_i, W_i, 3) in one row on a white background, aligned at the top."""
    return _join(panels, 1, pad)


def stacked(panels, *, pad: int = 8) -> np.ndarray:
    """Panels in one column on a white background, aligned left."""
    return _join(panels, 0, pad)
