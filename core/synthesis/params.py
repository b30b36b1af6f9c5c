"""Image parameterisations (Olah et al., Distill 2017, as in Lucid), in NumPy.

The optimiser works on parameters ``t``; the image is

    image = lo + (hi - lo) * squash(colour(spatial(t)))

- ``spatial``: ``"pixel"`` (``u = t``) or ``"fft"``: ``t`` holds the real and imaginary
  parts of a 2-d spectrum and ``u = irfft2(t * scale) / 4`` with
  ``scale = sqrt(H W) / max(f, 1 / max(H, W)) ** decay_power`` (``f`` the frequency
  magnitude), so that every frequency gets a step of the same size: low frequencies are
  no longer starved, and the images lose the high-frequency noise of pixel ascent.
- ``colour``: ``"rgb"`` (identity) or ``"decorrelated"``: ``v = M u`` over channels with
  the square root of ImageNet's colour covariance (normalised), so the optimiser steps
  along decorrelated colour axes.
- ``squash``: ``"sigmoid"`` (the image always lies inside the range) or ``"none"``
  (``v + 0.5``; keep it in range with ``clip`` in :func:`visualize`).

Every map is linear except the squash, and :meth:`ImageParam.backward` applies the exact
adjoint of each one (tested against a dot-product identity), so the gradient the backend
returns at the input reaches ``t`` unchanged in meaning. :meth:`ImageParam.encode` inverts
the map, for starting from an image and for operators that edit the image (blur, clipping).
"""
from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_number, param_error

__all__ = ["ImageParam", "SPATIAL", "COLOURS", "SQUASHES", "COLOR_CORRELATION"]

SPATIAL = ("pixel", "fft")
COLOURS = ("rgb", "decorrelated")
SQUASHES = ("sigmoid", "none")

#: Square root of ImageNet's RGB covariance (from Lucid), columns scaled to unit max norm.
_SVD_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float64)
COLOR_CORRELATION = (_SVD_SQRT / np.max(np.linalg.norm(_SVD_SQRT, axis=0))).astype(np.float32)
_EPS = 1e-4


def _fft_scale(h, w, decay_power):
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    return (np.sqrt(h * w) / np.maximum(freqs, 1.0 / max(h, w)) ** decay_power).astype(np.float32)


class ImageParam:
    """A parameterisation of a batch of ``shape`` = (N, C, H, W) images in ``value_range``."""

    def __init__(self, shape, *, spatial="fft", colour="decorrelated", squash="sigmoid", value_range=(0.0, 1.0),
                 decay_power=1.0, owner="visualize"):
        try:
            self.shape = tuple(int(s) for s in shape)
        except (TypeError, ValueError):
            raise param_error("shape", "ImageParam", "(N, C, H, W), four positive ints", repr(shape), TypeError) from None
        if len(self.shape) != 4 or min(self.shape) < 1:
            raise param_error("shape", "ImageParam", "(N, C, H, W), four positive ints", repr(shape))
        self.spatial = check_choice(spatial, SPATIAL, "param", owner)
        self.colour = check_choice(colour, COLOURS, "colour", owner)
        self.squash = check_choice(squash, SQUASHES, "squash", owner)
        self.lo, self.hi = value_range
        n, c, h, w = self.shape
        if self.colour == "decorrelated" and c != 3:
            raise param_error("colour", owner, "'rgb' for a model that does not take 3 channels", repr(colour))
        if self.spatial == "fft":
            self.decay_power = check_number(decay_power, "decay_power", owner, low=0)
            self._scale = _fft_scale(h, w, self.decay_power)
            last = np.full(w // 2 + 1, 2.0)  # irfft counts bins 1 .. ceil(W/2)-1 twice (Hermitian pairs)
            last[0] = 1.0
            if w % 2 == 0:
                last[-1] = 1.0
            self._adjoint_weight = (last / (h * w) * self._scale / 4.0).astype(np.float32)
            self.param_shape = (n, c, h, w // 2 + 1, 2)
        else:
            self.param_shape = self.shape
        self._matrix = COLOR_CORRELATION.astype(np.float32)
        self._inverse = np.linalg.inv(COLOR_CORRELATION.astype(np.float64)).astype(np.float32)
        self._cache = None

    # ------------------------------------------------------------------ the map
    def _spatial(self, t):
        if self.spatial == "pixel":
            return np.asarray(t, np.result_type(t, np.float32))
        spectrum = (t[..., 0] + 1j * t[..., 1]) * (self._scale / 4.0)
        return np.fft.irfft2(spectrum, s=self.shape[2:])

    def _mix(self, u, matrix):
        if self.colour == "rgb":
            return u
        n, c = u.shape[:2]
        return np.matmul(matrix.astype(u.dtype), u.reshape(n, c, -1)).reshape(u.shape)

    def image(self, t: np.ndarray) -> np.ndarray:
        """Parameters to images (N, C, H, W) float32; remembers what :meth:`backward` needs."""
        v = self._mix(self._spatial(t), self._matrix)
        if self.squash == "sigmoid":
            s = 1.0 / (1.0 + np.exp(-np.clip(v, -60, 60)))
            self._cache = s
        else:
            s = v + 0.5
            self._cache = None
        return (self.lo + (self.hi - self.lo) * s).astype(np.float32)

    def backward(self, grad_image: np.ndarray) -> np.ndarray:
        """The gradient at the parameters, from the gradient at the images of the last
        :meth:`image` call (the adjoint of each step, in reverse)."""
        g = np.asarray(grad_image, np.result_type(grad_image, np.float32)) * (self.hi - self.lo)
        if self.squash == "sigmoid":
            g = g * (self._cache * (1.0 - self._cache))
        g = self._mix(g, self._matrix.T)
        if self.spatial == "pixel":
            return g.astype(np.float32, copy=False)
        gs = np.fft.rfft2(g) * self._adjoint_weight
        out = np.empty((*gs.shape, 2), np.float32)
        out[..., 0], out[..., 1] = gs.real, gs.imag
        return out

    def encode(self, images: np.ndarray) -> np.ndarray:
        """The parameters of ``images`` (the inverse map; sigmoid inputs clipped to
        [1e-4, 1 - 1e-4] of the range)."""
        s = (np.asarray(images, np.float64) - self.lo) / (self.hi - self.lo)
        if self.squash == "sigmoid":
            s = np.clip(s, _EPS, 1 - _EPS)
            v = np.log(s) - np.log1p(-s)
        else:
            v = s - 0.5
        u = self._mix(v, self._inverse.astype(np.float64))
        if self.spatial == "pixel":
            return u.astype(np.float32)
        spectrum = np.fft.rfft2(4.0 * u) / self._scale
        return np.stack([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)

    def random(self, rng: np.random.Generator, sd: float = 0.01) -> np.ndarray:
        """Small random parameters (a nearly grey start, as Lucid)."""
        return (sd * rng.standard_normal(self.param_shape)).astype(np.float32)

    def __repr__(self):
        return f"ImageParam({self.shape}, spatial={self.spatial!r}, colour={self.colour!r}, squash={self.squash!r})"
