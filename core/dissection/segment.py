"""Weakly supervised segmentation: object masks from saliency or CAM maps, and their IoU.

- ``method="threshold"``: the pseudo-mask of CAM papers, ``map >= fraction * max(map)``
  (Zhou et al. use 20% of the maximum).
- ``method="grabcut"``: GrabCut (Rother et al.) seeded by the map, as Simonyan et al. do
  with saliency: pixels above ``fg`` x max are probable foreground, the top few per cent
  sure foreground, pixels below ``bg`` x max probable background, and the image border
  sure background. Needs OpenCV (``pip install 'convscope[segmentation]'``).
"""
from __future__ import annotations

import warnings

import numpy as np

from .._validate import check_choice, check_int, check_number, param_error
from ..render import resize, to_rgb

__all__ = ["segment", "segmentation_iou", "centre_box", "Masks"]


class Masks(np.ndarray):
    """Boolean masks (N, H, W), an ndarray with ``info``: what :func:`segment` chose, e.g.
    ``info["fallback"]`` when GrabCut could not run on some images."""

    def __new__(cls, masks, info=None):
        out = np.asarray(masks, bool).view(cls)
        out.info = dict(info or {})
        return out

    def __array_finalize__(self, obj):
        self.info = getattr(obj, "info", {})


def _maps(maps, images):
    maps = np.asarray(getattr(maps, "maps", maps), np.float32)
    if maps.ndim == 2:
        maps = maps[None]
    if maps.ndim != 3:
        raise param_error("maps", "segment", "maps of shape (N, H, W)", f"shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise param_error("maps", "segment", "finite", "NaN or Inf values")
    if images is not None:
        images = np.asarray(images, np.float32)
        if images.ndim != 4 or len(images) != len(maps):
            raise param_error("images", "segment", f"(N, C, H, W) images for {len(maps)} maps", f"shape {images.shape}")
        if maps.shape[1:] != images.shape[2:]:
            maps = resize(maps, images.shape[2:])
    return maps, images


def segment(maps, images=None, *, method: str = "threshold", fraction: float = 0.2, fg: float = 0.5, bg: float = 0.1,
            iterations: int = 5) -> np.ndarray:
    """Binary object masks (N, H, W) from attribution maps (N, H, W) (or a result with ``.maps``).

    ``images`` (N, C, H, W) are needed for GrabCut, which segments colours; maps are
    resized to the images when their sizes differ.
    """
    check_choice(method, ("threshold", "grabcut"), "method", "segment")
    maps, images = _maps(maps, images)
    peak = maps.reshape(len(maps), -1).max(axis=1)[:, None, None]
    if method == "threshold":
        fraction = check_number(fraction, "fraction", "segment", low=0)
        return Masks((maps >= fraction * peak) & (peak > 0), {"method": "threshold"})
    if images is None:
        raise param_error("images", "segment", "the images (N, C, H, W) for method='grabcut'", "None")
    fg, bg = check_number(fg, "fg", "segment", low=0), check_number(bg, "bg", "segment", low=0)
    check_int(iterations, "iterations", "segment", low=1)
    try:
        import cv2
    except ImportError as err:
        raise ImportError("GrabCut needs OpenCV: pip install 'convscope[segmentation]'") from err
    out, fallen = np.zeros(maps.shape, bool), {}
    for i, (m, img) in enumerate(zip(maps, images)):
        if peak[i, 0, 0] <= 0:
            continue
        rel = m / peak[i, 0, 0]
        seed = np.full(m.shape, cv2.GC_PR_BGD, np.uint8)
        seed[rel >= fg] = cv2.GC_PR_FGD
        seed[rel >= max(fg, np.quantile(rel, 0.97))] = cv2.GC_FGD
        seed[rel < bg] = cv2.GC_PR_BGD
        border = np.zeros(m.shape, bool)
        border[[0, -1], :] = border[:, [0, -1]] = True
        seed[border & (rel < fg)] = cv2.GC_BGD
        rgb = (to_rgb(img) * 255).astype(np.uint8)[..., ::-1].copy()  # OpenCV wants BGR
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        try:
            cv2.grabCut(rgb, seed, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
        except cv2.error as err:  # a seed with no foreground or no background: fall back to the seed itself
            out[i] = rel >= fg
            fallen[i] = str(err).strip().splitlines()[-1][:200]
            continue
        out[i] = (seed == cv2.GC_FGD) | (seed == cv2.GC_PR_FGD)
    if not fallen:
        return Masks(out, {"method": "grabcut"})
    note = (f"GrabCut could not run on {len(fallen)} of {len(maps)} images ({', '.join(map(str, list(fallen)[:8]))}"
            f"{', ...' if len(fallen) > 8 else ''}: {next(iter(fallen.values()))}); their masks are the seed itself, "
            f"map >= {fg} x max")
    warnings.warn(f"segment: {note}.", RuntimeWarning, stacklevel=2)
    return Masks(out, {"method": "grabcut", "fallback": {"images": sorted(fallen), "reason": note}})


def segmentation_iou(pred, truth) -> np.ndarray:
    """Per-image IoU |P & T| / |P | T| of boolean masks (N, H, W); 1 where both are empty."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if pred.ndim != 3:
        raise param_error("pred", "segmentation_iou", "boolean masks (N, H, W)", f"shape {pred.shape}")
    if pred.shape != truth.shape:
        raise param_error("truth", "segmentation_iou", f"masks of shape {pred.shape}", f"shape {truth.shape}")
    inter = (pred & truth).sum(axis=(1, 2))
    union = (pred | truth).sum(axis=(1, 2))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def centre_box(shape, fraction: float = 0.5) -> np.ndarray:
    """The baseline: a centred box covering ``fraction`` of each side, (N, H, W) bool."""
    if not (isinstance(shape, (tuple, list)) and len(shape) == 3):
        raise param_error("shape", "centre_box", "(N, H, W)", repr(shape))
    n, h, w = (check_int(v, "shape", "centre_box", low=1) for v in shape)
    fraction = check_number(fraction, "fraction", "centre_box", low=0, strict=True)
    if fraction > 1:
        raise param_error("fraction", "centre_box", "<= 1", str(fraction))
    box = np.zeros((n, h, w), bool)
    dh, dw = int(round(h * (1 - fraction) / 2)), int(round(w * (1 - fraction) / 2))
    box[:, dh:h - dh, dw:w - dw] = True
    return box
