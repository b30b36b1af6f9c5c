"""Incremental inference for occlusion (Nakandala, Kumar and Papakonstantinou, SIGMOD 2019,
"Incremental and Approximate Inference for Faster Occlusion-based Deep CNN Explanations").

An occluded image differs from the original only inside its window. Through a conv or pool
the difference spreads only as far as the kernels reach, so at each layer only a box of the
map (the window's projective field) has to be recomputed; everything outside it is the
original's activation. A backend that can do this offers

    backend._incremental_plan(image, window, threshold) -> plan

``image`` is one (1, C, H, W) float32 image, ``window`` the (h, w) of every patch, and
``threshold`` None (exact) or a float in (0, 1] (approximate: see :func:`through_window`).
It runs the original once, keeps what it needs, and returns an object with

* ``plan.scores(patches, corners) -> (B, K) float32``: the model's scores for the image with
  ``patches[b]`` (C, h, w) pasted at ``corners[b]`` (top, left), equal to
  ``backend.forward`` of those images within float rounding (exact mode);
* ``plan.info``: a dict for the result's ``info`` (e.g. how much of the forward's work a
  patch costs, from which layer on the whole map is recomputed).

or raises :class:`NotIncremental` naming the operator it cannot crop (a global operation
early in the network, attention, a data-dependent shape); callers then fall back to the
plain forward and say so. The box arithmetic below is shared by the backends: a batch's
boxes all have one size at each layer, so each layer is one batched call on crops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["NotIncremental", "Region", "window_region", "through_window", "union", "through_upsample",
           "window_patches", "incremental_plan"]


class NotIncremental(Exception):
    """The model (or this backend) has no incremental path; the message says why."""


@dataclass(frozen=True)
class Region:
    """The boxes of a batch on one map: ``starts`` (B, 2) top-left corners, one common
    ``size`` (h, w), on a map of ``shape`` (H, W). Every box lies inside the map."""

    starts: np.ndarray
    size: tuple
    shape: tuple

    @property
    def full(self) -> bool:
        """True when the box is the whole map (from here on, the ordinary forward)."""
        return tuple(self.size) == tuple(self.shape)


def _clamped(lo, length, n):
    """Starts ``lo`` moved so that boxes of ``length`` stay inside [0, n)."""
    return np.clip(lo, 0, n - length).astype(np.int64)


def window_region(corners, window, shape) -> Region:
    """The region of the input itself: the windows at ``corners`` (B, 2), cut at the border
    and moved inside the map (the same size for all)."""
    size = (min(window[0], shape[0]), min(window[1], shape[1]))
    corners = np.asarray(corners, np.int64).reshape(-1, 2)
    starts = np.stack([_clamped(corners[:, a], size[a], shape[a]) for a in (0, 1)], axis=1)
    return Region(starts, size, tuple(shape))


def _axis(starts, length, kernel, stride, pad_before, dilation, out_n, threshold):
    k_eff = dilation * (kernel - 1) + 1
    lo = np.maximum(0, -((-(starts + pad_before - k_eff + 1)) // stride))  # ceil division
    hi = np.minimum(out_n - 1, (starts + pad_before + length - 1) // stride)
    out_len = int(max(1, (hi - lo + 1).max(initial=1)))
    if threshold is not None and out_len > math.ceil(threshold * out_n):
        cap = max(1, math.ceil(threshold * out_n))
        lo = (lo + hi + 1) // 2 - cap // 2
        out_len = cap
    out_len = min(out_len, out_n)
    out_start = _clamped(lo, out_len, out_n)
    return out_start, out_len, out_start * stride, (out_len - 1) * stride + k_eff


def through_window(region: Region, kernel, stride, padding, dilation, out_shape, threshold=None):
    """A conv or pool: ``kernel``, ``stride``, ``dilation`` (h, w), ``padding`` (top, left,
    bottom, right), output map ``out_shape`` (H', W').

    Returns ``(out, in_starts, in_size)``: ``out`` the region of the outputs whose receptive
    field meets ``region`` (grown to one common size and moved inside the output map), and
    the input box that computes exactly those outputs, in the coordinates of the input
    PADDED by ``padding`` (``in_starts`` (B, 2), ``in_size`` (h, w); it may reach past the
    padded map's far edge only in ceil-mode pooling, which the backend pads further).

    ``threshold`` (approximate mode, Krypton's projective-field thresholding): an output box
    is cut to at most ``ceil(threshold * H')`` x ``ceil(threshold * W')`` around its centre;
    the outputs cut off keep the original's values.
    """
    axes = [_axis(region.starts[:, a], region.size[a], kernel[a], stride[a], padding[a], dilation[a],
                  out_shape[a], threshold) for a in (0, 1)]
    out = Region(np.stack([axes[0][0], axes[1][0]], axis=1), (axes[0][1], axes[1][1]), tuple(out_shape))
    return out, np.stack([axes[0][2], axes[1][2]], axis=1), (axes[0][3], axes[1][3])


def union(regions) -> Region:
    """One region holding each sample's boxes of several regions on the same map (the inputs
    of an elementwise op such as a residual addition)."""
    regions = list(regions)
    shape = regions[0].shape
    if any(r.shape != shape for r in regions):
        raise ValueError(f"union of regions on maps of different shapes: {[r.shape for r in regions]}")
    lo = np.min([r.starts for r in regions], axis=0)
    hi = np.max([r.starts + np.asarray(r.size) for r in regions], axis=0)
    size = tuple(int(v) for v in (hi - lo).max(axis=0))
    starts = np.stack([_clamped(lo[:, a], size[a], shape[a]) for a in (0, 1)], axis=1)
    return Region(starts, size, shape)


def through_upsample(region: Region, scale, out_shape, halo: int = 0) -> Region:
    """An integer-factor upsampling (``scale`` (h, w)); ``halo`` input pixels more on each side
    for interpolating modes (1 for bilinear)."""
    starts, size = [], []
    for a in (0, 1):
        lo = np.maximum(region.starts[:, a] - halo, 0) * scale[a]
        length = min(out_shape[a], (region.size[a] + 2 * halo) * scale[a])
        starts.append(_clamped(lo, length, out_shape[a]))
        size.append(length)
    return Region(np.stack(starts, axis=1), tuple(size), tuple(out_shape))


def window_patches(image, filled, corners, window):
    """Patches and corners for :meth:`plan.scores`: the window at each corner of ``corners``
    (B, 2) filled from ``filled`` (C, H, W), on ``image`` (C, H, W). A window cut at the
    border is moved inside the image and keeps the original's pixels outside the cut, so the
    pasted image is exactly the occluded one. Returns ``(patches (B, C, h, w), starts (B, 2))``."""
    c, height, width = image.shape
    region = window_region(corners, window, (height, width))
    h, w = region.size
    corners = np.asarray(corners, np.int64).reshape(-1, 2)
    rows = region.starts[:, 0, None] + np.arange(h)  # (B, h)
    cols = region.starts[:, 1, None] + np.arange(w)  # (B, w)
    inside = (((rows >= corners[:, :1]) & (rows < corners[:, :1] + window[0]))[:, :, None]
              & ((cols >= corners[:, 1:]) & (cols < corners[:, 1:] + window[1]))[:, None, :])  # (B, h, w)
    take = (slice(None), rows[:, :, None], cols[:, None, :])
    patches = np.where(inside[:, None], filled[take].transpose(1, 0, 2, 3), image[take].transpose(1, 0, 2, 3))
    return np.ascontiguousarray(patches, np.float32), region.starts


def incremental_plan(backend, image, window, threshold=None):
    """``backend._incremental_plan(...)``, or :class:`NotIncremental` when the backend has none."""
    make = getattr(backend, "_incremental_plan", None)
    if make is None:
        raise NotIncremental(f"the {getattr(backend, 'name', type(backend).__name__)} backend has no incremental path")
    return make(np.ascontiguousarray(image, np.float32), tuple(window), threshold)
