"""Priors and image operators for synthesis, in NumPy.

Penalties return ``(values, grad)``: ``values`` (N,) per image, ``grad`` their gradient
with respect to the images, to be subtracted from the objective's gradient. Both are
means over pixels, so weights do not depend on the image size.

- :func:`l2_penalty`: ``mean((x - c) ** 2)`` with ``c`` the middle of the range
  (Simonyan et al. 2014: "L2 decay").
- :func:`total_variation`: ``mean_{c,i,j} ((x_{i,j+1} - x_{ij})^2 + (x_{i+1,j} - x_{ij})^2 + eps)^(beta/2)``
  (Mahendran and Vedaldi 2015; ``beta = 1`` is the usual TV, ``beta = 2`` smoother).

Operators edit the image directly (Yosinski et al. 2015):

- :func:`gaussian_blur` (every k steps), separable, reflected edges (the one in ``convscope._imageops``);
- :func:`clip_small_norm`: pixels whose norm over channels ``|x - c|`` lies at or below the
  given percentile of the image become ``c``;
- :func:`clip_small_contribution`: the same for the contribution ``|sum_ch (x - c) g|``,
  the first-order change of the objective if the pixel were set to ``c``;
- :func:`clip_range`: clip to the valid pixel range.
"""
from __future__ import annotations

import numpy as np

from .._imageops import gaussian_blur

__all__ = ["l2_penalty", "total_variation", "gaussian_blur", "clip_small_norm", "clip_small_contribution",
           "clip_range"]


def l2_penalty(x: np.ndarray, center: float = 0.0) -> tuple:
    """``mean((x - center) ** 2)`` per image and its gradient ``2 (x - center) / size``."""
    d = x.astype(np.float32) - np.float32(center)
    size = d[0].size
    return (d.reshape(len(d), -1) ** 2).mean(axis=1), (2.0 / size) * d


def total_variation(x: np.ndarray, beta: float = 2.0, eps: float = 1e-6) -> tuple:
    """The total variation ``TV_beta`` per image (formula in the module docstring) and its gradient."""
    x = np.asarray(x, np.result_type(x, np.float32))
    base = x[:, :, :-1, :-1]
    dx = x[:, :, :-1, 1:] - base
    dy = x[:, :, 1:, :-1] - base
    s = dx * dx + dy * dy + eps
    count = s[0].size
    values = (s ** (beta / 2)).reshape(len(x), -1).mean(axis=1)
    k = (beta / count) * s ** (beta / 2 - 1)  # d/d(dx) of s^(b/2)/count = b dx s^(b/2-1)/count
    gx, gy = k * dx, k * dy
    grad = np.zeros_like(x)
    grad[:, :, :-1, 1:] += gx
    grad[:, :, 1:, :-1] += gy
    grad[:, :, :-1, :-1] -= gx + gy
    return values, grad


def _clip_below(x, score, percentile, center):
    threshold = np.percentile(score.reshape(len(score), -1), percentile, axis=1)
    mask = score <= threshold[:, None, None]
    out = x.copy()
    out[np.broadcast_to(mask[:, None], x.shape)] = center
    return out


def clip_small_norm(x: np.ndarray, percentile: float, center: float = 0.0) -> np.ndarray:
    """Set pixels with ``|x - center|`` (over channels) below the percentile to ``center``."""
    if percentile <= 0:
        return x
    return _clip_below(x, np.linalg.norm(x - center, axis=1), percentile, center)


def clip_small_contribution(x: np.ndarray, grad: np.ndarray, percentile: float, center: float = 0.0) -> np.ndarray:
    """Set pixels with contribution ``|sum_ch (x - center) grad|`` below the percentile to ``center``."""
    if percentile <= 0:
        return x
    return _clip_below(x, np.abs(((x - center) * grad).sum(axis=1)), percentile, center)


def clip_range(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to the valid pixel range [low, high]."""
    return np.clip(x, low, high).astype(np.float32, copy=False)
