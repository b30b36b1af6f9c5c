"""Exact per-unit top-quantile thresholds in bounded memory, by radix selection.

The threshold of a unit is its k-th largest activation over the dataset, with
``k = max(1, ceil(quantile * count))``, the value NetDissect thresholds at (top 0.5% by
default). Floats are mapped to unsigned keys that sort like the floats; the k-th largest
key is found one digit at a time: a histogram of the first 16 bits (built while the model
runs), then of the last 16 bits among values sharing the chosen prefix. Two histograms of
65,536 bins per unit, whatever the dataset size, and the result is exact: identical to
sorting all activations. Histograms of disjoint shards add, so the selection is the same
on one process or many.
"""
from __future__ import annotations

import numpy as np

__all__ = ["float_keys", "key_to_float", "digit_histogram", "select_digit", "rank_k"]

DIGIT = 16
BINS = 1 << DIGIT


def float_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys ordered exactly like the float32 ``values`` (-0.0 sorts just below +0.0)."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def key_to_float(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`float_keys`."""
    keys = np.asarray(keys, np.uint32)
    bits = np.where(keys & np.uint32(0x80000000), keys & np.uint32(0x7FFFFFFF), ~keys)
    return bits.astype(np.uint32).view(np.float32)


def rank_k(count: int, quantile: float) -> int:
    """The rank from the top that the ``quantile`` threshold selects among ``count`` values."""
    return max(1, int(np.ceil(quantile * count - 1e-9)))


def digit_histogram(acts: np.ndarray, prefix: np.ndarray | None = None) -> np.ndarray:
    """Per-unit histogram (U, 65536) of one 16-bit digit of the keys of ``acts`` (N, U, ...).

    Without ``prefix``: the high digit of every value. With ``prefix`` (U,) uint32: the low
    digit of the values whose high digit equals that unit's prefix.
    """
    n, units = acts.shape[:2]
    keys = float_keys(acts).reshape(n, units, -1).transpose(1, 0, 2).reshape(units, -1)
    unit = np.broadcast_to(np.arange(units, dtype=np.int64)[:, None], keys.shape)
    if prefix is None:
        flat = unit * BINS + (keys >> DIGIT)
    else:
        keep = (keys >> DIGIT) == np.asarray(prefix, np.uint32)[:, None]
        flat = unit[keep] * BINS + (keys[keep] & np.uint32(BINS - 1))
    return np.bincount(flat.ravel(), minlength=units * BINS).reshape(units, BINS)


def select_digit(hist: np.ndarray, rank: np.ndarray):
    """For each unit, the digit holding the ``rank``-th largest value, and the rank left
    within that digit: returns (digit (U,), rank_within (U,))."""
    from_top = np.cumsum(hist[:, ::-1], axis=1)
    rank = np.asarray(rank, np.int64)
    pos = np.argmax(from_top >= rank[:, None], axis=1)  # first position from the top reaching the rank
    above = np.where(pos > 0, from_top[np.arange(len(rank)), pos - 1], 0)
    return (BINS - 1 - pos).astype(np.uint32), rank - above
