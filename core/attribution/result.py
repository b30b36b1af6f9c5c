"""The result every attribution method returns: per-sample maps that render themselves."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .._validate import check_choice, check_number, param_error
from ..render import COLORMAPS, TONE_MODES, Renderable, apply_colormap, grid, normalize, overlay, resize, to_rgb

__all__ = ["AttributionMaps", "reduce_channels", "upsample", "CHANNEL_REDUCTIONS"]

#: How a per-channel attribution (N, C, H, W) becomes one map per sample (N, H, W).
CHANNEL_REDUCTIONS = ("max-abs", "sum", "abs-sum", "signed-max")


def reduce_channels(attributions: np.ndarray, how: str) -> np.ndarray:
    """(N, C, H, W) -> (N, H, W) float32.

    ``"max-abs"``: max_c |a_c| (Simonyan et al.); ``"sum"``: sum_c a_c (signed);
    ``"abs-sum"``: sum_c |a_c|; ``"signed-max"``: the a_c of largest magnitude, sign kept.
    """
    a = np.asarray(attributions, np.float32)
    if how == "max-abs":
        return np.abs(a).max(axis=1)
    if how == "sum":
        return a.sum(axis=1)
    if how == "abs-sum":
        return np.abs(a).sum(axis=1)
    pick = np.abs(a).argmax(axis=1)[:, None]
    return np.take_along_axis(a, pick, axis=1)[:, 0]


def upsample(maps: np.ndarray, size) -> np.ndarray:
    """Bilinear resize of (N, h, w) maps to (N, H, W) (align-corners False, as torch's interpolate)."""
    return np.ascontiguousarray(resize(maps, tuple(size), order=1), dtype=np.float32)


@dataclass
class AttributionMaps(Renderable):
    """Attribution maps for a batch, with what is needed to draw and compare them.

    Attributes
    ----------
    maps : (N, H, W) float32
        One map per sample at the input's size (layer maps are upsampled bilinearly).
        Raw values: no normalisation is applied until you ask (:meth:`normalized`).
    images : (N, C, H, W) float32
        The explained inputs.
    method : str
        The function that made the maps, e.g. ``"grad_cam"``.
    target : (N,) int64 or None
        The explained class (or channel) of each sample; None for callable seeds.
    signed : bool
        True when the sign of a map carries meaning; such maps default to the
        ``"symmetric"`` tone mapping and the diverging ``"coolwarm"`` colour map.
    attributions : (N, C, H, W) float32 or None
        The per-channel attribution before the channel reduction (the raw gradient for
        saliency), when the method has one.
    outputs : (N, K) float32 or None
        Model scores of the explained images, when the method computed them.
    info : dict
        Method details: the layer, the layer-resolution maps (``"layer_maps"``), settings.

    Drawing settings (``cmap``, ``alpha``, ``tone``, ``percentile``) are used by
    :meth:`to_rgb`, :meth:`save` and notebook display; :meth:`styled` returns a copy
    with other settings.
    """

    maps: np.ndarray
    images: np.ndarray
    method: str
    target: np.ndarray | None = None
    signed: bool = False
    attributions: np.ndarray | None = None
    outputs: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    cmap: str | None = None
    alpha: float = 0.5
    tone: str | None = None
    percentile: float = 99.0

    def __post_init__(self):
        self.maps = np.ascontiguousarray(self.maps, dtype=np.float32)
        self.images = np.asarray(self.images, dtype=np.float32)
        if self.maps.ndim != 3 or self.images.ndim != 4 or len(self.maps) != len(self.images):
            raise param_error("maps", "AttributionMaps", "(N, H, W) maps for (N, C, H, W) images",
                              f"shapes {self.maps.shape} and {self.images.shape}")

    # ----------------------------------------------------------------- array-like
    def __len__(self):
        return len(self.maps)

    def __array__(self, dtype=None, copy=None):
        return self.maps if dtype is None else self.maps.astype(dtype)

    def __getitem__(self, index):
        """A sub-batch: ``result[0]``, ``result[2:5]`` or a boolean/int array."""
        if isinstance(index, (int, np.integer)):
            i = range(len(self))[index]
            index = slice(i, i + 1)

        def part(a):
            return None if a is None else a[index]

        return replace(self, maps=self.maps[index], images=self.images[index], target=part(self.target),
                       attributions=part(self.attributions), outputs=part(self.outputs),
                       info={k: (v[index] if isinstance(v, np.ndarray) and len(v) == len(self.maps) else v)
                             for k, v in self.info.items()})

    def __repr__(self):
        n, h, w = self.maps.shape
        target = "" if self.target is None else f", target={self.target.tolist() if n <= 8 else '...'}"
        layer = f", layer={self.info['layer']!r}" if "layer" in self.info else ""
        return f"AttributionMaps({self.method}, {n} maps of {h}x{w}{layer}{target})"

    # ----------------------------------------------------------------- values
    def normalized(self, tone: str | None = None, *, percentile: float | None = None) -> np.ndarray:
        """The maps mapped to [0, 1] by ``tone`` (see :func:`convscope.render.normalize`):

        ``"none"`` as they are; ``"minmax"`` per map ``(m - min) / (max - min)``; ``"batch"`` one
        scale over the batch; ``"symmetric"`` ``0.5 + m / (2 max|m|)`` for signed maps (per map),
        ``"symmetric-batch"`` with one ``max|m|``; ``"percentile"`` clip to the given percentile
        of ``|m|`` first. Default: ``"symmetric"`` for signed maps, ``"minmax"`` otherwise.
        """
        tone = tone or self.tone or ("symmetric" if self.signed else "minmax")
        check_choice(tone, TONE_MODES, "tone", "AttributionMaps.normalized")
        return normalize(self.maps, tone, percentile=self.percentile if percentile is None else percentile)

    def styled(self, *, cmap: str | None = None, alpha: float | None = None, tone: str | None = None,
               percentile: float | None = None) -> "AttributionMaps":
        """A copy with other drawing settings (the arrays are shared, not copied)."""
        if alpha is not None:
            alpha = check_number(alpha, "alpha", "AttributionMaps.styled", low=0)
            if alpha > 1:
                raise param_error("alpha", "AttributionMaps.styled", "<= 1", str(alpha))
        if tone is not None:
            check_choice(tone, TONE_MODES, "tone", "AttributionMaps.styled")
        if cmap is not None:
            check_choice(cmap, COLORMAPS, "cmap", "AttributionMaps.styled")
        if percentile is not None:
            percentile = check_number(percentile, "percentile", "AttributionMaps.styled", low=0)
            if percentile > 100:
                raise param_error("percentile", "AttributionMaps.styled", "<= 100", str(percentile))
        return replace(self, cmap=cmap or self.cmap, alpha=self.alpha if alpha is None else alpha,
                       tone=tone or self.tone, percentile=self.percentile if percentile is None else percentile)

    # ----------------------------------------------------------------- pictures
    def _cmap(self):
        return self.cmap or ("coolwarm" if self.signed else "jet")

    def heatmaps(self) -> np.ndarray:
        """(N, H, W, 3) colour pictures of the normalised maps."""
        return apply_colormap(self.normalized(), self._cmap())

    def overlays(self) -> np.ndarray:
        """(N, H, W, 3) heat maps blended over the images: ``(1 - alpha) image + alpha colour``."""
        heat = self.normalized()
        return np.stack([overlay(img, h, cmap=self._cmap(), alpha=self.alpha) for img, h in zip(self.images, heat)])

    def to_rgb(self, *, columns=("image", "heatmap", "overlay"), max_rows: int = 16, pad: int = 2) -> np.ndarray:
        """Side-by-side grid: one row per sample (at most ``max_rows``), one column per
        entry of ``columns`` ("image", "heatmap", "overlay")."""
        for c in columns:
            check_choice(c, ("image", "heatmap", "overlay"), "columns", "AttributionMaps.to_rgb")
        part = self[:max_rows]
        made = {}
        if "heatmap" in columns:
            made["heatmap"] = list(part.heatmaps())
        if "overlay" in columns:
            made["overlay"] = list(part.overlays())
        if "image" in columns:
            made["image"] = [to_rgb(img) for img in part.images]
        tiles = [made[c][i] for i in range(len(part)) for c in columns]
        return grid(tiles, ncols=len(columns), pad=pad)
