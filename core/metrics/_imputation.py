"""Noisy linear imputation (Rong et al. 2022, ROAD): removed pixels take the weighted mean of
their 8 neighbours, solved as one sparse linear system over all removed pixels, plus noise.

For a removed pixel p with neighbours q (direct ones weighted 1/6, diagonal ones 1/12, as the
authors' code ``road_evaluation/imputations.py``; neighbours outside the image left out)

    sum_q w_q * v_p - sum_{q removed} w_q * v_q = sum_{q kept} w_q * x_q

so each removed value is the weighted mean of its neighbours, kept or imputed; the system is
solved per image for all channels together (one factorisation, C right-hand sides). Then Gaussian
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
        from scipy.linalg import solveh_banded
    except ImportError as err:
        raise ImportError("ROAD's noisy linear imputation needs SciPy: pip install 'convscope[features]'") from err
    return solveh_banded


def linear_imputation(image: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """The imputed values (C, k) float64 of the pixels ``indices`` (k,) (flat, row-major over
    H x W, in any order; column j belongs to ``indices[j]``) of one (C, H, W) image; at least
    one pixel must be kept.

    The matrix ``D - W`` (D the neighbours' total weight, W the weights between removed
    neighbours) is symmetric and diagonally dominant, strictly so on every connected set of
    removed pixels, since each touches a kept one: positive definite. With the unknowns in
    raster order its band is at most W + 1 wide, so it is solved by banded Cholesky (LAPACK
    ``pbtrf``), 3x faster than a general sparse LU on the demo images, and to the same answer.
    """
    solveh_banded = _sparse()
    c, h, w = image.shape
    indices = np.asarray(indices, np.int64)
    k = len(indices)
    if k == 0:
        return np.zeros((c, 0))
    flat = image.reshape(c, h * w).astype(np.float64)
    order = np.argsort(indices, kind="stable")
    raster = indices[order]
    variable = np.full(h * w, -1, np.int64)
    variable[raster] = np.arange(k)
    ys, xs = np.divmod(raster, w)
    diagonal = np.zeros(k)
    rhs = np.zeros((k, c))
    couplings = []
    for (dy, dx), weight in NEIGHBOUR_WEIGHTS:  # eight offsets, every pixel at once (each p once per offset)
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        p = np.nonzero(inside)[0]
        v = variable[ny[inside] * w + nx[inside]]
        diagonal[p] += weight
        kept = v < 0
        rhs[p[kept]] += weight * flat[:, ny[inside][kept] * w + nx[inside][kept]].T
        later = ~kept & (v > p)  # the upper triangle: each removed pair once
        couplings.append((p[later], v[later], weight))
    band = max([int((v - p).max()) for p, v, _ in couplings if len(p)] + [0])
    ab = np.zeros((band + 1, k))  # LAPACK upper band storage: ab[band + i - j, j] = a[i, j]
    ab[band] = diagonal
    for p, v, weight in couplings:
        ab[band + p - v, v] = -weight
    solved = np.empty((k, c))
    solved[order] = solveh_banded(ab, rhs, check_finite=False)
    return solved.T


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
