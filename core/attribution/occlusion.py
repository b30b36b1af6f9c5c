"""Occlusion (Zeiler and Fergus 2014): how much the explained score drops when a window of
the image is covered. Gradient-free, so it runs on every backend through ``forward``."""
from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_int, check_number, describe, param_error
from .._batching import auto_batch_size
from .._imageops import fill_images
from .._incremental import NotIncremental, incremental_plan, window_patches
from .._targets import OUTPUT_MODES, check_target, objective, output_seeds, prepare, with_choices
from .result import AttributionMaps

__all__ = ["occlusion", "window_positions"]

#: With ``incremental="auto"``, windows larger than this fraction of the image run plain: their
#: projective fields cover the maps after a few layers and the plan (about three forwards of
#: the image) is not repaid (the demo model, 32 x 32 windows on 64 x 64 images: 2x slower).
AUTO_MAX_WINDOW_AREA = 1 / 8

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


def _check_modes(incremental, approximate, owner):
    if not (incremental is True or incremental is False or (isinstance(incremental, str) and incremental == "auto")):
        raise param_error("incremental", owner, "'auto', True or False", describe(incremental),
                          ValueError if isinstance(incremental, str) else TypeError)
    if approximate is None:
        return incremental, None
    threshold = check_number(approximate, "approximate", owner, low=0.0, strict=True)
    if threshold > 1:
        raise param_error("approximate", owner, "None or a threshold in (0, 1]", str(approximate))
    if incremental is False:
        raise param_error("incremental", owner, "'auto' or True with approximate= (approximate mode is incremental)",
                          "False")
    return incremental, threshold


def occlusion(model, x, target=None, *, window=8, stride=None, fill="mean", output: str = "score",
              perturbations_per_eval: int | None = None, blur_sigma: float | None = None,
              incremental="auto", approximate: float | None = None) -> AttributionMaps:
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
    incremental : "auto", True or False
        Incremental inference (Nakandala, Kumar and Papakonstantinou, SIGMOD 2019, "Krypton"):
        the original image runs once and each occluded copy recomputes, layer by layer, only
        the window's projective field, reading the rest from the original's activations;
        equal to the plain forward within float rounding. "auto" uses it where the backend
        has a plan for the model (torch and ONNX) and the window covers at most
        :data:`AUTO_MAX_WINDOW_AREA` of the image, and otherwise runs every occluded image
        through the whole network, with ``info["incremental_why"]`` saying why; True
        requires it (an error names why it is impossible); False is the plain path.
    approximate : float in (0, 1] or None
        Krypton's projective-field thresholding (implies incremental): at each conv or pool
        the recomputed box is cut to at most ``approximate`` times the map's side, the
        outputs cut off keeping the original's values. Faster, no longer exact; 1.0 is exact.
        ``info["approximate_error"]`` gives the error measured on up to 8 windows of the
        first image, scored both ways: the largest absolute difference of the score drops
        ``d_w`` and that divided by the largest ``|d_w|`` of exact occlusion there.

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
    incremental, threshold = _check_modes(incremental, approximate, owner)
    if perturbations_per_eval is not None:
        perturbations_per_eval = check_int(perturbations_per_eval, "perturbations_per_eval", owner, low=1)
    target = check_target(target, n, owner)
    sigma = blur_sigma if blur_sigma is not None else max(window) / 4
    filled = fill_images(x, fill, owner, sigma=sigma)

    corners = window_positions((height, width), window, stride)
    wh, ww = window
    changed = np.stack([(x[:, :, y:y + wh, c:c + ww] != filled[:, :, y:y + wh, c:c + ww]).reshape(n, -1).any(axis=1)
                        for y, c in corners])
    pairs = np.argwhere(changed)  # (window, sample), window-major as Captum orders them
    info = {"window": window, "stride": stride, "fill": fill if isinstance(fill, str) else "value", "output": output,
            "evaluated": int(len(pairs)), "windows": len(corners)}
    args = (backend, x, filled, corners, window, pairs, target, owner)
    run = None
    large = wh * ww > AUTO_MAX_WINDOW_AREA * height * width
    if incremental is False:
        info.update(incremental=False, incremental_why="incremental=False was passed")
    elif incremental == "auto" and large and threshold is None:
        info.update(incremental=False, incremental_why=f"plain occlusion: a {wh}x{ww} window covers more than "
                    f"1/{round(1 / AUTO_MAX_WINDOW_AREA)} of the image, its projective field soon the whole map "
                    "(incremental=True runs the plan anyway)")
    else:
        run = _incremental_scores(*args, threshold, perturbations_per_eval, info, required=incremental is True)
    if run is None:
        per_eval = perturbations_per_eval or max(1, auto_batch_size(height, width, backend=backend) // n)
        run = _plain_scores(*args, per_eval)
    base, seeds, classes, outputs = run

    drop = np.zeros((len(corners), n), np.float64)
    if len(pairs):
        drop[pairs[:, 0], pairs[:, 1]] = (objective(base, seeds, output)[pairs[:, 1]]
                                          - objective(outputs, seeds[pairs[:, 1]], output))
    if "approximate_error" in info:
        info["approximate_error"] = _approximate_error(info.pop("approximate_error"), base, seeds, output)
    total = np.zeros((n, height, width), np.float64)
    count = np.zeros((height, width), np.float64)
    for (y, c), d in zip(corners, drop):
        total[:, y:y + wh, c:c + ww] += d[:, None, None]
        count[y:y + wh, c:c + ww] += 1
    maps = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    return AttributionMaps(maps, x, owner, classes, signed=True, outputs=base, info=with_choices(info, backend))


def _plain_scores(backend, x, filled, corners, window, pairs, target, owner, per_eval):
    """Every occluded image through the whole network; the clean images ride in the first call."""
    n = len(x)
    wh, ww = window
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
    return base, seeds, classes, outputs


def _incremental_scores(backend, x, filled, corners, window, pairs, target, owner, threshold, per_eval, info,
                        required):
    """The occluded images' scores through the backend's incremental plan, one plan per image
    (:mod:`convscope._incremental`), or None (with ``info`` saying why) when it has none."""
    n, _, height, width = x.shape
    per_eval = per_eval or auto_batch_size(height, width, backend=backend)
    base = backend.forward(x)  # the clean scores: the target is checked before any further call
    seeds, classes = output_seeds(target, base, owner)
    outputs = np.empty((len(pairs), base.shape[1]), np.float32)
    corners = np.asarray(corners, np.int64)
    plans = []
    for s in range(n):
        rows = np.nonzero(pairs[:, 1] == s)[0]
        if not len(rows):
            continue
        try:
            plan = incremental_plan(backend, x[s:s + 1], window, threshold)
        except NotIncremental as err:
            if required:
                raise param_error("incremental", owner, "False or 'auto' for this model (it has no incremental "
                                  "path)", f"True ({err})") from None
            exact = "" if threshold is None else " (exact: approximate= needs the incremental path)"
            info.update(incremental=False, incremental_why=f"plain occlusion{exact}: {err}")
            return None
        for start in range(0, len(rows), per_eval):
            chunk = rows[start:start + per_eval]
            patches, starts = window_patches(x[s], filled[s], corners[pairs[chunk, 0]], window)
            outputs[chunk] = plan.scores(patches, starts)
        if threshold is not None and "approximate_error" not in info:
            sample = rows[np.unique(np.linspace(0, len(rows) - 1, min(8, len(rows))).astype(int))]
            exact = incremental_plan(backend, x[s:s + 1], window, None)
            patches, starts = window_patches(x[s], filled[s], corners[pairs[sample, 0]], window)
            info["approximate_error"] = (s, outputs[sample], exact.scores(patches, starts))
        plans.append(plan.info)
    summary = dict(plans[0]) if plans else {}
    works = [p["conv_work"] for p in plans if p.get("conv_work") is not None]
    if len(plans) > 1 and works:  # the mean over the images
        summary["conv_work"] = round(float(np.mean(works)), 4)
    info.update(incremental=True, plan=summary)
    return base, seeds, classes, outputs


def _approximate_error(measured, base, seeds, output):
    """Max absolute and relative error of the approximate score drops on the sampled windows."""
    s, approximate, exact = measured
    ref = objective(base[s:s + 1], seeds[s:s + 1], output)
    d_approx = ref - objective(approximate, np.repeat(seeds[s:s + 1], len(approximate), 0), output)
    d_exact = ref - objective(exact, np.repeat(seeds[s:s + 1], len(exact), 0), output)
    err = float(np.abs(d_approx - d_exact).max())
    scale = float(np.abs(d_exact).max())
    return {"windows": len(exact), "image": int(s), "max_abs": err, "max_relative": err / scale if scale > 0 else 0.0}
