"""Similarity of two batches of maps, as the sanity checks of Adebayo et al. (2018) measure it.

Every measure takes (N, H, W) arrays ``a`` and ``b`` and returns (N,) float64, NaN where the
similarity is undefined (a constant map has no ranks to correlate, no structure to compare):

- :func:`spearman`: Spearman's rank correlation of the maps' values (ties get their average
  rank, as ``scipy.stats.spearmanr``);
- :func:`ssim`: the mean structural similarity (Wang et al. 2004) as scikit-image's
  ``structural_similarity`` computes it with its defaults (7 x 7 uniform window, sample
  covariance, K1 = 0.01, K2 = 0.03, the mean over the windows that lie inside the map) and,
  as Quantus passes it, ``data_range`` = max - min over both maps;
- :func:`hog_similarity`: the Pearson correlation of the two maps' histograms of oriented
  gradients (Dalal and Triggs 2005; scikit-image's ``hog`` with its defaults), as Adebayo et al.

:func:`prepared` applies what the sanity checks do first: the absolute value (Adebayo et al.'s
Figure 2 compares absolute maps; ``absolute=False`` the signed ones) and a division of each
map by its largest absolute value (which changes SSIM only: the correlations are scale-free).
"""
from __future__ import annotations

import numpy as np

__all__ = ["HOG_MIN", "SIMILARITIES", "spearman", "ssim", "hog_similarity", "pearson", "prepared", "similarity", "similarity_to"]


def prepared(maps, absolute: bool = True) -> np.ndarray:
    """(N, H, W) float64 maps, absolute when asked, each divided by its max |value| (a zero map stays zero)."""
    m = np.asarray(maps, np.float64)
    if absolute:
        m = np.abs(m)
    top = np.abs(m).reshape(len(m), -1).max(axis=1)
    return m / np.where(top > 0, top, 1.0)[:, None, None]


def pearson(a, b) -> np.ndarray:
    """Row-wise Pearson correlation of (N, D) arrays; NaN where a row is constant."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / den
    return np.where(den > 0, np.clip(r, -1.0, 1.0), np.nan)


def _ranks(v) -> np.ndarray:
    """Row-wise ranks (1-based) of (N, D) values, ties averaged."""
    n, d = v.shape
    order = np.argsort(v, axis=1)  # ties are averaged below, so their order does not matter
    s = np.take_along_axis(v, order, axis=1)
    new = np.ones((n, d), bool)
    new[:, 1:] = s[:, 1:] != s[:, :-1]
    group = np.cumsum(new.ravel()) - 1  # one id per run of equal values, unique over rows
    positions = np.tile(np.arange(1, d + 1, dtype=np.float64), n)
    mean_rank = np.bincount(group, positions) / np.bincount(group)
    ranks = np.empty((n, d))
    np.put_along_axis(ranks, order, mean_rank[group].reshape(n, d), axis=1)
    return ranks


def spearman(a, b) -> np.ndarray:
    """Spearman's rank correlation of each pair of maps: Pearson's r of their average ranks."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    return pearson(_ranks(a), _ranks(b))


def _box_means(m, k) -> np.ndarray:
    """Means of every k x k window lying inside (N, H, W) maps: (N, H - k + 1, W - k + 1)."""
    c = np.zeros((m.shape[0], m.shape[1] + 1, m.shape[2] + 1))
    c[:, 1:, 1:] = m.cumsum(axis=1).cumsum(axis=2)
    return (c[:, k:, k:] - c[:, :-k, k:] - c[:, k:, :-k] + c[:, :-k, :-k]) / (k * k)


def ssim(a, b, *, win_size: int = 7, data_range=None, k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Mean SSIM (Wang et al. 2004) of each pair of maps, as skimage's ``structural_similarity``.

    SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2)) per
    ``win_size`` window, C1 = (k1 R)^2, C2 = (k2 R)^2, with sample (co)variances; the mean over
    the windows centred at least ``(win_size - 1) / 2`` pixels from the border (skimage crops
    the rest). ``data_range`` R: default max - min over both maps of the pair (as Quantus).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if min(a.shape[1:]) < win_size:
        raise ValueError(f"The 'maps' parameter of ssim must be at least {win_size} x {win_size} "
                         f"(the window). Got shape {a.shape[1:]} instead.")
    if data_range is None:
        both = np.concatenate([a.reshape(len(a), -1), b.reshape(len(b), -1)], axis=1)
        data_range = both.max(axis=1) - both.min(axis=1)
    r = np.broadcast_to(np.asarray(data_range, np.float64), (len(a),))[:, None, None]
    ua, ub = _box_means(a, win_size), _box_means(b, win_size)
    norm = win_size * win_size / (win_size * win_size - 1.0)
    va = norm * (_box_means(a * a, win_size) - ua * ua)
    vb = norm * (_box_means(b * b, win_size) - ub * ub)
    vab = norm * (_box_means(a * b, win_size) - ua * ub)
    c1, c2 = (k1 * r) ** 2, (k2 * r) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (2 * ua * ub + c1) * (2 * vab + c2) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return s.reshape(len(a), -1).mean(axis=1)


#: the smallest map skimage's hog takes with its defaults (3 x 3 blocks of 8 x 8 cells)
HOG_MIN = 24


def _hog(maps):
    if min(maps.shape[1:]) < HOG_MIN:
        raise ValueError(f"The 'similarity' parameter of hog_similarity must be used on maps of at least "
                         f"{HOG_MIN} x {HOG_MIN} (3 x 3 blocks of 8 x 8 cells). Got maps of {maps.shape[1:]} instead.")
    try:
        from skimage.feature import hog
    except ImportError:
        raise ImportError("The HOG similarity needs scikit-image: pip install convscope[segmentation]") from None
    return np.stack([hog(m) for m in maps])


def hog_similarity(a, b) -> np.ndarray:
    """Pearson correlation of the HOG descriptors (scikit-image's ``hog`` defaults: 9
    orientations, 8 x 8 cells, 3 x 3 blocks, L2-Hys) of each pair of maps (Adebayo et al. 2018)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return pearson(_hog(a), _hog(b))


SIMILARITIES = {"spearman": spearman, "ssim": ssim, "hog": hog_similarity}


def similarity(name: str, a, b, *, absolute: bool = True) -> np.ndarray:
    """``SIMILARITIES[name]`` of the :func:`prepared` maps ``a`` and ``b``."""
    return SIMILARITIES[name](prepared(a, absolute), prepared(b, absolute))


def similarity_to(name: str, reference, others, *, absolute: bool = True) -> np.ndarray:
    """(len(others), N): :func:`similarity` of each (N, H, W) batch in ``others`` to ``reference``;
    the reference's ranks (Spearman) and descriptors (HOG) are computed once."""
    ref = prepared(reference, absolute)
    if name == "spearman":
        r = _ranks(ref.reshape(len(ref), -1))
        return np.stack([pearson(r, _ranks(prepared(o, absolute).reshape(len(ref), -1))) for o in others])
    if name == "hog":
        h = _hog(ref)
        return np.stack([pearson(h, _hog(prepared(o, absolute))) for o in others])
    return np.stack([SIMILARITIES[name](ref, prepared(o, absolute)) for o in others])
