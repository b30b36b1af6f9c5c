"""Intersection and union counts between thresholded, upsampled activation maps and concept masks.

NetDissect upsamples each activation map bilinearly to the mask resolution, thresholds it
at the unit's top-quantile value t, and counts per (unit, concept)

    I = |{p : up(a)(p) >= t} & M_c|,    U = |{p : up(a)(p) >= t}| + |M_c| - I.

Bilinear interpolation (align_corners False, as :func:`convscope.render.resize`) makes
every output pixel a convex combination of one 2 x 2 block of the map, so a block whose
largest corner is below t contributes nothing. Only blocks with a corner at or above t are
interpolated: with t at the top 0.5%, that is a few per cent of the work of upsampling
every map, and the counts are exactly those of the full computation
(:func:`convscope.render.resize`), ties included: both interpolate as ``a + f (b - a)``, rows
first, in float32, which keeps a flat region equal to t at t (a saturated ReLU6 unit, say).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["count_iou", "upsample_cells"]


@lru_cache(maxsize=16)
def upsample_cells(h: int, w: int, H: int, W: int):
    """For each 2 x 2 block (i, j) of an (h, w) map, its output pixels in an (H, W) bilinear
    upsampling: arrays (h*w, P) of pixel rows, columns, weights fy, fx, and validity."""

    def axis(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(np.int64)
        return lo, (pos - lo).astype(np.float32)

    y0, fy = axis(h, H)
    x0, fx = axis(w, W)
    rows = [np.flatnonzero(y0 == i) for i in range(h)]
    cols = [np.flatnonzero(x0 == j) for j in range(w)]
    size = max(len(r) for r in rows) * max(len(c) for c in cols)
    Y = np.zeros((h * w, size), np.int64)
    X = np.zeros((h * w, size), np.int64)
    valid = np.zeros((h * w, size), bool)
    for i in range(h):
        for j in range(w):
            yy, xx = np.meshgrid(rows[i], cols[j], indexing="ij")
            m = yy.size
            Y[i * w + j, :m], X[i * w + j, :m], valid[i * w + j, :m] = yy.ravel(), xx.ravel(), True
    return Y, X, fy[Y], fx[X], valid


def count_iou(acts: np.ndarray, masks: np.ndarray, thresholds: np.ndarray):
    """Counts for one batch: ``(intersection (U, C), above (U,))``.

    ``acts`` (N, U, h, w) float32, ``masks`` (N, C, H, W) bool, ``thresholds`` (U,).
    ``above`` is the number of upsampled pixels at or above the threshold; the union
    follows as ``above + |M_c| - intersection``.
    """
    n, units, h, w = acts.shape
    concepts, H, W = masks.shape[1:]
    Y, X, FY, FX, valid = upsample_cells(h, w, H, W)
    # edge padding: the last row/column of blocks interpolates towards a copy of itself (clamping)
    padded = np.pad(acts, ((0, 0), (0, 0), (0, 1), (0, 1)), mode="edge")
    a00, a01 = padded[:, :, :-1, :-1], padded[:, :, :-1, 1:]
    a10, a11 = padded[:, :, 1:, :-1], padded[:, :, 1:, 1:]
    corner_max = np.maximum(np.maximum(a00, a01), np.maximum(a10, a11))
    t = np.asarray(thresholds, np.float32)[None, :, None, None]
    img, unit, i, j = np.nonzero(corner_max >= t)
    inter = np.zeros((units, concepts), np.int64)
    above = np.zeros(units, np.int64)
    if len(img) == 0:
        return inter, above
    cell = i * w + j
    fy, fx = FY[cell], FX[cell]
    c00, c01 = a00[img, unit, i, j][:, None], a01[img, unit, i, j][:, None]
    c10, c11 = a10[img, unit, i, j][:, None], a11[img, unit, i, j][:, None]
    left, right = c00 + fy * (c10 - c00), c01 + fy * (c11 - c01)  # the operations of render.resize, in its order
    v = left + fx * (right - left)
    hit = (v >= t[0, unit, 0, 0][:, None]) & valid[cell]
    above += np.bincount(unit, weights=hit.sum(axis=1), minlength=units).astype(np.int64)
    r, p = np.nonzero(hit)
    if len(r):
        on = masks[img[r], :, Y[cell[r], p], X[cell[r], p]]  # (hits, C)
        np.add.at(inter, unit[r], on.astype(np.int64))
    return inter, above
