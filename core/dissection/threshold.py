"""Exact per-unit top-quantile thresholds in bounded memory, by radix selection.

The threshold of a unit is its k-th largest activation over the dataset, with
``k = max(1, ceil(quantile * count))``, the value NetDissect thresholds at (top 0.5% by
default). Floats are mapped to unsigned keys that sort like the floats; the k-th largest
key is found one digit at a time: counts of the first 16 bits (built while the model
runs), then of the last 16 bits among values sharing the chosen prefix. The result is
exact: identical to sorting all activations.

Only the largest values matter, so the counts are kept for candidates only
(:class:`TopDigitCounts`): a running floor ``L_u`` per unit, the lowest key of the 16-bit
bucket holding the k-th largest value seen so far, is a lower bound on the final threshold
(the k-th largest of a subset is at most the k-th largest of the whole), values below it
are never counted, and buckets below it are dropped. The buckets at and above the floor
hold every value they cover, which is all that selecting the k-th largest needs. The counts
are sparse, ``(codes, counts)`` with ``code = unit << 16 | digit`` sorted ascending, a few
hundred buckets per unit however large the dataset. Shards add: each shard's floor is at
most its own k-th largest (with the global k; minus infinity while it holds fewer than k
values), hence at most the global threshold, so the sum counts every value at or above the
threshold in every bucket the selection looks at, and selects the same key as one process.
"""
from __future__ import annotations

import numpy as np

__all__ = ["float_keys", "key_to_float", "rank_k", "TopDigitCounts", "low_digit_counts", "merge_counts",
           "select_counts"]

DIGIT = 16
BINS = 1 << DIGIT
_SIGN = np.uint32(0x80000000)
_HIGH = np.uint32(0xFFFF0000)


def float_keys(values: np.ndarray) -> np.ndarray:
    """uint32 keys ordered exactly like the float32 ``values`` (-0.0 sorts just below +0.0):
    ``~bits`` for negative floats, ``bits | 0x80000000`` for the others."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    keys = np.right_shift(bits.view(np.int32), 31).view(np.uint32)  # all ones where negative
    keys |= _SIGN
    keys ^= bits
    return keys


def key_to_float(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`float_keys`."""
    keys = np.asarray(keys, np.uint32)
    bits = np.where(keys & np.uint32(0x80000000), keys & np.uint32(0x7FFFFFFF), ~keys)
    return bits.astype(np.uint32).view(np.float32)


def rank_k(count: int, quantile: float) -> int:
    """The rank from the top that the ``quantile`` threshold selects among ``count`` values."""
    return max(1, int(np.ceil(quantile * count - 1e-9)))


# --------------------------------------------------------------------------- sparse counts
def _count_codes(codes: np.ndarray):
    """(unique codes, counts) of an int64 array."""
    return np.unique(codes, return_counts=True)


def merge_counts(parts) -> tuple:
    """Sum sparse counts ``[(codes, counts), ...]`` into one ``(codes, counts)``, codes sorted."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(parts) == 1:
        return parts[0]
    codes, inverse = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
    weights = np.concatenate([p[1] for p in parts]).astype(np.float64)  # exact below 2**53
    return codes, np.bincount(inverse, weights, minlength=len(codes)).astype(np.int64)


def _reaching(codes: np.ndarray, counts: np.ndarray, rank: np.ndarray):
    """Per unit, the highest bucket where the count from the top reaches ``rank[unit]``.

    Returns (units reached, their digit, the rank left within that digit)."""
    if not len(codes):
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    codes, counts = codes[::-1], counts[::-1]  # units descending, digits descending within a unit
    unit = codes >> DIGIT
    total = np.cumsum(counts)
    start = np.flatnonzero(np.r_[True, unit[1:] != unit[:-1]])
    before_group = np.repeat((total - counts)[start], np.diff(np.r_[start, len(codes)]))
    through = total - before_group  # count of this unit's values in this bucket and above
    hit = np.flatnonzero(through >= rank[unit])
    reached, first = np.unique(unit[hit], return_index=True)
    pos = hit[first]
    return reached, codes[pos] & (BINS - 1), rank[reached] - (through[pos] - counts[pos])


def select_counts(codes: np.ndarray, counts: np.ndarray, rank: np.ndarray):
    """For each unit, the digit holding its ``rank``-th largest
    value and the rank left within that digit, from counts that hold every value of those
    buckets and above. Returns (digit (U,) uint32, rank_within (U,) int64)."""
    rank = np.asarray(rank, np.int64)
    reached, digit, within = _reaching(codes, counts, rank)
    if len(reached) != len(rank):
        raise RuntimeError("dissect: the candidate counts hold fewer values than the rank for some unit")
    return digit.astype(np.uint32), within


def low_digit_counts(acts: np.ndarray, prefix: np.ndarray) -> tuple:
    """Sparse counts of the low 16-bit digit of the values of ``acts`` (N, U, ...) whose high
    digit equals that unit's ``prefix`` (U,): ``(unit << 16 | low digit, count)``.

    The values at or above each bucket's lowest float are found by a float comparison (keys
    are computed for those few only); a bucket whose lowest float is not finite (the one of
    +inf, which also holds NaN keys, or those of NaN keys) is searched by keys."""
    n, units = acts.shape[:2]
    prefix = np.asarray(prefix, np.uint32)
    values = np.ascontiguousarray(acts, np.float32).reshape(n, units, -1)
    floor = key_to_float(prefix << np.uint32(DIGIT))
    if np.isfinite(floor).all():
        candidates = np.flatnonzero(values >= floor[:, None])
        keys = float_keys(values.reshape(-1)[candidates])
    else:
        keys = float_keys(values)
        candidates = np.flatnonzero(keys >= (prefix << np.uint32(DIGIT))[:, None])
        keys = keys.reshape(-1)[candidates]
    unit = (candidates // values.shape[2]) % units
    inside = (keys >> DIGIT) == prefix[unit]
    return _count_codes((unit[inside] << DIGIT) | (keys[inside] & np.uint32(BINS - 1)))


class TopDigitCounts:
    """Counts of the high 16-bit digit of one shard's candidate values, accumulated batch by
    batch (see the module text): every value at or above a unit's floor is counted, and the
    floor rises to the bucket of the k-th largest value counted so far.

    ``add(acts)`` takes a batch (B, U, ...); ``codes``, ``counts`` hold the sparse counts.
    """

    def __init__(self, units: int, k: int):
        self.k = int(k)
        self.floor = np.zeros(units, np.uint32)  # lowest key still counted, per unit
        self.codes = np.zeros(0, np.int64)
        self.counts = np.zeros(0, np.int64)
        self.seen = 0  # values per unit so far

    def add(self, acts: np.ndarray) -> None:
        b, units = acts.shape[:2]
        keys = float_keys(acts).reshape(b, units, -1)
        per_unit = b * keys.shape[2]
        if self.seen < self.k <= per_unit:  # the first batch bounds itself: its own k-th largest
            ordered = np.sort(keys.transpose(1, 0, 2).reshape(units, per_unit), axis=1)  # faster than partition
            self.floor = np.maximum(self.floor, ordered[:, per_unit - self.k] & _HIGH)
        self.seen += per_unit
        candidates = np.flatnonzero(keys >= self.floor[:, None])
        if not len(candidates):
            return
        unit = (candidates // keys.shape[2]) % units
        codes, counts = _count_codes((unit << DIGIT) | (keys.reshape(-1)[candidates] >> DIGIT))
        at = np.searchsorted(self.codes, codes)  # both sorted: add to the buckets held, insert the others
        held = at < len(self.codes)
        held[held] = self.codes[at[held]] == codes[held]
        self.counts[at[held]] += counts[held]
        if not held.all():
            self.codes = np.insert(self.codes, at[~held], codes[~held])
            self.counts = np.insert(self.counts, at[~held], counts[~held])
        self._raise_floor()

    def _raise_floor(self):
        reached, digit, _ = _reaching(self.codes, self.counts, np.full(len(self.floor), self.k, np.int64))
        if len(reached):
            self.floor[reached] = np.maximum(self.floor[reached], digit.astype(np.uint32) << np.uint32(DIGIT))
        keep = (self.codes & (BINS - 1)) >= (self.floor[self.codes >> DIGIT] >> np.uint32(DIGIT))
        if not keep.all():
            self.codes, self.counts = self.codes[keep], self.counts[keep]
