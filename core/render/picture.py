"""Results that render themselves: ``.to_rgb()``, ``.save(path)`` and ``_repr_png_`` for notebooks."""
from __future__ import annotations

import numpy as np

from .image import png_bytes, save_png, to_rgb

__all__ = ["Renderable", "Picture"]


class Renderable:
    """Mixin for results: subclasses define :meth:`to_rgb`; saving and notebook display follow."""

    #: Nearest-pixel enlargement used for notebooks, so 64-pixel tiles are not stamps.
    display_scale = 2

    def to_rgb(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def save(self, path, *, scale: int = 1):
        """Write the picture as a PNG (atomically); returns the path."""
        return save_png(self.to_rgb(), path, scale=scale)

    def _repr_png_(self) -> bytes:
        return png_bytes(self.to_rgb(), scale=self.display_scale)


class Picture(Renderable):
    """A ready picture: an (H, W, 3) RGB array in [0, 1] with a title."""

    def __init__(self, rgb: np.ndarray, title: str = ""):
        self.rgb = to_rgb(rgb)
        self.title = title

    def to_rgb(self) -> np.ndarray:
        return self.rgb

    def __repr__(self):
        return f"Picture({self.title!r}, {self.rgb.shape[1]}x{self.rgb.shape[0]})"
