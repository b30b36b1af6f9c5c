"""Noisy linear imputation (Rong et al. 2022, ROAD): removed pixels take the weighted mean of
their 8 neighbours, solved as one sparse linear system over all removed pixels, plus noise.

For a removed pixel p with neighbours q (direct ones weighted 1/6, diagonal ones 1/12, as the
authors' code ``road_evaluation/imputations.py``; neighbours outside the image left out)

    sum_q w_q * v_p - sum_{q removed} w_q * v_q = sum_{q kept} w_q * x_q

so each removed value is the weighted mean of its neighbours, kept or imputed; the system is
solved per image and channel together (one factorisation, C right-hand sides). Then Gaussian
noise of standard deviation ``noise`` is added to the imputed values only: without it the
smooth imputation itself reveals where pixels were removed (the leak ROAD removes).
"""
from __future__ import annotations

import numpy as np

__all__ = ["NEIGHBOUR_WEIGHTS", "linear_imputation", "noisy_linear_imputation"]

#: (dy, dx) -> weight, the authors' table
NEIGHBOUR_WEIGHTS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
                     ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def _sparse():
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError as err:
        raise ImportError("ROAD's noisy linear imputation needs SciPy: pip install 'convscope[features]'") from err
    return coo_matrix, spsolve


def linear_imputation(image: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The imputed values (C, k) float64 of the pixels ``indices`` (k,) (flat, row-major over
    H x W, in any order; column j belongs to ``indices[j]``) of one (C, H, W) image."""
    coo_matrix, spsolve = _sparse()
    c, h, w = image.shape
    indices = np.asarray(indices, np.int64)
    k = len(indices)
    if k == 0:
        return np.zeros((c, 0))
    flat = image.reshape(c, h * w).astype(np.float64)
    variable = np.full(h * w, -1, np.int64)
    variable[indices] = np.arange(k)
    ys, xs = np.divmod(indices, w)
    diagonal = np.zeros(k)
    rhs = np.zeros((k, c))
    rows, cols, values = [np.arange(k)], [np.arange(k)], [None]
    for (dy, dx), weight in NEIGHBOUR_WEIGHTS:  # eight offsets, every pixel at once
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        p = np.nonzero(inside)[0]
        q = ny[inside] * w + nx[inside]
        diagonal[p] += weight
        kept = variable[q] < 0
        np.add.at(rhs, p[kept], weight * flat[:, q[kept]].T)
        rows.append(p[~kept])
        cols.append(variable[q[~kept]])
        values.append(np.full(int((~kept).sum()), -weight))
    values[0] = diagonal
    a = coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=(k, k)).tocsc()
    solved = spsolve(a, rhs)
    return np.asarray(solved, np.float64).reshape(k, c).T


def noisy_linear_imputation(image: np.ndarray, indices: np.ndarray, noise: float,
                            rng: np.random.Generator) -> np.ndarray:
    """A copy of the (C, H, W) ``image`` with the pixels ``indices`` (flat over H x W) replaced by
    :func:`linear_imputation` plus ``noise * N(0, 1)`` (drawn as (C, k), column j for
    ``indices[j]``), as float32."""
    c, h, w = image.shape
    values = linear_imputation(image, indices)
    if noise:
        values = values + noise * rng.standard_normal(values.shape)
    out = image.reshape(c, h * w).astype(np.float32)
    out[:, np.asarray(indices, np.int64)] = values
    return out.reshape(c, h, w)
