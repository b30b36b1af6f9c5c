"""Gram matrices of feature maps, their adjoint, and the diversity term built on them.

For activations ``A`` of one image reshaped to (C, M) with ``M = H W`` positions,
``G = A A^T / M`` (C, C): which channels fire together, wherever they fire. Its
gradient: for a loss with ``dL/dG = D``, ``dL/dA = (D + D^T) A / M``.
"""
from __future__ import annotations

import numpy as np

from .._validate import param_error
from .objectives import _LayerObjective

__all__ = ["gram", "gram_adjoint", "gram_similarity", "diversity"]


def _flat(a, owner="gram"):
    a = np.asarray(a, np.float32)
    if a.ndim < 2:
        raise param_error("a", owner, "activations (N, C, ...) with at least 2 dimensions", f"shape {a.shape}")
    return a.reshape(a.shape[0], a.shape[1], -1) if a.ndim > 2 else a[:, :, None]


def gram(a: np.ndarray) -> np.ndarray:
    """``G = A A^T / M`` per image: (N, C, H, W) -> (N, C, C)."""
    f = _flat(a)
    return np.matmul(f, f.transpose(0, 2, 1)) / f.shape[2]


def gram_adjoint(a: np.ndarray, d: np.ndarray) -> np.ndarray:
    """``dL/dA = (D + D^T) A / M`` for ``dL/dG = D`` (N, C, C); shaped like ``a``."""
    f = _flat(a)
    out = np.matmul(d + d.transpose(0, 2, 1), f) / f.shape[2]
    return out.reshape(np.shape(a)).astype(np.float32)


def _cosines(g):
    flat = g.reshape(len(g), -1).astype(np.float64)
    norms = np.maximum(np.linalg.norm(flat, axis=1), 1e-12)
    unit = flat / norms[:, None]
    return flat, norms, unit, unit @ unit.T


def gram_similarity(a: np.ndarray) -> float:
    """Mean pairwise cosine similarity of the images' Gram matrices, ``mean_{i != j} cos(G_i, G_j)``
    (1: the same style everywhere; lower: a more diverse batch)."""
    _flat(a, "gram_similarity")
    n = len(a)
    if n < 2:
        return 1.0
    cos = _cosines(gram(a))[3]
    return float((cos.sum() - np.trace(cos)) / (n * (n - 1)))


class diversity(_LayerObjective):
    """Diversity of a batch (Olah et al. 2017): per image ``-mean_{j != i} cos(G_i, G_j)``
    at ``layer``. Added to an objective with a weight, it pushes the images of one batch
    to different styles of activating the same objective."""

    def compute(self, acts):
        a = acts[self.layer]
        n = len(a)
        if n < 2:
            return np.zeros(n, np.float32), {self.layer: np.zeros_like(a)}
        g = gram(a)
        flat, norms, unit, cos = _cosines(g)
        off = cos - np.diag(np.diag(cos))
        values = -off.sum(axis=1) / (n - 1)
        # d(sum_i values_i)/d g_i = -2/(n-1) sum_{j != i} (u_j - cos_ij u_i) / |g_i|
        others = unit.sum(axis=0, keepdims=True) - unit  # sum_{j != i} u_j
        dflat = -2.0 / (n - 1) * (others - off.sum(axis=1, keepdims=True) * unit) / norms[:, None]
        d = dflat.reshape(g.shape).astype(np.float32)
        return values.astype(np.float32), {self.layer: gram_adjoint(a, d)}

    def __repr__(self):
        return f"diversity({self.layer!r})"
