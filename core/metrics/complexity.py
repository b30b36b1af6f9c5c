"""Complexity metrics: how concentrated a map is, whatever it points at.

Each takes ``maps`` (N, H, W) (an array or an AttributionMaps) and returns a
:class:`MetricScores`, one score per map, computed on the magnitudes ``|a|`` over all the
map's pixels. A concise map puts its magnitude on few pixels: high sparseness, low
complexity, low effective complexity.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_number
from .._batching import auto_batch_size
from .localisation import CHUNK_PIXELS, checked_maps
from .registry import register_metric
from .result import MetricScores

__all__ = ["sparseness", "complexity", "effective_complexity"]


def _by_chunks(maps, owner, rows):
    """``rows(|a| (n, P) float64) -> (scores (n,), all zero (n,))`` over chunks of
    :data:`CHUNK_PIXELS` maps, joined."""
    m = checked_maps(maps, owner)
    flat = m.reshape(len(m), -1)
    step = auto_batch_size(*m.shape[1:], pixels=CHUNK_PIXELS)
    parts = [rows(np.abs(flat[i:i + step].astype(np.float64))) for i in range(0, len(m), step)]
    return tuple(np.concatenate(column) for column in zip(*parts))


def _wrap(name, scores, all_zero, higher_is_better, options):
    info = dict(options)
    if all_zero.any():
        scores[all_zero] = np.nan
        info["undefined"] = {"all-zero map": np.flatnonzero(all_zero).tolist()}
    return MetricScores(name, scores, higher_is_better, info)


@register_metric("sparseness", "complexity", higher_is_better=True, needs=("maps",))
def sparseness(maps) -> MetricScores:
    """Sparseness (Chalasani et al. 2020): the Gini index of the magnitudes (Hurley and
    Rickard 2009), ``sum_k (2k - P - 1) a_(k) / (P sum_k a_(k))`` with ``a_(1) <= ... <= a_(P)``
    the sorted ``|a|`` of a map's P pixels; 0 for a uniform map, ``1 - 1/P`` for a single pixel.

    Quantus's ``Sparseness`` adds 1e-7 to every value before this formula (its guard against
    dividing by zero), which lowers the index slightly; here an all-zero map is NaN instead.
    """
    def rows(a):
        a = np.sort(a, axis=1)
        p, total = a.shape[1], a.sum(1)
        weights = 2.0 * np.arange(1, p + 1) - p - 1
        return (a @ weights) / (p * np.where(total == 0, 1, total)), total == 0
    return _wrap("sparseness", *_by_chunks(maps, "sparseness", rows), True, {})


@register_metric("complexity", "complexity", higher_is_better=False, needs=("maps",))
def complexity(maps) -> MetricScores:
    """Complexity (Bhatt et al. 2020): the entropy of the fractional contributions
    ``p_i = |a_i| / sum_j |a_j|``, ``-sum_i p_i ln p_i`` (nats; 0 ln 0 = 0); 0 for a single
    pixel, ``ln P`` for a uniform map of P pixels. NaN for an all-zero map.

    Quantus's ``Complexity`` computes ``-sum p ln(p + 1e-12)``, the same to about 1e-12 per pixel.
    """
    def rows(a):
        total = a.sum(1)
        safe = np.where(total == 0, 1, total)
        log_a = np.zeros_like(a)
        np.log(a, out=log_a, where=a > 0)
        # -sum p ln p with p = a / T is ln T - sum a ln a / T: no (n, P) fractions
        return np.maximum(np.log(safe) - np.einsum("ij,ij->i", a, log_a) / safe, 0.0), total == 0
    return _wrap("complexity", *_by_chunks(maps, "complexity", rows), False, {})


@register_metric("effective_complexity", "complexity", higher_is_better=False, needs=("maps",))
def effective_complexity(maps, *, eps: float = 1e-5) -> MetricScores:
    """Effective complexity (Nguyen and Martinez 2020), as Quantus's ``EffectiveComplexity``
    defines it: the number of a map's pixels whose magnitude ``|a|`` exceeds ``eps``.

    ``eps`` is in the map's own units. Quantus by default (``normalise=True``) first divides
    the maps by the largest magnitude in the whole batch it is given, so its count for one
    image depends on the other images: pass ``maps / np.abs(maps).max()`` to get its number.
    Always defined (an all-zero map counts 0).
    """
    eps = check_number(eps, "eps", "effective_complexity", low=0)
    counts, _ = _by_chunks(maps, "effective_complexity", lambda a: ((a > eps).sum(1).astype(np.float64), a[:, 0] < 0))
    return MetricScores("effective_complexity", counts, False, {"eps": eps})
