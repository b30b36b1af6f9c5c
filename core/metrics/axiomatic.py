"""Axiomatic metrics: does an attribution keep the promises its axioms make?

- :func:`completeness` (Sundararajan et al. 2017): the attributions add up to the change of
  the explained output between the baseline and the image;
- :func:`input_invariance` (Kindermans et al. 2017, "The (un)reliability of saliency
  methods"): a model whose first layer absorbs a constant shift of its input computes the same
  function of the unshifted image, so the attribution should not change;
- :func:`non_sensitivity` (Nguyen and Martinez 2020, "On quantitative aspects of model
  interpretability"): the pixels with zero attribution are exactly those whose perturbation
  leaves the output unchanged.
"""
from __future__ import annotations

import numpy as np

from .._plugins import load
from ..backend import unchecked
from .._batching import auto_batch_size
from .._imageops import fill_images
from .._targets import OUTPUT_MODES, check_target, entry_images, objective, output_seeds, with_choices
from .._validate import check_choice, check_int, check_number, param_error
from .pointing import as_maps
from .registry import as_method, register_metric
from .result import MetricScores

__all__ = ["completeness", "input_invariance", "non_sensitivity"]


def _forward_all(backend, images, batch_size):
    """The outputs of (M, C, H, W) images, ``batch_size`` a call."""
    return np.concatenate([backend.forward(images[s:s + batch_size]) for s in range(0, len(images), batch_size)])


def _explained_target(maps, target, n, owner):
    if target is None and getattr(maps, "target", None) is not None:
        target = maps.target
    return check_target(target, n, owner)


@register_metric("completeness", "axiomatic", higher_is_better=False, needs=("model", "x", "maps", "target"))
def completeness(model, x, maps, target=None, *, baseline=0.0, output: str = "score",
                 batch_size: int | None = None) -> MetricScores:
    """Completeness gap (Sundararajan et al. 2017): ``|sum_i a_i - (f(x) - f(x'))|`` per image,
    ``f`` the explained score (or its softmax, ``output="probability"``), ``x'`` the baseline;
    0 for a method that is complete, lower is better.

    ``maps`` is an AttributionMaps (its per-channel ``attributions`` are summed when it has
    them, else its maps; its ``target`` is used when ``target`` is None) or (N, H, W) signed
    maps. ``baseline`` as the fill of :func:`convscope.metrics.deletion`: a number (0.0, black,
    the default of integrated gradients), ``"mean"``, ``"zero"``, ``"blur"`` or one value per
    channel. ``info["delta"]`` holds the signed ``sum a - (f(x) - f(x'))`` (Captum's convergence
    delta). Quantus's Completeness answers ``sum a == f(x) - f(x')`` exactly (a float equality
    that almost never holds) after dividing the maps by their batch maximum by default; the gap
    is the number behind it.
    """
    owner = "completeness"
    backend = load(model)
    x = entry_images(backend, x, owner)
    n, _, h, w = x.shape
    check_choice(output, OUTPUT_MODES, "output", owner)
    a = getattr(maps, "attributions", None)
    if a is not None and np.shape(a)[0] == n and np.shape(a)[2:] == (h, w):
        total = np.asarray(a, np.float64).reshape(n, -1).sum(axis=1)
        summed = "attributions"
    else:
        m = as_maps(maps, owner)
        if len(m) != n:
            raise param_error("maps", owner, f"one map per image ({n})", f"{len(m)} maps")
        total = m.reshape(n, -1).astype(np.float64).sum(axis=1)
        summed = "maps"
    target = _explained_target(maps, target, n, owner)
    batch_size = auto_batch_size(h, w, backend=backend) if batch_size is None else check_int(batch_size, "batch_size", owner, low=1)
    base = fill_images(x, baseline, owner, sigma=5.0, param="baseline")
    outputs = _forward_all(unchecked(backend), np.concatenate([x, base]), batch_size)
    seeds, classes = output_seeds(target, outputs[:n], owner)
    change = objective(outputs[:n], seeds, output) - objective(outputs[n:], seeds, output)
    delta = total - change
    return MetricScores(owner, np.abs(delta), False,
                        with_choices({"delta": delta, "sum": total, "difference": change, "summed": summed,
                                      "target": classes, "output": output}, backend))


def _shifted_backend(backend, shift, owner):
    """A backend whose first layer's bias absorbs the shift: ``b_o - shift * sum W_o``."""
    layers = backend.layers()
    first = layers[0] if layers else None
    params = backend.weights(first.name) if first is not None and first.kind in ("conv", "linear") else {}
    if "weight" not in params or "bias" not in params:
        what = "no layers" if first is None else f"{first.name!r} ({first.kind}{', no bias' if params else ''})"
        raise param_error("model", owner, "a model whose first layer is a conv or linear layer with a bias "
                          "(else pass shifted_model=)", what)
    weight, bias = params["weight"].astype(np.float64), params["bias"].astype(np.float64)
    new_bias = bias - shift * weight.reshape(len(weight), -1).sum(axis=1)
    try:
        return backend.with_weights({first.name: {"bias": new_bias.astype(params["bias"].dtype)}}), first.name
    except NotImplementedError as err:
        raise param_error("model", owner, "a model whose backend can replace weights (else pass shifted_model=)",
                          str(err)) from None


@register_metric("input_invariance", "axiomatic", higher_is_better=True, needs=("model", "x", "method", "target"))
def input_invariance(model, x, method, target=None, *, shift: float = -1.0, atol: float = 1e-4,
                     shifted_model=None) -> MetricScores:
    """Input invariance (Kindermans et al. 2017): 1.0 where the method's maps of ``x`` on the
    model and of ``x + shift`` on the shifted model agree (``|a - a'| <= atol + 1e-5 |a'|`` at
    every pixel, as Quantus tests), else 0.0; higher is better.

    The shifted model is the model with its first layer's bias ``b`` replaced by
    ``b - shift * sum W`` (``backend.with_weights``): it computes on ``x + shift`` exactly what
    the model computes on ``x``, as long as the first layer never sees padding (a zero-padded
    border is not shifted). Each image is checked: where the two models' outputs differ (more
    than 1e-4 of the largest output) the premise fails and the score is NaN, ``info`` says
    why. Pass ``shifted_model=`` (anything :func:`convscope.load` takes) to give your own.
    ``method`` as in :func:`convscope.metrics.max_sensitivity`; both maps explain the class of
    the unshifted image. ``info["max_difference"]`` holds the largest ``|a - a'|`` per image.
    """
    owner = "input_invariance"
    backend = load(model)
    x = entry_images(backend, x, owner)
    explain = as_method(method, owner)
    shift = check_number(shift, "shift", owner)
    atol = check_number(atol, "atol", owner, low=0)
    n = len(x)
    target = check_target(target, n, owner)
    out = unchecked(backend).forward(x)
    seeds, classes = output_seeds(target, out, owner)
    if shifted_model is None:
        shifted, layer = _shifted_backend(backend, shift, owner)
        how = f"the bias of {layer!r} absorbs the shift"
    else:
        shifted, how = load(shifted_model), "given"
    moved = (x.astype(np.float64) + shift).astype(np.float32)
    out_shifted = unchecked(shifted).forward(moved)
    fixed = classes if classes is not None else (lambda o: seeds)
    a = as_maps(explain(backend, x, fixed), owner).astype(np.float64)
    a_shifted = as_maps(explain(shifted, moved, fixed), owner).astype(np.float64)
    scale = 1e-4 * max(1.0, float(np.abs(out).max()))
    same_model = np.abs(out_shifted.astype(np.float64) - out).max(axis=1) <= scale
    close = np.abs(a - a_shifted) <= atol + 1e-5 * np.abs(a_shifted)
    scores = close.reshape(n, -1).all(axis=1).astype(np.float64)
    scores[~same_model] = np.nan
    info = {"shift": shift, "atol": atol, "shifted_model": how, "target": classes,
            "max_difference": np.abs(a - a_shifted).reshape(n, -1).max(axis=1),
            "output_difference": np.abs(out_shifted.astype(np.float64) - out).max(axis=1)}
    if not same_model.all():
        info["undefined"] = (f"{int((~same_model).sum())} images: the shifted model's outputs differ from the "
                             "model's (a padded first layer does not absorb a shift); no verdict")
    return MetricScores(owner, scores, True, with_choices(info, backend))


@register_metric("non_sensitivity", "axiomatic", higher_is_better=False, needs=("model", "x", "maps", "target"))
def non_sensitivity(model, x, maps, target=None, *, fill="zero", eps: float = 1e-5, features_in_step: int = 1,
                    output: str = "score", batch_size: int | None = None) -> MetricScores:
    """Non-sensitivity (Nguyen and Martinez 2020): the number of pixels in the symmetric
    difference of those with zero attribution and those the output does not depend on; 0 is
    best, lower is better.

    A pixel has zero attribution when ``|m| < eps max|m|`` in its map (``maps`` (N, H, W) or an
    AttributionMaps); the output does not depend on it when replacing it (all channels, by
    ``fill`` as in :func:`convscope.metrics.deletion`; "zero" is black for images in [0, 1])
    changes the explained output (``output="score"`` or ``"probability"``) by less than
    ``eps``. ``features_in_step`` pixels (consecutive in raster order) are replaced together
    and each takes its group's answer. One forward pass per replaced group of every image,
    ``batch_size`` images a call.

    Quantus's NonSensitivity counts channel values, not pixels (a map is broadcast over the
    channels and each value is replaced alone), divides the maps by the batch's largest
    magnitude, compares probabilities by default, and fails for ``features_in_step > 1``; on a
    one-channel image with ``features_in_step=1`` and per-image maxima both count the same.
    ``info`` holds the two kinds of disagreement per image.
    """
    owner = "non_sensitivity"
    backend = load(model)
    x = entry_images(backend, x, owner)
    n, c, h, w = x.shape
    m = as_maps(maps, owner, (h, w)).astype(np.float64)
    if len(m) != n:
        raise param_error("maps", owner, f"one map per image ({n})", f"{len(m)} maps")
    eps = check_number(eps, "eps", owner, low=0)
    step = check_int(features_in_step, "features_in_step", owner, low=1, high=h * w)
    check_choice(output, OUTPUT_MODES, "output", owner)
    target = _explained_target(maps, target, n, owner)
    batch_size = auto_batch_size(h, w, backend=backend) if batch_size is None else check_int(batch_size, "batch_size", owner, low=1)
    blank = fill_images(x, fill, owner, sigma=5.0)

    run = unchecked(backend)
    out = run.forward(x)
    seeds, classes = output_seeds(target, out, owner)
    clean = objective(out, seeds, output)
    group = (np.arange(h * w) // step).reshape(1, 1, h, w)
    groups = -(-h * w // step)
    unchanged = np.empty((n, groups), bool)
    pairs = n * groups
    for start in range(0, pairs, batch_size):
        j = np.arange(start, min(start + batch_size, pairs))
        i, g = np.divmod(j, groups)
        images = np.where(group == g[:, None, None, None], blank[i], x[i])
        score = objective(run.forward(images), seeds[i], output)
        unchanged[i, g] = np.abs(score - clean[i]) < eps
    flat = np.abs(m.reshape(n, -1))
    top = flat.max(axis=1, keepdims=True)
    zero = flat < eps * np.where(top > 0, top, 1.0)
    independent = unchanged[:, group.reshape(-1)]  # each pixel takes its group's answer
    missed = (zero & ~independent).sum(axis=1)
    spurious = (~zero & independent).sum(axis=1)
    info = {"zero_but_sensitive": missed, "attributed_but_insensitive": spurious, "fill": fill, "eps": eps,
            "features_in_step": step, "output": output, "target": classes}
    return MetricScores(owner, (missed + spurious).astype(np.float64), False, with_choices(info, backend))
