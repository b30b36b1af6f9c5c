"""What replaces removed pixels: in occlusion windows, and in deletion/insertion curves."""
from __future__ import annotations

import numpy as np

from .._validate import check_number, describe, param_error

__all__ = ["gaussian_blur", "fill_images", "FILLS"]

FILLS = ("mean", "zero", "blur")


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the last two axes, ``exp(-d^2 / 2 sigma^2)`` truncated at
    ``3 sigma``, with reflected borders (as ``scipy.ndimage.gaussian_filter``, mode 'reflect')."""
    a = np.asarray(images, np.float32)
    if sigma <= 0:
        return a.copy()
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    for axis in (-2, -1):
        n = a.shape[axis]
        pad = [(0, 0)] * a.ndim
        pad[axis] = (radius, radius)
        # 'symmetric' repeats the edge pixel: scipy's 'reflect'; tiny images fall back to 'edge'
        padded = np.pad(a, pad, mode="symmetric" if n >= radius else "edge")
        out = np.zeros_like(a)
        for i, t in enumerate(taps):
            out += t * np.take(padded, np.arange(i, i + n), axis=axis)
        a = out
    return a


def fill_images(x: np.ndarray, fill, owner: str, *, sigma: float, param: str = "fill") -> np.ndarray:
    """The (N, C, H, W) images whose pixels replace removed ones.

    ``fill``: ``"mean"`` each image's own per-channel mean; ``"zero"``; ``"blur"`` a Gaussian
    blur of the image (``sigma`` pixels); a number; or a per-channel sequence (C,), e.g. a
    dataset's mean colour.
    """
    n, c, h, w = x.shape
    if isinstance(fill, str):
        if fill == "mean":
            return np.broadcast_to(x.mean(axis=(2, 3), keepdims=True), x.shape).astype(np.float32)
        if fill == "zero":
            return np.zeros_like(x)
        if fill == "blur":
            return gaussian_blur(x, sigma)
        raise param_error(param, owner, "'mean', 'zero', 'blur', a number or one value per channel", repr(fill))
    if isinstance(fill, (int, float, np.integer, np.floating)) and not isinstance(fill, bool):
        return np.full_like(x, check_number(fill, param, owner))
    values = np.asarray(fill, np.float32) if not isinstance(fill, bool) else np.zeros(0)
    if values.shape != (c,) or not np.isfinite(values).all():
        raise param_error(param, owner, f"'mean', 'zero', 'blur', a number or {c} finite values (one per channel)",
                          describe(fill))
    return np.broadcast_to(values[None, :, None, None], x.shape).astype(np.float32)
