"""The pointing game (Zhang et al. 2016): a hit when a map's maximum lies on the object."""
from __future__ import annotations

import numpy as np

from .._validate import check_int, describe, param_error
from .registry import register_metric
from .result import MetricScores

__all__ = ["pointing_game", "as_maps", "dilate"]


def as_maps(maps, owner: str, size=None) -> np.ndarray:
    """(N, H, W) float32 from an array or an :class:`~convscope.attribution.AttributionMaps`,
    resized (bilinear) to ``size`` when given and different."""
    from ..render import resize

    m = np.asarray(getattr(maps, "maps", maps), dtype=np.float32)
    if m.ndim != 3:
        raise param_error("maps", owner, "(N, H, W) maps or an AttributionMaps result", f"shape {m.shape}")
    if size is not None and tuple(m.shape[1:]) != tuple(size):
        m = resize(m, tuple(size))
    return m


def dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Grow (N, H, W) bool masks by every pixel within Euclidean distance ``radius``."""
    if radius <= 0:
        return masks
    out = masks.copy()
    h, w = masks.shape[1:]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy or dx) and dy * dy + dx * dx <= radius * radius:
                ys, yd = slice(max(0, -dy), min(h, h - dy)), slice(max(0, dy), min(h, h + dy))
                xs, xd = slice(max(0, -dx), min(w, w - dx)), slice(max(0, dx), min(w, w + dx))
                out[:, yd, xd] |= masks[:, ys, xs]
    return out


def pointing_game(maps, masks, *, tolerance: int = 0, per_sample: bool = False):
    """Fraction of maps whose maximum falls on the ground-truth mask.

    A hit when the peak lies within ``tolerance`` pixels (Euclidean) of a mask pixel; Zhang
    et al. use 15 pixels on ~224-pixel images (about 4 on 64-pixel ones). When several pixels
    share the maximum (blocky maps such as occlusion's), the sample is a hit when at least
    half of them are. A map drawn at random scores about the fraction of the image the
    (grown) masks cover: that is chance.

    Parameters
    ----------
    maps : (N, H, W) array or AttributionMaps
        Resized bilinearly to the masks' size when they differ.
    masks : (N, H, W) bool
    per_sample : bool
        Return the (N,) bool hits instead of their mean.
    """
    masks = np.asarray(masks)
    if masks.ndim != 3 or masks.dtype != bool:
        raise param_error("masks", "pointing_game", "a boolean (N, H, W) array", f"{masks.dtype} shape {masks.shape}")
    m = as_maps(maps, "pointing_game", masks.shape[1:])
    if len(m) != len(masks):
        raise param_error("masks", "pointing_game", f"one mask per map ({len(m)})", f"{len(masks)} masks")
    tolerance = check_int(tolerance, "tolerance", "pointing_game", low=0)
    if not isinstance(per_sample, (bool, np.bool_)):
        raise param_error("per_sample", "pointing_game", "True or False", describe(per_sample), TypeError)
    grown = dilate(masks, tolerance)
    flat = m.reshape(len(m), -1)
    peak = flat == np.nanmax(flat, axis=1, keepdims=True)
    on = (peak & grown.reshape(len(m), -1)).sum(axis=1)
    hits = 2 * on >= peak.sum(axis=1)
    hits &= peak.any(axis=1)  # an all-NaN map points nowhere
    return hits if per_sample else float(hits.mean())


@register_metric("pointing_game", "localisation", higher_is_better=True, needs=("maps", "masks"))
def _pointing_scores(maps, masks, **options):
    """Pointing game: 1 when a map's peak lies on the object (within ``tolerance``), else 0."""
    hits = pointing_game(maps, masks, per_sample=True, **options)
    return MetricScores("pointing_game", hits.astype(np.float64), True, dict(options))
