"""Localisation metrics: does a map's relevance lie on the object's ground-truth mask?

Every function takes ``maps`` (N, H, W) (an array or an AttributionMaps) and ``masks``
(N, H, W) (bool, or numbers that are all 0 or 1: the concept dataset's
``shapes(n).object_masks`` or ``shapes(n).mask("stripes")``, or the user's own), and returns a
:class:`MetricScores` with one score per map, higher is better, NaN where the score is not
defined (an empty mask, a map with no positive relevance; ``info["undefined"]`` says which).

Masks of another size than the maps are allowed when the aspect ratio is the same: the maps
are then resized bilinearly to the masks' size (as :func:`pointing_game` does) and
``info["choices"]`` says so. A different aspect ratio is an error: stretching a map would
move its relevance off the pixels it was computed for.

Ties in a map (blocky occlusion maps, a clipped CAM's zeros) are counted as their expected
value over a random order among the tied pixels (rank accuracy and top-k), and as half in the
AUC (the Mann-Whitney U statistic), so no score depends on the pixels' raster order.
"""
from __future__ import annotations

import numpy as np

from .._batching import auto_batch_size
from .._validate import check_int, check_number, describe, param_error
from .pointing import as_maps
from .registry import register_metric
from .result import MetricScores

__all__ = ["relevance_mass_accuracy", "relevance_rank_accuracy", "top_k_intersection", "mask_auc",
           "energy_pointing_game"]


#: Maps per chunk of the row-wise arithmetic: 2^16 pixels (16 maps of 64 x 64), whose float64
#: temporaries (512 KB) stay in cache; chunks of 2^18 pixels ran the same sums 3-4x slower.
CHUNK_PIXELS = 2 ** 16


def checked_maps(maps, owner: str) -> np.ndarray:
    """(N, H, W) numeric array from an array or an AttributionMaps: finite, non-empty."""
    m = getattr(maps, "maps", maps)
    if not isinstance(m, np.ndarray):
        if not isinstance(m, (list, tuple)):
            raise param_error("maps", owner, "(N, H, W) maps or an AttributionMaps result", describe(m), TypeError)
        m = np.asarray(m)
    if m.dtype.kind not in "iuf":
        raise param_error("maps", owner, "a numeric (N, H, W) array", f"dtype {m.dtype}", TypeError)
    if m.ndim != 3 or 0 in m.shape:
        raise param_error("maps", owner, "(N, H, W) maps or an AttributionMaps result, none empty", f"shape {m.shape}")
    if not np.isfinite(m).all():
        bad = int(m.size - np.isfinite(m).sum())
        raise param_error("maps", owner, "finite (no NaN or Inf)", f"{bad} non-finite values")
    return m


def checked_masks(maps, masks, owner: str):
    """(maps (N, H, W), masks (N, H, W) bool, choices) with the maps resized to the masks'
    size when the aspect ratio agrees."""
    m = checked_maps(maps, owner)
    s = masks if isinstance(masks, np.ndarray) else np.asarray(masks) if isinstance(masks, (list, tuple)) else None
    if s is None:
        raise param_error("masks", owner, "a boolean (N, H, W) array", describe(masks), TypeError)
    if s.dtype != bool:
        if s.dtype.kind not in "iuf":
            raise param_error("masks", owner, "a boolean (N, H, W) array", f"dtype {s.dtype}", TypeError)
        if not np.isin(s, (0, 1)).all():
            odd = s[~np.isin(s, (0, 1))].flat[0].item()
            raise param_error("masks", owner, "a boolean (N, H, W) array, or numbers that are all 0 or 1",
                              f"the value {odd!r} in an array of dtype {s.dtype}")
        s = s.astype(bool)
    if s.ndim != 3 or 0 in s.shape[1:]:
        raise param_error("masks", owner, "a boolean (N, H, W) array", f"shape {s.shape}")
    if len(s) != len(m):
        raise param_error("masks", owner, f"one mask per map ({len(m)})", f"{len(s)} masks")
    (h, w), (mh, mw) = m.shape[1:], s.shape[1:]
    choices = {}
    if (h, w) != (mh, mw):
        if h * mw != w * mh:
            raise param_error("masks", owner, f"(N, H, W) masks of the maps' size {(h, w)} or of the same aspect "
                              "ratio (the maps are then resized to them)", f"shape {s.shape}")
        m = as_maps(m.astype(np.float32), owner, (mh, mw))
        choices["maps"] = f"resized bilinearly from {(h, w)} to {(mh, mw)}, the masks' size"
    return m, s, choices


def _scores(name, checked, row_fn, options):
    """Run ``row_fn(maps (n, P), masks (n, P), (H, W)) -> (scores, {reason: bool (n,)})`` on
    the output of :func:`checked_masks`, over chunks of float64 maps (:data:`CHUNK_PIXELS`)."""
    m, s, choices = checked
    size = s.shape[1:]
    m, s = m.reshape(len(m), -1), s.reshape(len(s), -1)
    step = auto_batch_size(*size, pixels=CHUNK_PIXELS)
    parts, reasons = [], {}
    for start in range(0, len(m), step):
        chunk = m[start:start + step].astype(np.float64), s[start:start + step]
        score, undefined = row_fn(*chunk, size)
        parts.append(score)
        for why, flags in undefined.items():
            reasons.setdefault(why, []).extend((start + np.flatnonzero(flags)).tolist())
    scores = np.concatenate(parts)
    info = dict(options)
    for why, where in reasons.items():
        scores[where] = np.nan
    reasons = {why: where for why, where in reasons.items() if where}
    if reasons:
        info["undefined"] = reasons
    if choices:
        info["choices"] = choices
    return MetricScores(name, scores, True, info)


def _divide(num, den):
    return num / np.where(den == 0, 1, den)


def _top_count_in_mask(m, s, k):
    """Expected number of mask pixels among the ``k`` (n,) highest of each row of ``m``, ties
    at the k-th value broken at random: all pixels above it, and of the tied ones the share
    ``(k - above) / tied`` of those in the mask."""
    kth = _kth_largest(m, k)[:, None]
    above, tied = m > kth, m == kth
    n_above, n_tied = above.sum(1), tied.sum(1)
    return (above & s).sum(1) + (k - n_above) * _divide((tied & s).sum(1), n_tied)


def _kth_largest(m, k):
    """The k-th largest value of each row (k (n,) in [1, P]; 0 is read as 1)."""
    k = np.maximum(np.asarray(k), 1)
    if np.all(k == k.flat[0]):  # one k for all rows: a partition is linear time
        p = m.shape[1] - int(k.flat[0])
        return np.partition(m, p, axis=1)[:, p]
    return np.take_along_axis(np.sort(m, axis=1), (m.shape[1] - k)[:, None], axis=1)[:, 0]


@register_metric("relevance_mass_accuracy", "localisation", higher_is_better=True, needs=("maps", "masks"))
def relevance_mass_accuracy(maps, masks) -> MetricScores:
    """Relevance mass accuracy (Arras et al. 2022, CLEVR-XAI): the share of a map's positive
    relevance that lies inside the mask, ``sum_{p in mask} R+_p / sum_p R+_p`` with
    ``R+ = max(R, 0)``; 1 when all of it is on the object.

    The paper counts positive relevance only; Quantus's ``RelevanceMassAccuracy`` divides
    signed sums (the same for maps without negative values, such as a clipped CAM). NaN for an
    empty mask or a map with no positive relevance.
    """
    def rows(m, s, size):
        positive = np.maximum(m, 0)
        total = positive.sum(1)
        return _divide((positive * s).sum(1), total), {"empty mask": s.sum(1) == 0, "no positive relevance": total == 0}
    return _scores("relevance_mass_accuracy", checked_masks(maps, masks, "relevance_mass_accuracy"), rows, {})


@register_metric("relevance_rank_accuracy", "localisation", higher_is_better=True, needs=("maps", "masks"))
def relevance_rank_accuracy(maps, masks) -> MetricScores:
    """Relevance rank accuracy (Arras et al. 2022, CLEVR-XAI): with K the mask's size, the
    share of the K most relevant pixels that lie in the mask.

    Ties at the K-th value count by their expected share (Quantus breaks them in ``argsort``'s
    order; without ties the two agree). NaN for an empty mask.
    """
    def rows(m, s, size):
        k = s.sum(1)
        return _divide(_top_count_in_mask(m, s, k), k), {"empty mask": k == 0}
    return _scores("relevance_rank_accuracy", checked_masks(maps, masks, "relevance_rank_accuracy"), rows, {})


@register_metric("top_k_intersection", "localisation", higher_is_better=True, needs=("maps", "masks"))
def top_k_intersection(maps, masks, *, k=1000) -> MetricScores:
    """Top-k intersection (Theiner et al. 2021): the share of a map's ``k`` most relevant
    pixels that lie in the mask (the map binarised to its top k, intersected with the mask,
    over k).

    ``k`` an int number of pixels (Quantus's default 1000: a quarter of a 64 x 64 map) or a
    float in (0, 1], the fraction of the map's pixels (rounded, at least 1). Ties at the k-th
    value count by their expected share. NaN for an empty mask (as Quantus).
    """
    owner = "top_k_intersection"
    checked = checked_masks(maps, masks, owner)
    pixels = checked[1][0].size
    if isinstance(k, (float, np.floating)):
        fraction = check_number(k, "k", owner, low=0, strict=True)
        if fraction > 1:
            raise param_error("k", owner, "an int number of pixels or a fraction in (0, 1]", str(k))
        count = max(1, int(round(fraction * pixels)))
    else:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise param_error("k", owner, "an int number of pixels or a fraction in (0, 1]", describe(k), TypeError)
        count = check_int(k, "k", owner, low=1)
        if count > pixels:
            raise param_error("k", owner, f"<= {pixels}, the pixels of a map (a fraction such as k=0.25 fits any "
                              "size)", str(k))

    def rows(m, s, size):
        return _top_count_in_mask(m, s, np.full(len(m), count)) / count, {"empty mask": s.sum(1) == 0}
    return _scores(owner, checked, rows, {"k": k, "pixels": count})


def _midranks(values):
    """Ranks 1..P of each row's values in increasing order, tied values sharing their mean
    rank; returned in sorted order with the order itself."""
    order = np.argsort(values, axis=1)  # any order among ties: they share one rank
    v = np.take_along_axis(values, order, axis=1)
    n, p = v.shape
    index = np.broadcast_to(np.arange(p), (n, p))
    starts = np.ones((n, p), bool)
    starts[:, 1:] = v[:, 1:] != v[:, :-1]
    first = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    ends = np.ones((n, p), bool)
    ends[:, :-1] = starts[:, 1:]
    last = np.minimum.accumulate(np.where(ends, index, p - 1)[:, ::-1], axis=1)[:, ::-1]
    return (first + last) / 2 + 1, order


@register_metric("mask_auc", "localisation", higher_is_better=True, needs=("maps", "masks"))
def mask_auc(maps, masks) -> MetricScores:
    """Area under the ROC curve of the map read as a classifier of mask pixels (Fawcett 2006):
    the probability that a pixel of the object outscores a pixel of the background, ties
    counting half. Computed as the Mann-Whitney U statistic, ``(R - P(P + 1)/2) / (P Q)`` with
    R the sum of the mask pixels' mid-ranks, P and Q the mask's and the background's sizes;
    this equals the trapezoid area under scikit-learn's ``roc_curve`` (Quantus's ``AUC``).
    0.5 is chance; NaN when the mask is empty or covers the whole map.
    """
    def rows(m, s, size):
        ranks, order = _midranks(m)
        positive = s.sum(1)
        negative = s.shape[1] - positive
        rank_sum = (ranks * np.take_along_axis(s, order, axis=1)).sum(1)
        u = rank_sum - positive * (positive + 1) / 2
        return _divide(u, positive * negative), {"empty mask": positive == 0, "mask covers the map": negative == 0}
    return _scores("mask_auc", checked_masks(maps, masks, "mask_auc"), rows, {})


def bounding_boxes(masks: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: each mask's bounding box (the smallest rectangle holding all its
    pixels; all False for an empty mask)."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)

    def span(a):
        first = np.argmax(a, axis=1)
        last = a.shape[1] - 1 - np.argmax(a[:, ::-1], axis=1)
        i = np.arange(a.shape[1])
        return (i >= first[:, None]) & (i <= last[:, None]) & a.any(axis=1, keepdims=True)
    return span(rows)[:, :, None] & span(cols)[:, None, :]


@register_metric("energy_pointing_game", "localisation", higher_is_better=True, needs=("maps", "masks"))
def energy_pointing_game(maps, masks) -> MetricScores:
    """Energy-based pointing game (Wang et al. 2020, Score-CAM, Sec. 4.2): the share of a map's
    energy inside the bounding box of the mask, ``sum_{p in box} L_p / sum_p L_p``.

    Score-CAM's maps are non-negative (a ReLU ends them); here the energy is the positive part
    ``max(L, 0)`` so signed maps are scored the same way. The box is that of all the mask's
    pixels (several objects in one mask share one box). Not in Quantus; its
    ``AttributionLocalisation(positive_attributions=True)`` given the boxes as masks computes
    the same ratio. NaN for an empty mask or a map with no positive energy.
    """
    def rows(m, s, size):
        positive = np.maximum(m, 0)
        total = positive.sum(1)
        inside = (positive * bounding_boxes(s.reshape(len(s), *size)).reshape(len(s), -1)).sum(1)
        return _divide(inside, total), {"empty mask": s.sum(1) == 0, "no positive energy": total == 0}
    return _scores("energy_pointing_game", checked_masks(maps, masks, "energy_pointing_game"), rows, {})
