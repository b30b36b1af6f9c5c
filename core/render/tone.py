"""Tone mapping: how raw maps (saliency, activations, filters) become values in [0, 1].

Every mode is explicit, because the same map looks very different under each:

- ``"none"``: values are used as they are (clipped to [0, 1] when drawn).
- ``"minmax"``: per map, ``(m - min(m)) / (max(m) - min(m))``.
- ``"batch"``: one scale for all maps, ``(m - min(all)) / (max(all) - min(all))``, so maps
  can be compared with each other.
- ``"symmetric"``: for signed maps, ``0.5 + m / (2 max|m|)`` per map: zero is mid-grey (or
  the centre of a diverging colour map), the sign is kept.
- ``"symmetric-batch"``: as ``"symmetric"`` with one ``max|m|`` over the batch.
- ``"percentile"``: per map, clip to the ``percentile`` of ``|m|`` (default 99), then
  divide by it: one hot pixel no longer washes out the rest (Smilkov et al., SmoothGrad).
"""
from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_number

__all__ = ["normalize", "TONE_MODES"]

TONE_MODES = ("none", "minmax", "batch", "symmetric", "symmetric-batch", "percentile")


def _safe_divide(a, b):
    b = np.asarray(b, dtype=np.float32)
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float32), where=b > 0)


def normalize(maps: np.ndarray, mode: str = "minmax", *, percentile: float = 99.0, batch_axis: bool = True) -> np.ndarray:
    """Map ``maps`` to [0, 1] under ``mode`` (see the module docstring for the formulas).

    ``maps`` is (N, ...) with the first axis the batch when ``batch_axis``; otherwise one
    map. A constant map becomes zeros (``"minmax"``) or 0.5 (symmetric modes), never NaN.
    """
    check_choice(mode, TONE_MODES, "mode", "normalize")
    m = np.asarray(maps, dtype=np.float32)
    if not batch_axis:
        return normalize(m[None], mode, percentile=percentile)[0]
    if m.ndim == 0 or m.size == 0:
        raise ValueError(f"The 'maps' parameter of normalize must be a non-empty array. Got shape {m.shape} instead.")
    axes = tuple(range(1, m.ndim))
    keep = dict(axis=axes, keepdims=True)
    if mode == "none":
        return m
    if mode == "minmax":
        lo = m.min(**keep)
        return _safe_divide(m - lo, m.max(**keep) - lo)
    if mode == "batch":
        lo = m.min()
        return _safe_divide(m - lo, m.max() - lo)
    if mode in ("symmetric", "symmetric-batch"):
        peak = np.abs(m).max(**keep) if mode == "symmetric" else np.abs(m).max()
        return 0.5 + 0.5 * _safe_divide(m, peak)
    q = check_number(percentile, "percentile", "normalize", low=0, strict=True)
    if q > 100:
        raise ValueError(f"The 'percentile' parameter of normalize must be <= 100. Got {percentile} instead.")
    top = np.percentile(np.abs(m).reshape(len(m), -1), q, axis=1).reshape((-1,) + (1,) * len(axes))
    signed = (m < 0).any()
    clipped = np.clip(m, -top, top)
    return 0.5 + 0.5 * _safe_divide(clipped, top) if signed else _safe_divide(clipped, top)
