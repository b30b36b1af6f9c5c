"""Image operations every family shares: Gaussian blur, what replaces removed pixels (occlusion
windows, deletion and insertion curves), bilinear resizing with its exact adjoint."""
from __future__ import annotations

import numpy as np

from ._validate import check_number, describe, param_error

__all__ = ["blur_matrix", "gaussian_blur", "fill_images", "FILLS", "resize_matrix", "resize_images", "resize_adjoint"]

FILLS = ("mean", "zero", "blur")


def blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix of a 1-d Gaussian blur, ``exp(-d^2 / 2 sigma^2)`` truncated at ``3 sigma``,
    with reflected borders that repeat the edge pixel (``scipy.ndimage.gaussian_filter``'s mode
    'reflect'). A linear map, so its transpose is the blur's exact adjoint."""
    radius = max(1, int(np.ceil(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    taps = np.exp(-0.5 * (offsets / sigma) ** 2)
    taps /= taps.sum()
    m = np.zeros((n, n), np.float64)
    period = 2 * n
    for o, t in zip(offsets, taps):
        j = np.mod(np.arange(n) + o, period)  # ... 1 0 | 0 1 2 ... n-1 | n-1 n-2 ...
        j = np.where(j >= n, period - 1 - j, j)
        np.add.at(m, (np.arange(n), j), t)
    return m.astype(np.float32)


def gaussian_blur(images: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the last two axes: ``B_h x B_w^T`` with :func:`blur_matrix`."""
    a = np.asarray(images, np.float32)
    if sigma <= 0:
        return a.copy()
    bh, bw = blur_matrix(a.shape[-2], sigma), blur_matrix(a.shape[-1], sigma)
    return np.einsum("Hh,...hw,Ww->...HW", bh, a, bw, optimize=True).astype(np.float32)


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


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation matrix, align-corners False (as torch
    ``interpolate`` and :func:`convscope.render.resize`); its transpose is the adjoint."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def resize_images(x: np.ndarray, size: tuple) -> np.ndarray:
    """Bilinear resize of the last two axes: ``R_h x R_w^T``."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x.astype(np.float32, copy=True)
    rh, rw = resize_matrix(h, size[0]), resize_matrix(w, size[1])
    return np.einsum("Hh,...hw,Ww->...HW", rh, x, rw, optimize=True).astype(np.float32)


def resize_adjoint(g: np.ndarray, size: tuple) -> np.ndarray:
    """Adjoint of :func:`resize_images` from ``size`` (h, w) to g's size: ``R_h^T g R_w``."""
    H, W = g.shape[-2:]
    if (H, W) == tuple(size):
        return g.astype(np.float32, copy=True)
    rh, rw = resize_matrix(size[0], H), resize_matrix(size[1], W)
    return np.einsum("Hh,...HW,Ww->...hw", rh, g, rw, optimize=True).astype(np.float32)
