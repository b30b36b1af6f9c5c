"""Superpixels for the metrics that remove regions instead of pixels (IROF; sampling methods).

SLIC (Achanta et al. 2012) from scikit-image, an extra (``convscope[segmentation]``), imported
only when asked; or the user's own label images, checked and renumbered 0..L-1 per image.
"""
from __future__ import annotations

import numpy as np

from ._validate import check_int, check_number, describe, param_error

__all__ = ["superpixels", "check_segments"]


def superpixels(x: np.ndarray, n_segments: int = 100, *, compactness: float = 10.0,
                owner: str = "superpixels") -> np.ndarray:
    """(N, H, W) int64 SLIC labels 0..L_n-1 of the (N, C, H, W) images ``x``.

    ``skimage.segmentation.slic(image, n_segments, compactness, start_label=0)`` per image
    (channels last; RGB images are clustered in CIELAB as scikit-image does, others on their
    values). SLIC starts from a regular grid, so it draws no random numbers: the same images
    give the same segments.
    """
    n_segments = check_int(n_segments, "n_segments", owner, low=1)
    compactness = check_number(compactness, "compactness", owner, low=0, strict=True)
    try:
        from skimage.segmentation import slic
    except ImportError as err:
        raise ImportError(f"{owner} needs scikit-image for SLIC superpixels: "
                          "pip install 'convscope[segmentation]' (or pass your own segments)") from err
    out = np.empty((x.shape[0],) + x.shape[2:], np.int64)
    for i, image in enumerate(np.asarray(x, np.float64)):
        if image.shape[0] == 1:
            labels = slic(image[0], n_segments=n_segments, compactness=compactness, start_label=0, channel_axis=None)
        else:
            labels = slic(np.moveaxis(image, 0, -1), n_segments=n_segments, compactness=compactness, start_label=0,
                          convert2lab=image.shape[0] == 3)
        out[i] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    return out


def check_segments(segments, shape: tuple, owner: str, param: str = "segments") -> np.ndarray:
    """User labels as (N, H, W) int64 renumbered 0..L_n-1 per image (order kept), for images of
    ``shape`` (N, C, H, W)."""
    s = np.asarray(segments)
    want = (shape[0],) + tuple(shape[2:])
    if s.shape != want or s.dtype.kind not in "iu":
        raise param_error(param, owner, f"integer labels of shape {want}, one label image per image",
                          describe(segments))
    out = np.empty(want, np.int64)
    for i, labels in enumerate(s):
        out[i] = np.unique(labels, return_inverse=True)[1].reshape(labels.shape)
    return out
