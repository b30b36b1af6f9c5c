"""What the sampling and perturbation methods share: the baseline, the features (superpixels or
the user's label map), composite images ``where(keep[labels], x, baseline)`` and their scores,
evaluated a bounded number of images per backend call.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_int, describe, param_error
from .._targets import objective, output_seeds
from .._segments import check_segments, superpixels

#: The segmentation used when ``features`` is left open: SLIC with this many segments.
DEFAULT_SEGMENTS = 50


def check_baseline(baseline, x, owner):
    """(N, C, H, W) float32 replacement values: a number, one value per channel, or an array
    broadcasting to ``x``."""
    if isinstance(baseline, (int, float, np.integer, np.floating)) and not isinstance(baseline, bool):
        b = np.asarray(baseline, np.float32)
    elif isinstance(baseline, (np.ndarray, list, tuple)):
        b = np.asarray(baseline, np.float32)
        if b.ndim == 1 and len(b) == x.shape[1]:
            b = b[None, :, None, None]
    else:
        raise param_error("baseline", owner, "a number, one value per channel or an array broadcasting to the input",
                          describe(baseline), TypeError)
    try:
        out = np.ascontiguousarray(np.broadcast_to(b, x.shape), np.float32)
    except ValueError:
        raise param_error("baseline", owner, f"a number, {x.shape[1]} values (one per channel) or an array that "
                          f"broadcasts to the input {x.shape}", f"shape {b.shape}") from None
    if not np.isfinite(out).all():
        raise param_error("baseline", owner, "finite values", "NaN or infinity")
    return out


def resolve_features(features, x, owner, *, param="features"):
    """(N, H, W) int64 labels 0..L_n-1 per image and what was used, for ``features``:
    None (SLIC, :data:`DEFAULT_SEGMENTS`), ``"slic"`` (the same), an int (SLIC with that many
    segments), or the user's labels, (H, W) for every image or (N, H, W)."""
    n, _, h, w = x.shape
    if features is None or (isinstance(features, str) and features == "slic"):
        chosen = {"features": f"SLIC superpixels, n_segments={DEFAULT_SEGMENTS} (scikit-image)"}
        return superpixels(x, DEFAULT_SEGMENTS, owner=owner), {"features": "slic", "choices": chosen}
    if isinstance(features, str):
        raise param_error(param, owner, "None, 'slic', a number of segments or an integer label map",
                          repr(features))
    if isinstance(features, (int, np.integer)) and not isinstance(features, bool):
        count = check_int(features, param, owner, low=1)
        if count > h * w:
            raise param_error(param, owner, f"a number of superpixels no larger than the {h * w} pixels "
                              f"of a {h}x{w} image", str(count))
        return superpixels(x, count, owner=owner), {"features": f"slic({count})"}
    labels = np.asarray(features)
    if labels.ndim == 2 and labels.dtype.kind in "iu" and labels.shape == (h, w):
        labels = np.broadcast_to(labels, (n, h, w))
    if labels.shape != (n, h, w) or labels.dtype.kind not in "iu":
        raise param_error(param, owner, f"None, 'slic', a number of segments, or integer labels of shape "
                          f"{(h, w)} or {(n, h, w)} (one label image per image)", describe(features))
    return check_segments(labels, x.shape, owner, param=param), {"features": "given"}


def composite(x, base, labels, samples, keep, out=None):
    """Images ``where(keep[r, labels[s_r]], x[s_r], base[s_r])`` for rows r (sample ``samples[r]``,
    ``keep`` (R, L) bool over that sample's features), written into ``out`` (at least R images,
    float32, reused between calls) when given.

    Rows of one sample in a row are made together: one ``take`` of their keep masks through
    the sample's label map, the baseline copied in and ``x`` copied where kept (exact values
    of ``x`` and of the baseline, no arithmetic)."""
    r = len(samples)
    out = np.empty((r,) + x.shape[1:], np.float32) if out is None else out[:r]
    flat = labels.reshape(len(labels), -1)
    cuts = np.flatnonzero(np.diff(samples)) + 1
    for start, stop in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [r]])):
        s = samples[start]
        on = keep[start:stop].take(flat[s], axis=1).reshape((stop - start, 1) + labels.shape[1:])
        block = out[start:stop]
        block[...] = base[s]
        np.copyto(block, x[s], where=on)
    return out


class Scorer:
    """The explained objective of images, a bounded number per backend call.

    The first call, :meth:`clean`, scores the unperturbed images and fixes the explained class
    of each (``target`` checked against those outputs before any further pass)."""

    def __init__(self, backend, x, target, output, owner, per_call):
        self.backend, self.owner, self.output, self.per_call = backend, owner, output, per_call
        self.largest = 0
        self.outputs = backend.forward(x)
        self.seeds, self.classes = output_seeds(target, self.outputs, owner)
        self.clean = objective(self.outputs, self.seeds, output)

    def score(self, images, samples):
        """(R,) float64 objective of ``images`` (at most ``per_call`` of them), row r of sample ``samples[r]``."""
        self.largest = max(self.largest, len(images))
        return objective(self.backend.forward(np.ascontiguousarray(images, np.float32)), self.seeds[samples],
                         self.output)

    def rows(self, x, base, labels, samples, keep_of):
        """(R,) objective of the composites of rows R = len(samples); ``keep_of(start, stop)`` gives
        the keep masks of rows start:stop, so only ``per_call`` images exist at a time."""
        out = np.empty(len(samples), np.float64)
        images = np.empty((min(self.per_call, len(samples)),) + x.shape[1:], np.float32)  # one buffer, reused
        for start in range(0, len(samples), self.per_call):
            stop = min(start + self.per_call, len(samples))
            s = samples[start:stop]
            out[start:stop] = self.score(composite(x, base, labels, s, keep_of(start, stop), images), s)
        return out


def per_call(perturbations_per_eval, n, owner, default):
    """Images per backend call: ``perturbations_per_eval`` perturbed copies of each of the n images."""
    if perturbations_per_eval is None:
        return max(n, default)
    return n * check_int(perturbations_per_eval, "perturbations_per_eval", owner, low=1)


def feature_counts(labels):
    """(N,) number of features per image (labels are 0..L_n-1)."""
    return labels.reshape(len(labels), -1).max(axis=1) + 1


def spread(values, labels):
    """(N, H, W) float32 maps: each pixel gets the value of its feature, ``values`` (N, L)."""
    n = len(labels)
    return np.take_along_axis(values, labels.reshape(n, -1), axis=1).reshape(labels.shape).astype(np.float32)


def constrained_least_squares(z, y, weights, total):
    """``phi`` minimising ``sum_r w_r (y_r - z_r . phi)^2`` subject to ``sum phi = total`` (float64):
    the KernelSHAP fit (Lundberg and Lee 2017), the last coefficient eliminated as shap does."""
    z, y, w = z.astype(np.float64), y.astype(np.float64), weights.astype(np.float64)
    m = z.shape[1]
    if m == 1:
        return np.array([total])
    a = z[:, :-1] - z[:, -1:]
    b = y - z[:, -1] * total
    aw = a * w[:, None]
    head = np.linalg.lstsq(aw.T @ a, aw.T @ b, rcond=None)[0]
    return np.append(head, total - head.sum())
