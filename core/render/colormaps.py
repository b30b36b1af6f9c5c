"""Colour maps as lookup tables, without matplotlib.

Each map is a piecewise-linear interpolation through anchor colours sampled from the
published maps (viridis and inferno: van der Walt and Smith; coolwarm: Moreland), to
within a few thousandths per channel.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_int

__all__ = ["colormap", "apply_colormap", "COLORMAPS"]

_ANCHORS = {
    "viridis": [(0.267, 0.005, 0.329), (0.283, 0.141, 0.458), (0.254, 0.265, 0.530), (0.207, 0.372, 0.553),
                (0.164, 0.471, 0.558), (0.128, 0.567, 0.551), (0.135, 0.659, 0.518), (0.267, 0.749, 0.441),
                (0.478, 0.821, 0.318), (0.741, 0.873, 0.150), (0.993, 0.906, 0.144)],
    "inferno": [(0.001, 0.000, 0.014), (0.088, 0.044, 0.224), (0.258, 0.039, 0.406), (0.416, 0.090, 0.433),
                (0.578, 0.148, 0.404), (0.735, 0.216, 0.330), (0.865, 0.317, 0.226), (0.955, 0.463, 0.107),
                (0.988, 0.645, 0.040), (0.964, 0.844, 0.273), (0.988, 0.998, 0.645)],
    "jet": [(0.0, 0.0, 0.5), (0.0, 0.0, 1.0), (0.0, 0.5, 1.0), (0.0, 1.0, 1.0), (0.5, 1.0, 0.5),
            (1.0, 1.0, 0.0), (1.0, 0.5, 0.0), (1.0, 0.0, 0.0), (0.5, 0.0, 0.0)],
    "coolwarm": [(0.230, 0.299, 0.754), (0.552, 0.690, 0.996), (0.865, 0.865, 0.865), (0.958, 0.604, 0.482),
                 (0.706, 0.016, 0.150)],
    "gray": [(0.0, 0.0, 0.0), (1.0, 1.0, 1.0)],
}
COLORMAPS = tuple(_ANCHORS)
_TABLES: dict = {}


def colormap(name: str = "viridis", n: int = 256) -> np.ndarray:
    """(n, 3) float32 RGB table of a colour map."""
    check_choice(name, COLORMAPS, "name", "colormap")
    n = check_int(n, "n", "colormap", low=2)
    key = (name, n)
    if key not in _TABLES:
        anchors = np.array(_ANCHORS[name], dtype=np.float32)
        pos = np.linspace(0, 1, len(anchors))
        t = np.linspace(0, 1, n)
        _TABLES[key] = np.stack([np.interp(t, pos, anchors[:, c]) for c in range(3)], axis=1).astype(np.float32)
    return _TABLES[key]


def apply_colormap(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """Colour values in [0, 1] (any shape S): returns S + (3,) float32 RGB in [0, 1]."""
    check_choice(name, COLORMAPS, "name", "apply_colormap")
    table = colormap(name)
    idx = np.clip(np.nan_to_num(np.asarray(values, np.float32)) * (len(table) - 1) + 0.5, 0, len(table) - 1)
    return table[idx.astype(np.intp)]
