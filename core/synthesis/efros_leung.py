"""Efros-Leung texture synthesis (Efros and Leung 1999): the classic non-neural baseline.

The new texture grows outwards from a random 3 x 3 seed taken from the exemplar. Each
unfilled pixel next to filled ones (those with the most filled neighbours first) looks at
its ``window x window`` neighbourhood and compares it with every exemplar patch by the
sum of squared differences over the filled positions, weighted by a Gaussian of sigma
``window / 6.4``::

    d(p) = sum_k G_k m_k |patch_p[k] - template[k]|^2 / sum_k G_k m_k

It takes the centre of a patch drawn at random among those with ``d <= (1 + eps) min d``.
No model is involved: it is the picture to compare Gram-matrix textures with.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_int, check_number, param_error
from .._progress import progress_bar
from .texture import Texture

__all__ = ["efros_leung"]


def efros_leung(exemplar, size=(48, 48), *, window: int = 11, eps: float = 0.1, seed: int = 0,
                progress=None) -> Texture:
    """Synthesise a ``size`` (H, W) texture from ``exemplar`` ((C, H, W) or (1, C, H, W),
    values in [0, 1]) by non-parametric sampling. ``window`` is odd; the exemplar must be
    larger than it."""
    owner = "efros_leung"
    e = np.asarray(exemplar, np.float32)
    if e.ndim == 4 and len(e) == 1:
        e = e[0]
    if e.ndim != 3 or not np.isfinite(e).all():
        raise param_error("exemplar", owner, "a finite (C, H, W) or (1, C, H, W) image", f"shape {e.shape}")
    window = check_int(window, "window", owner, low=3)
    if window % 2 == 0:
        raise param_error("window", owner, "odd", str(window))
    eps = check_number(eps, "eps", owner, low=0)
    seed = check_int(seed, "seed", owner, low=0)
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    h, w = (check_int(s, "size", owner, low=3) for s in size)
    c, eh, ew = e.shape
    if eh <= window or ew <= window:
        raise param_error("exemplar", owner, f"larger than the window ({window})", f"shape {e.shape}")
    rng = np.random.default_rng(seed)
    r = window // 2
    patches = np.lib.stride_tricks.sliding_window_view(e, (window, window), axis=(1, 2))  # (C, ph, pw, k, k)
    patches = patches.transpose(1, 2, 0, 3, 4).reshape(-1, c * window * window).astype(np.float64)
    centres = patches.reshape(len(patches), c, window, window)[:, :, r, r]
    squares = patches ** 2
    offsets = np.arange(window) - r
    gauss = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2 * (window / 6.4) ** 2))
    gauss = np.broadcast_to(gauss, (c, window, window)).reshape(-1)

    out = np.zeros((c, h + 2 * r, w + 2 * r), np.float64)
    filled = np.zeros((h + 2 * r, w + 2 * r), bool)
    sy, sx = rng.integers(0, eh - 2), rng.integers(0, ew - 2)
    cy, cx = r + h // 2 - 1, r + w // 2 - 1
    out[:, cy:cy + 3, cx:cx + 3] = e[:, sy:sy + 3, sx:sx + 3]
    filled[cy:cy + 3, cx:cx + 3] = True
    bar = progress_bar(total=h * w - 9, desc=owner, progress=progress)
    try:
        while not filled[r:r + h, r:r + w].all():
            inner = filled[r:r + h, r:r + w]
            count = sum(np.roll(np.roll(filled, dy, 0), dx, 1)[r:r + h, r:r + w]
                        for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
            ys, xs = np.nonzero(~inner & (count > 0))
            order = np.argsort(-count[ys, xs], kind="stable")
            for y, x in zip(ys[order], xs[order]):
                template = out[:, y:y + window, x:x + window].reshape(-1)
                mask = np.broadcast_to(filled[y:y + window, x:x + window], (c, window, window)).reshape(-1)
                weight = gauss * mask
                ssd = squares @ weight - 2.0 * (patches @ (weight * template)) + weight @ (template ** 2)
                ssd /= weight.sum()
                best = ssd.min()
                choices = np.flatnonzero(ssd <= best * (1 + eps) + 1e-12)
                pick = choices[rng.integers(len(choices))]
                out[:, y + r, x + r] = centres[pick]
                filled[y + r, x + r] = True
                bar.update(1)
    finally:
        bar.close()
    image = out[:, r:r + h, r:r + w].astype(np.float32)[None]
    return Texture(image, e[None], ["efros-leung"], [np.nan], (0.0, 1.0))
