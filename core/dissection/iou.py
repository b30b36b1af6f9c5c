"""Intersection and union counts between thresholded, upsampled activation maps and concept masks.

NetDissect upsamples each activation map bilinearly to the mask resolution, thresholds it
at the unit's top-quantile value t, and counts per (unit, concept)

    I = |{p : up(a)(p) >= t} & M_c|,    U = |{p : up(a)(p) >= t}| + |M_c| - I.

Bilinear interpolation (align_corners False, as :func:`convscope.render.resize`) makes
every output pixel a convex combination of one 2 x 2 block of the map, so a block whose
largest corner is below t contributes nothing, and a map whose maximum is below t none of
its blocks. Only blocks with a corner at or above t are interpolated: with t at the top
0.5%, a few per cent of the work of upsampling every map, and the counts are exactly those
of the full computation (:func:`convscope.render.resize`), ties included: both interpolate
as ``a + f (b - a)``, rows first, in float32, which keeps a flat region equal to t at t (a
saturated ReLU6 unit, say). Blocks covering the same number of output rows and columns
are interpolated together, a few thousand at a time, laid out (rows, cols, blocks) so that
every elementwise pass runs along the blocks.

Masks are read as per-pixel concept codes (:func:`pixel_codes`): byte j of pixel p holds
concepts 8j..8j+7 as bits. The intersection then needs one byte per hit pixel and byte
plane, counted per (unit, byte value) and spread to the concepts by the bits of the byte.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["count_iou", "count_iou_codes", "pixel_codes", "mask_pixel_counts"]

_BYTE_BITS = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little").astype(np.int64)
_SHIFTS = np.arange(8, dtype=np.uint64)[None, :, None]
_PIECE = 1 << 12  # blocks interpolated at a time (a power of two)


def _mask_words(masks: np.ndarray) -> np.ndarray:
    """(N, C, H, W) bool -> (N, C, ceil(H*W / 8)) uint64, each byte one pixel (0 or 1)."""
    n, c = masks.shape[:2]
    m = np.ascontiguousarray(masks, bool).reshape(n, c, -1).view(np.uint8)
    if m.shape[2] % 8:
        m = np.pad(m, ((0, 0), (0, 0), (0, -m.shape[2] % 8)))
    return m.view(np.uint64)


def pixel_codes(masks: np.ndarray) -> np.ndarray:
    """Per-pixel concept codes of ``masks`` (N, C, H, W) bool: (N, ceil(C / 8), H * W) uint8,
    bit ``c % 8`` of byte ``c // 8`` set where concept c covers the pixel."""
    n, c, hh, ww = masks.shape
    words = _mask_words(masks)
    planes = (c + 7) // 8
    out = np.empty((n, planes, words.shape[2]), np.uint64)
    for j in range(planes):  # eight concepts at a time: OR of the 0/1 bytes shifted to their bit
        group = words[:, 8 * j:8 * j + 8]
        np.bitwise_or.reduce(group << _SHIFTS[:, :group.shape[1]], axis=1, out=out[:, j])
    codes = out.view(np.uint8)
    return codes if codes.shape[2] == hh * ww else np.ascontiguousarray(codes[:, :, :hh * ww])


def mask_pixel_counts(masks: np.ndarray) -> np.ndarray:
    """|M_c| summed over the batch: (C,) int64. The 0/1 bytes of 128 words at a time are added
    as uint64 lanes (at most 128 per byte, no carry), then the lanes are added."""
    words = _mask_words(masks)
    b, c, nw = words.shape
    full = nw // 128 * 128
    lanes = words[:, :, :full].reshape(b, c, -1, 128).sum(axis=3, dtype=np.uint64)
    total = lanes.view(np.uint8).reshape(b, c, -1).sum(axis=(0, 2), dtype=np.int64)
    if full < nw:
        rest = words[:, :, full:].sum(axis=2, dtype=np.uint64)
        total += rest.view(np.uint8).reshape(b, c, 8).sum(axis=(0, 2), dtype=np.int64)
    return total


@lru_cache(maxsize=32)
def _axis_blocks(n_in: int, n_out: int):
    """How :func:`convscope.render.resize` interpolates one axis, by input index i: the first
    output index interpolated between i and i + 1, how many there are (consecutive), and a
    table per count of their weights f, one column per input index, padded with NaN to a
    power of two rows (a NaN weight makes a NaN value, never at or above a threshold):
    ``{count: (2**m, n_in) float32}``."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    frac = np.r_[(pos - lo).astype(np.float32), np.float32(np.nan)]
    start, count = np.searchsorted(lo, np.arange(n_in)), np.bincount(lo, minlength=n_in)
    tables = {}
    for c in np.unique(count[count > 0]):
        index = start[:, None] + np.arange(1 << (int(c) - 1).bit_length())
        tables[int(c)] = np.ascontiguousarray(frac[np.where(index < start[:, None] + c, np.minimum(index, n_out - 1),
                                                             n_out)].T)
    return start, count, tables


@lru_cache(maxsize=64)
def _pixel_offsets(rows: int, cols: int, W: int) -> np.ndarray:
    """Offset in an image of width W of each position of a (rows, cols) block, row-major."""
    return (np.arange(rows)[:, None] * W + np.arange(cols)).ravel()


def count_iou(acts: np.ndarray, masks: np.ndarray, thresholds: np.ndarray):
    """Counts for one batch: ``(intersection (U, C), above (U,))``.

    ``acts`` (N, U, h, w) float32, ``masks`` (N, C, H, W) bool, ``thresholds`` (U,).
    ``above`` is the number of upsampled pixels at or above the threshold; the union
    follows as ``above + |M_c| - intersection``.
    """
    masks = np.asarray(masks, bool)
    return count_iou_codes(np.asarray(acts, np.float32), pixel_codes(masks), masks.shape[2:], masks.shape[1],
                           thresholds)


def _candidate_blocks(acts, t, maxima):
    """The 2 x 2 blocks with a corner at or above the unit's threshold: (map index n * U + u,
    block row i, block column j, corners c00, c01, c10, c11), the blocks of the last row and
    column clamped (edge padding) as bilinear resizing clamps."""
    n, units, h, w = acts.shape
    if maxima is None:
        maxima = acts.reshape(n, units, -1).max(axis=2)
    maps = np.flatnonzero(~(maxima < t))  # maps that reach t (NaN maxima kept: the blocks decide)
    x = np.take(acts.reshape(n * units, h * w), maps, axis=0).reshape(-1)
    across = np.empty_like(x)  # max of columns j and j + 1 (one long pass; the last column fixed after)
    np.maximum(x[:-1], x[1:], out=across[:-1])
    across.reshape(-1, w)[:, -1] = x.reshape(-1, w)[:, -1]  # clamped: the last column is its own neighbour
    corner_max = np.empty_like(x)  # and of rows i and i + 1, the last row clamped likewise
    np.maximum(across[:-w], across[w:], out=corner_max[:-w])
    corner_max.reshape(-1, h, w)[:, -1] = across.reshape(-1, h, w)[:, -1]
    corner_max = corner_max.reshape(-1, h, w)
    block = np.flatnonzero(corner_max >= t[maps % units][:, None, None])
    cell = block % (h * w)
    i, j = np.divmod(cell, w)
    flat = x
    right, down = (j < w - 1).astype(np.int64), (i < h - 1) * w  # clamped neighbours (edge padding)
    return (maps[block // (h * w)], i, j, flat[block], flat[block + right], flat[block + down],
            flat[block + down + right])


def count_iou_codes(acts: np.ndarray, codes: np.ndarray, mask_size: tuple, n_concepts: int, thresholds: np.ndarray,
                    maxima: np.ndarray | None = None):
    """:func:`count_iou` on per-pixel concept codes (:func:`pixel_codes`) of masks of
    ``mask_size`` (H, W). ``maxima`` (N, U), each map's maximum, saves computing it."""
    n, units, h, w = acts.shape
    H, W = mask_size
    planes = codes.shape[1]
    t = np.asarray(thresholds, np.float32)
    byte_counts = np.zeros((max(planes, 1), units * 256), np.int64)
    above = np.zeros(units, np.int64)
    found = _candidate_blocks(acts, t, maxima)
    if len(found[0]):
        row_start, row_count, fy_tables = _axis_blocks(h, H)
        col_start, col_count, fx_tables = _axis_blocks(w, W)
        shape_class = row_count[found[1]] * (W + 1) + col_count[found[2]]
        order = np.argsort(shape_class, kind="stable")
        shape_class = shape_class[order]
        m, i, j, c00, c01, c10, c11 = (a[order] for a in found)
        unit, image = m % units, m // units
        key_base = unit * 256  # bincount key: unit * 256 + code byte
        code_base = image * (planes * H * W) + row_start[i] * W + col_start[j]
        flat_codes = codes.reshape(-1)
        bounds = np.r_[0, np.flatnonzero(np.diff(shape_class)) + 1, len(m)]
        for lo, hi in zip(bounds[:-1], bounds[1:]):  # blocks of one size (rows x cols)
            rc, cc = divmod(int(shape_class[lo]), W + 1)
            if rc == 0 or cc == 0:
                continue
            fy_table, fx_table = fy_tables[rc], fx_tables[cc]  # (rows, h), (cols, w): NaN past the counts
            positions = _pixel_offsets(fy_table.shape[0], fx_table.shape[0], W)
            for a in range(lo, hi, _PIECE):  # pieces of _PIECE blocks along the last axis
                s = slice(a, int(min(a + _PIECE, hi)))
                b = s.stop - a
                fy, fx = np.take(fy_table, i[s], axis=1), np.take(fx_table, j[s], axis=1)  # (rows, b), (cols, b)
                left = c00[s] + fy * (c10[s] - c00[s])  # the operations of render.resize, in its order
                right = c01[s] + fy * (c11[s] - c01[s])
                value = fx[None, :, :] * (right - left)[:, None, :]  # (rows, cols, b)
                value += left[:, None, :]
                hit = np.flatnonzero(value >= t[unit[s]])
                position, which = np.divmod(hit, b) if b & (b - 1) else (hit >> (b.bit_length() - 1), hit & (b - 1))
                which += a
                where = code_base[which] + positions[position]
                key = key_base[which]
                if planes == 0:
                    above += np.bincount(key >> 8, minlength=units)
                for p in range(planes):
                    byte_counts[p] += np.bincount(key + flat_codes[where + p * H * W if p else where],
                                                  minlength=units * 256)
    per_byte = byte_counts.reshape(-1, units, 256)
    if planes:
        above = per_byte[0].sum(axis=1)
    inter = (per_byte[:planes] @ _BYTE_BITS).transpose(1, 0, 2).reshape(units, planes * 8)
    return inter[:, :n_concepts], above
