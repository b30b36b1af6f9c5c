"""Random transforms for transformation robustness: jitter, scale, rotation.

Each step draws one affine map (a shift of up to ``jitter`` pixels, a scale from
``scales``, an angle in degrees from ``angles``) and resamples the image with it before
the pass, keeping the size (positions outside the image are mirrored back in, so a
fixed-size model still gets its size). Resampling is bilinear, a linear map ``x' = A x``;
:meth:`Sampling.adjoint` applies ``A^T`` to carry the gradient at ``x'`` back to ``x``
exactly (a dot-product identity checks it in the tests). With the defaults a step costs
one gather and one scatter over the image.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_int, param_error

__all__ = ["Transforms", "Sampling", "STANDARD", "NONE"]


def _mirror(i, n):
    """Reflect indices into [0, n - 1] (... 2 1 0 1 2 ... n-2 n-1 n-2 ...)."""
    if n == 1:
        return np.zeros_like(i)
    if i.min() < 0 or i.max() > n - 1:
        period = 2 * (n - 1)
        i = np.mod(i, period)
        i = np.where(i >= n, period - i, i)
    return i


_GRIDS: dict = {}


def _grid(h, w):
    """Pixel coordinates relative to the image centre, cached per size."""
    if (h, w) not in _GRIDS:
        if len(_GRIDS) > 8:
            _GRIDS.clear()
        _GRIDS[h, w] = np.meshgrid(np.arange(h, dtype=np.float32) - np.float32((h - 1) / 2.0),
                                   np.arange(w, dtype=np.float32) - np.float32((w - 1) / 2.0), indexing="ij")
    return _GRIDS[h, w]


class Sampling:
    """One drawn transform, as bilinear gather indices and weights over (H, W)."""

    def __init__(self, size, dy=0.0, dx=0.0, scale=1.0, angle=0.0):
        h, w = size
        self.size = (h, w)
        self.params = dict(dy=float(dy), dx=float(dx), scale=float(scale), angle=float(angle))
        self.identity = dy == 0 and dx == 0 and scale == 1 and angle == 0
        if self.identity:
            return
        cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
        yy, xx = _grid(h, w)
        theta = np.deg2rad(angle)
        cos, sin = np.float32(np.cos(theta) / scale), np.float32(np.sin(theta) / scale)
        # output pixel p shows input point R(-angle) p / scale + centre - shift
        sy = cos * yy - sin * xx + np.float32(cy - dy)
        sx = sin * yy + cos * xx + np.float32(cx - dx)
        y0, x0 = np.floor(sy), np.floor(sx)
        fy, fx = sy - y0, sx - x0
        y0, x0 = y0.astype(np.int32), x0.astype(np.int32)
        ys = [_mirror(y0, h) * w, _mirror(y0 + 1, h) * w]
        xs = [_mirror(x0, w), _mirror(x0 + 1, w)]
        self.index = np.stack([(ys[a] + xs[b]).ravel() for a in (0, 1) for b in (0, 1)])
        wy, wx = [1 - fy, fy], [1 - fx, fx]
        self.weight = np.stack([(wy[a] * wx[b]).ravel() for a in (0, 1) for b in (0, 1)])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``A x`` for images (N, C, H, W)."""
        if self.identity:
            return x
        flat = x.reshape(x.shape[0] * x.shape[1], -1)
        out = (np.take(flat, self.index, axis=1) * self.weight).sum(axis=1)
        return out.reshape(x.shape).astype(np.float32, copy=False)

    def adjoint(self, g: np.ndarray) -> np.ndarray:
        """``A^T g``: the gradient at the untransformed image."""
        if self.identity:
            return g
        n, c, h, w = g.shape
        flat = g.reshape(n * c, 1, h * w) * self.weight  # (rows, 4, HW)
        index = self.index.ravel()
        out = np.empty((n * c, h * w), np.float32)
        for row in range(n * c):
            out[row] = np.bincount(index, weights=flat[row].ravel(), minlength=h * w)
        return out.reshape(g.shape)


class Transforms:
    """A random transform per step: ``jitter`` (max shift in pixels), ``scales`` and
    ``angles`` (degrees) to draw from uniformly."""

    def __init__(self, jitter=0, scales=(1.0,), angles=(0.0,), owner="visualize"):
        self.jitter = check_int(jitter, "jitter", owner, low=0)
        self.scales = tuple(float(s) for s in scales)
        self.angles = tuple(float(a) for a in angles)
        if not self.scales or min(self.scales) <= 0:
            raise param_error("scales", owner, "a non-empty sequence of positive scale factors", repr(scales))
        if not self.angles:
            raise param_error("angles", owner, "a non-empty sequence of angles in degrees", repr(angles))

    @property
    def active(self) -> bool:
        return self.jitter > 0 or self.scales != (1.0,) or self.angles != (0.0,)

    def sample(self, rng: np.random.Generator, size) -> Sampling:
        if not self.active:
            return Sampling(size)
        dy, dx = (rng.integers(-self.jitter, self.jitter + 1, size=2) if self.jitter else (0, 0))
        scale = self.scales[rng.integers(len(self.scales))]
        angle = self.angles[rng.integers(len(self.angles))]
        return Sampling(size, dy, dx, scale, angle)

    def __repr__(self):
        return f"Transforms(jitter={self.jitter}, scales={self.scales}, angles={self.angles})"


#: Lucid's standard robustness: jitter 8, scale 0.9 .. 1.1, rotation -10 .. 10 degrees.
STANDARD = dict(jitter=8, scales=tuple(1 + (i - 5) / 50 for i in range(11)), angles=tuple(range(-10, 11)))
NONE = dict(jitter=0, scales=(1.0,), angles=(0.0,))
