"""Occlusion (Zeiler and Fergus 2014): how much the explained score drops when a window of
the image is covered. Gradient-free, so it runs on every backend through ``forward``."""
from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_int, describe, param_error
from .._batching import auto_batch_size
from .._imageops import fill_images
from .._targets import OUTPUT_MODES, check_target, objective, output_seeds, prepare, with_choices
from .result import AttributionMaps

__all__ = ["occlusion", "window_positions"]

def _pair(value, param, owner):
    pair = (value, value) if isinstance(value, (int, np.integer)) and not isinstance(value, bool) else value
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise param_error(param, owner, "an int or an (height, width) pair of ints", describe(value), TypeError)
    return tuple(check_int(v, param, owner, low=1) for v in pair)


def window_positions(size, window, stride):
    """Top-left corners of the windows: ``k * stride`` for ``k = 0 .. ceil((size - window) / stride)``
    per axis. The last window may run past the border and is cut there (as in Captum), so
    every pixel is covered when ``stride <= window``."""
    def starts(n, w, s):
        return [k * s for k in range(-(-(n - w) // s) + 1)]

    return [(y, x) for y in starts(size[0], window[0], stride[0]) for x in starts(size[1], window[1], stride[1])]


def occlusion(model, x, target=None, *, window=8, stride=None, fill="mean", output: str = "score",
              perturbations_per_eval: int | None = None, blur_sigma: float | None = None) -> AttributionMaps:
    """Occlusion sensitivity: ``d_w = f(x) - f(x with window w filled)`` for every window
    position w, and for each pixel the mean of ``d_w`` over the windows that cover it
    (pixels no window covers, possible when ``stride > window``, get 0), as Captum's
    ``Occlusion`` computes it.

    Parameters
    ----------
    window, stride : int or (h, w)
        Window size and step in pixels; ``stride`` defaults to half the window.
    fill : "mean", "zero", "blur", a number, or one value per channel
        What covers the window: the image's own per-channel mean, zeros, a Gaussian blur of
        the image (``blur_sigma``, default window / 4), a constant, or e.g. the mean colour
        of your dataset.
    output : "score" or "probability"
        ``f`` is the explained score, or its softmax probability.
    perturbations_per_eval : int or None
        Occluded copies of each image per backend call (None: :func:`auto_batch_size` images
        a call).

    Work is saved where it can be: the unoccluded images ride along in the first call, and a
    window whose fill equals the pixels it covers is not evaluated (its change is exactly 0).
    """
    owner = "occlusion"
    backend, x = prepare(model, x, owner)
    n, _, height, width = x.shape
    window = _pair(window, "window", owner)
    if window[0] > height or window[1] > width:
        raise param_error("window", owner, f"no larger than the {height}x{width} image", f"{window[0]}x{window[1]}")
    stride = _pair(stride if stride is not None else (max(1, window[0] // 2), max(1, window[1] // 2)), "stride", owner)
    check_choice(output, OUTPUT_MODES, "output", owner)
    if perturbations_per_eval is None:
        per_eval = max(1, auto_batch_size(height, width) // n)
    else:
        per_eval = check_int(perturbations_per_eval, "perturbations_per_eval", owner, low=1)
    target = check_target(target, n, owner)
    sigma = blur_sigma if blur_sigma is not None else max(window) / 4
    filled = fill_images(x, fill, owner, sigma=sigma)

    corners = window_positions((height, width), window, stride)
    wh, ww = window
    changed = np.stack([(x[:, :, y:y + wh, c:c + ww] != filled[:, :, y:y + wh, c:c + ww]).reshape(n, -1).any(axis=1)
                        for y, c in corners])
    pairs = np.argwhere(changed)  # (window, sample), window-major as Captum orders them
    per_call = n * per_eval
    for start in range(0, max(len(pairs), 1), per_call):
        chunk = pairs[start:start + per_call]
        images = np.empty((len(chunk) + (n if start == 0 else 0), *x.shape[1:]), np.float32)
        images[:len(chunk)] = x[chunk[:, 1]]
        for row, (i, s) in enumerate(chunk):
            y, c = corners[i]
            images[row, :, y:y + wh, c:c + ww] = filled[s, :, y:y + wh, c:c + ww]
        if start == 0:
            images[len(chunk):] = x
        out = backend.forward(images)
        if start == 0:  # the clean images' scores: check the target before any further call
            base, out = out[len(chunk):], out[:len(chunk)]
            seeds, classes = output_seeds(target, base, owner)
            outputs = np.empty((len(pairs), out.shape[1]), np.float32)
        outputs[start:start + len(chunk)] = out

    drop = np.zeros((len(corners), n), np.float64)
    if len(pairs):
        drop[pairs[:, 0], pairs[:, 1]] = (objective(base, seeds, output)[pairs[:, 1]]
                                          - objective(outputs, seeds[pairs[:, 1]], output))
    total = np.zeros((n, height, width), np.float64)
    count = np.zeros((height, width), np.float64)
    for (y, c), d in zip(corners, drop):
        total[:, y:y + wh, c:c + ww] += d[:, None, None]
        count[y:y + wh, c:c + ww] += 1
    maps = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    info = {"window": window, "stride": stride, "fill": fill if isinstance(fill, str) else "value", "output": output,
            "evaluated": int(len(pairs)), "windows": len(corners)}
    return AttributionMaps(maps, x, owner, classes, signed=True, outputs=base, info=with_choices(info, backend))
