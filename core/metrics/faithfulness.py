"""Faithfulness: does removing what a map calls important change the model's output as much as
the map says? ROAD (Rong et al. 2022), faithfulness correlation (Bhatt et al. 2020), IROF
(Rieger & Hansen 2020) and infidelity (Yeh et al. 2019); deletion and insertion are in
:mod:`convscope.metrics.curves`.

All need only ``forward``, so they run on every backend. Perturbed images are made a batch at a
time (never every perturbed copy at once) and each batch is one backend call, images and
perturbations stacked together.
"""
from __future__ import annotations

import numpy as np

from .._plugins import load
from ..backend import unchecked
from .._batching import batch_size_for
from .._imageops import fill_images
from .._targets import OUTPUT_MODES, check_target, entry_images, objective, output_seeds, with_choices
from .._validate import check_choice, check_int, check_number, describe, param_error
from ._imputation import _sparse, noisy_linear_imputation
from .._segments import check_segments, superpixels
from .pointing import as_maps
from .registry import register_metric
from .result import MetricScores

__all__ = ["road", "faithfulness_correlation", "irof", "infidelity"]

#: ROAD's percentages of removed pixels, 10 % to 90 % (Rong et al. 2022)
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
PERTURBATIONS = ("noisy-baseline", "gaussian", "square")


def _prepare(owner, model, x, maps, target, output, batch_size, outputs=OUTPUT_MODES):
    backend = load(model)
    x = entry_images(backend, x, owner)
    m = as_maps(maps, owner, x.shape[2:])
    if len(m) != len(x):
        raise param_error("maps", owner, f"one map per image ({len(x)})", f"{len(m)} maps")
    if not np.isfinite(m).all():
        raise param_error("maps", owner, "finite (no NaN or Inf)", f"{int(m.size - np.isfinite(m).sum())} non-finite values")
    check_choice(output, outputs, "output", owner)
    if target is None and getattr(maps, "target", None) is not None:
        target = maps.target
    target = check_target(target, len(x), owner)
    batch_size = batch_size_for(batch_size, x.shape[2:], owner, backend=backend)
    return backend, x, m.astype(np.float64), target, batch_size


def _clean(backend, x, target, owner, output, batch_size):
    """The explained objective of the unperturbed images, its seeds and classes."""
    out = np.concatenate([backend.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
    seeds, classes = output_seeds(target, out, owner)
    return objective(out, seeds, "probability" if output == "probability" else "score"), seeds, classes


def _stream(backend, pieces, rows, seeds, output, batch_size):
    """Objective values and predicted classes of the perturbed images ``pieces`` yields as
    ``(positions, images)``, forwarded ``batch_size`` at a time; ``rows[p]`` is the image whose
    seeds explain position p."""
    values = np.empty(len(rows), np.float64)
    predicted = np.empty(len(rows), np.int64)
    mode = "probability" if output == "probability" else "score"
    held, where = [], []

    def run(images, positions):
        out = backend.forward(np.ascontiguousarray(images, np.float32))
        values[positions] = objective(out, seeds[rows[positions]], mode)
        predicted[positions] = out.argmax(axis=1)

    for positions, images in pieces:
        held.append(images)
        where.append(positions)
        while sum(len(p) for p in where) >= batch_size:
            images, positions = np.concatenate(held), np.concatenate(where)
            run(images[:batch_size], positions[:batch_size])
            held, where = [images[batch_size:]], [positions[batch_size:]]
    if where and sum(len(p) for p in where):
        run(np.concatenate(held), np.concatenate(where))
    return values, predicted


def _area(curves, xs):
    """Trapezoid area under each row of ``curves`` over the abscissae ``xs``."""
    return ((curves[:, 1:] + curves[:, :-1]) / 2 * np.diff(xs)).sum(axis=1)


def road(model, x, maps, target=None, *, order: str = "morf", fractions=ROAD_FRACTIONS, noise: float = 0.01,
         seed: int = 0, output: str = "score", batch_size: int | None = None) -> MetricScores:
    """ROAD, RemOve And Debias (Rong et al. 2022, "A Consistent and Efficient Evaluation Strategy
    for Attribution Methods", ICML): remove the top (``order="morf"``, most relevant first) or
    bottom (``"lerf"``) ``fractions`` of each map's pixels and fill them by noisy linear
    imputation (:mod:`convscope.metrics._imputation`: the 8-neighbour weighted mean solved over all
    removed pixels, plus Gaussian noise of standard deviation ``noise``: 0.01 as in the authors'
    code and Quantus), so
    the filled-in pixels do not themselves tell the model where the removal was.

    Per image the score is the area (trapezoid rule over ``fractions``) under the curve of
    ``output`` at each fraction: ``"score"`` the explained class score (default), ``"probability"``
    its softmax, ``"accuracy"`` 1 while the model still predicts the explained class, else 0.
    MoRF: lower is better (the score should fall fast); LeRF: higher is better.

    What the paper (and Quantus's ``ROAD``) report is the accuracy at each fraction over the
    images: that curve is ``info["accuracy"]`` (S,) for every ``output``, and the mean of the
    per-image scores with ``output="accuracy"`` is the area under it. The default is
    ``"score"`` because it ranks maps on one image (a 0/1 curve ties most maps) and is the
    convention of deletion and insertion. Quantus differs in three ways: MoRF only, percentages
    1, 3, ..., 99, and a map broadcast over the colour channels is ranked as C x H x W values, so
    its "p %" removes about p / C % of the pixels; here every fraction counts pixels (all
    channels of a pixel are removed together).

    ``info``: ``curve`` (N, S), ``fractions``, ``accuracy`` (S,), ``target``, the settings.
    Imputation needs SciPy (``convscope[features]``).
    """
    owner = "road"
    check_choice(order, ("morf", "lerf"), "order", owner)
    f = np.asarray(fractions, np.float64) if not isinstance(fractions, str) else np.zeros(0)
    if f.ndim != 1 or len(f) < 2 or not np.all((f > 0) & (f < 1)) or np.any(np.diff(f) <= 0):
        raise param_error("fractions", owner, "at least two increasing fractions of the pixels, each in (0, 1)",
                          describe(fractions))
    noise = check_number(noise, "noise", owner, low=0)
    seed = check_int(seed, "seed", owner, low=0)
    backend, x, m, target, batch_size = _prepare(owner, model, x, maps, target, output, batch_size,
                                                 OUTPUT_MODES + ("accuracy",))
    _sparse()  # the extra is named before any pass
    backend = unchecked(backend)
    n, _, h, w = x.shape
    _, seeds, classes = _clean(backend, x, target, owner, output, batch_size)
    ranked = np.argsort(-m.reshape(n, -1) if order == "morf" else m.reshape(n, -1), axis=1, kind="stable")
    counts = np.floor(f * h * w + 1e-9).astype(np.int64)

    def pieces():
        for s, k in enumerate(counts):
            for i in range(n):
                rng = np.random.default_rng([seed, i, s])  # the same noise whatever the batch size
                yield np.array([s * n + i]), noisy_linear_imputation(x[i], ranked[i, :k], noise, rng)[None]

    rows = np.tile(np.arange(n), len(f))
    values, predicted = _stream(backend, pieces(), rows, seeds, output, batch_size)
    values, predicted = values.reshape(len(f), n).T, predicted.reshape(len(f), n).T
    info = {"order": order, "fractions": f, "noise": noise, "seed": seed, "output": output, "target": classes}
    if classes is not None:
        correct = (predicted == classes[:, None]).astype(np.float64)
        info["accuracy"] = correct.mean(axis=0)
        if output == "accuracy":
            values = correct
    elif output == "accuracy":
        raise param_error("output", owner, "'score' or 'probability' when target gives seeds, not classes", "'accuracy'")
    info["curve"] = values
    higher = order == "lerf"
    return MetricScores(f"road_{order}", _area(values, f), higher, with_choices(info, backend))


def faithfulness_correlation(model, x, maps, target=None, *, subset_size: int | None = None, samples: int = 100,
                             fill="mean", output: str = "score", seed: int = 0,
                             batch_size: int | None = None) -> MetricScores:
    """Faithfulness correlation (Bhatt, Weller & Moura 2020, "Evaluating and Aggregating
    Feature-based Model Explanations", IJCAI): the Pearson correlation, over ``samples`` random
    subsets S of ``subset_size`` pixels, between ``sum_{p in S} maps[p]`` and the drop of the
    explained ``output`` when the pixels of S (all channels) are replaced by ``fill``
    (``f(x) - f(x_S)``). Higher is better; NaN where either side is constant. ``subset_size``
    None: 1/32 of the pixels (128 of 64 x 64; the paper leaves it open, Quantus takes 224 of
    224 x 224), and ``info["choices"]`` says so.

    ``fill`` as in :func:`~convscope.metrics.deletion` (``"mean"`` each image's mean colour,
    ``"zero"``, ``"blur"``, a number or per-channel values). The subsets are drawn with
    ``numpy.random.default_rng(seed)``, image by image, and returned in ``info["subsets"]``
    (N, samples, subset_size) flat pixel indices. Quantus's ``FaithfulnessCorrelation`` draws its
    subsets among C x H x W values (single channels of pixels); here among pixels, as the paper's
    features.
    """
    owner = "faithfulness_correlation"
    samples = check_int(samples, "samples", owner, low=2)
    seed = check_int(seed, "seed", owner, low=0)
    backend, x, m, target, batch_size = _prepare(owner, model, x, maps, target, output, batch_size)
    n, _, h, w = x.shape
    chosen = {} if subset_size is not None else {"subset_size": f"{max(1, h * w // 32)} pixels (1/32 of the image)"}
    k = max(1, h * w // 32) if subset_size is None else check_int(subset_size, "subset_size", owner, low=1, high=h * w)
    blank = fill_images(x, fill, owner, sigma=5.0)
    backend = unchecked(backend)
    clean, seeds, classes = _clean(backend, x, target, owner, output, batch_size)
    rng = np.random.default_rng(seed)
    subsets = np.stack([np.argpartition(rng.random((samples, h * w)), k - 1, axis=1)[:, :k] for _ in range(n)])
    flat = m.reshape(n, -1)
    sums = np.take_along_axis(flat[:, None, :], subsets, axis=2).sum(axis=2)  # (N, samples)

    def pieces():
        total = n * samples
        for start in range(0, total, batch_size):
            pos = np.arange(start, min(total, start + batch_size))
            i, s = np.divmod(pos, samples)
            mask = np.zeros((len(pos), h * w), bool)
            mask[np.arange(len(pos))[:, None], subsets[i, s]] = True
            yield pos, np.where(mask.reshape(-1, 1, h, w), blank[i], x[i])

    values, _ = _stream(backend, pieces(), np.repeat(np.arange(n), samples), seeds, output, batch_size)
    drops = clean[:, None] - values.reshape(n, samples)
    a, b = sums - sums.mean(axis=1, keepdims=True), drops - drops.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(denominator > 0, (a * b).sum(axis=1) / np.where(denominator > 0, denominator, 1), np.nan)
    info = {"subset_size": k, "samples": samples, "fill": fill, "output": output, "seed": seed, "target": classes,
            "subsets": subsets, "attribution_sums": sums, "drops": drops}
    if chosen:
        info["choices"] = chosen
    if np.isnan(scores).any():
        info["undefined"] = "NaN where the attribution sums or the score drops are constant over the subsets"
    return MetricScores(owner, scores, True, with_choices(info, backend))


def irof(model, x, maps, target=None, *, segments=None, n_segments: int = 100, compactness: float = 10.0,
         fill="mean", output: str = "probability", batch_size: int | None = None) -> MetricScores:
    """IROF, Iterative Removal Of Features (Rieger & Hansen 2020, "IROF: a low resource evaluation
    metric for explanation methods", ICLR workshop): superpixels are removed (replaced by
    ``fill``) one more at a time in decreasing order of their mean attribution; the curve is the
    explained ``output`` (softmax probability by default, as Quantus) after l removals divided
    by that of the clean image, l = 0..L; the score is the area over it, ``1 - AUC`` with the
    x-axis the fraction l / L of superpixels removed. Higher is better; in [0, 1] while the
    score stays between 0 and the clean one.

    ``segments``: None for SLIC (scikit-image, ``convscope[segmentation]``; ``n_segments``,
    ``compactness``) or the user's (N, H, W) integer labels. ``fill`` as in
    :func:`~convscope.metrics.deletion` (default each clean image's mean colour).
    Quantus's ``IROF`` reports ``L - sum of unit-step trapezoids over l = 1..L`` (the clean point
    left out, not normalised by L) and fills with the mean of the whole batch as already
    perturbed; ``info["curve"]`` (N, L_max + 1, NaN past each image's L) gives either.
    """
    owner = "irof"
    backend, x, m, target, batch_size = _prepare(owner, model, x, maps, target, output, batch_size)
    n, _, h, w = x.shape
    blank = fill_images(x, fill, owner, sigma=5.0)
    if segments is None:
        labels, chose = superpixels(x, n_segments, compactness=compactness, owner=owner), "SLIC superpixels"
    else:
        labels, chose = check_segments(segments, x.shape, owner), None
    backend = unchecked(backend)
    clean, seeds, classes = _clean(backend, x, target, owner, output, batch_size)
    counts = labels.reshape(n, -1).max(axis=1) + 1
    rank = []  # per image: the removal step of each segment (0 = first removed)
    for i in range(n):
        mean = np.bincount(labels[i].ravel(), m[i].ravel(), counts[i]) / np.bincount(labels[i].ravel(), None, counts[i])
        step = np.empty(counts[i], np.int64)
        step[np.argsort(-mean, kind="stable")] = np.arange(counts[i])
        rank.append(step[labels[i]])
    offsets = np.concatenate([[0], np.cumsum(counts)])

    def pieces():
        for i in range(n):
            for start in range(0, counts[i], batch_size):
                steps = np.arange(start, min(counts[i], start + batch_size))  # step l = steps + 1
                removed = rank[i][None] <= steps[:, None, None]
                yield offsets[i] + steps, np.where(removed[:, None], blank[i], x[i])

    values, _ = _stream(backend, pieces(), np.repeat(np.arange(n), counts), seeds, output, batch_size)
    curve = np.full((n, counts.max() + 1), np.nan)
    scores = np.full(n, np.nan)
    for i in range(n):
        if clean[i] > 0:
            curve[i, 0] = 1.0
            curve[i, 1:counts[i] + 1] = values[offsets[i]:offsets[i + 1]] / clean[i]
            scores[i] = 1.0 - _area(curve[i:i + 1, :counts[i] + 1], np.linspace(0, 1, counts[i] + 1))[0]
    info = {"segments": labels, "n_segments": counts, "fill": fill, "output": output, "target": classes, "curve": curve}
    if chose:
        info["choices"] = {"segments": f"{chose} (n_segments={n_segments}, compactness={compactness})"}
    if np.isnan(scores).any():
        info["undefined"] = "NaN where the clean image's explained output is not positive (nothing to normalise by)"
    return MetricScores(owner, scores, True, with_choices(info, backend))


def _perturbations(kind, x, rng, noise, square_size, owner):
    """One perturbation I (N, C, H, W) float32 per image: the model then sees ``x - I``."""
    if callable(kind):
        got = kind(x, rng)
        got = np.asarray(got.detach().cpu().numpy() if hasattr(got, "detach") else got)
        if got.shape != x.shape or got.dtype.kind != "f" or not np.isfinite(got).all():
            raise param_error("perturbation", owner, f"a callable (x, rng) returning finite float perturbations "
                              f"shaped like x {x.shape}", describe(got))
        return got.astype(np.float32)
    if kind == "gaussian":
        return (noise * rng.standard_normal(x.shape)).astype(np.float32)
    if kind == "noisy-baseline":
        return (x - noise * rng.standard_normal(x.shape)).astype(np.float32)
    n, _, h, w = x.shape
    top = rng.integers(0, h - square_size + 1, n)
    left = rng.integers(0, w - square_size + 1, n)
    ys, xs = np.arange(h), np.arange(w)
    inside = ((ys[None, :, None] >= top[:, None, None]) & (ys[None, :, None] < top[:, None, None] + square_size)
              & (xs[None, None, :] >= left[:, None, None]) & (xs[None, None, :] < left[:, None, None] + square_size))
    return x * inside[:, None]


def infidelity(model, x, maps, target=None, *, perturbation="noisy-baseline", samples: int = 10,
               noise: float = 0.1, square_size: int = 8, normalize: bool = False, output: str = "score",
               seed: int = 0, batch_size: int | None = None) -> MetricScores:
    """Infidelity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations",
    NeurIPS): ``E_I[(I^T phi - (f(x) - f(x - I)))^2]`` over ``samples``
    perturbations I, with phi the map broadcast over the channels and f the explained
    ``output``. Lower is better.

    ``perturbation``: ``"noisy-baseline"`` (the paper's: ``x - I = x0 + eps`` with the baseline
    x0 = 0 and ``eps ~ N(0, noise^2)``), ``"gaussian"`` (``I ~ N(0, noise^2)``, Captum's
    example), ``"square"`` (a random ``square_size`` square of each image set to 0), or a callable
    ``(x, rng) -> I`` (N, C, H, W) called once per sample with a ``numpy.random.Generator``.
    ``normalize=True`` first scales ``I^T phi`` by the least-squares
    ``beta = sum(I^T phi * df) / sum((I^T phi)^2)`` per image, as Captum's ``normalize``, so
    that the value does not depend on the map's scale. Quantus's
    ``Infidelity`` removes patches cumulatively in raster order (a deterministic sequence):
    that is a callable perturbation here.
    """
    owner = "infidelity"
    if not callable(perturbation):
        check_choice(perturbation, PERTURBATIONS, "perturbation", owner)
    samples = check_int(samples, "samples", owner, low=1)
    noise = check_number(noise, "noise", owner, low=0)
    seed = check_int(seed, "seed", owner, low=0)
    if not isinstance(normalize, (bool, np.bool_)):
        raise param_error("normalize", owner, "True or False", describe(normalize), TypeError)
    backend, x, m, target, batch_size = _prepare(owner, model, x, maps, target, output, batch_size)
    n, _, h, w = x.shape
    if perturbation == "square":
        square_size = check_int(square_size, "square_size", owner, low=1, high=min(h, w))
    backend = unchecked(backend)
    clean, seeds, classes = _clean(backend, x, target, owner, output, batch_size)
    rng = np.random.default_rng(seed)
    dots = np.empty((n, samples))

    def pieces():
        for s in range(samples):  # one perturbation of every image at a time
            change = _perturbations(perturbation, x, rng, noise, square_size, owner)
            dots[:, s] = np.einsum("nchw,nhw->n", change.astype(np.float64), m)
            yield s * n + np.arange(n), x - change

    values, _ = _stream(backend, pieces(), np.tile(np.arange(n), samples), seeds, output, batch_size)
    drops = clean[:, None] - values.reshape(samples, n).T
    beta = np.ones(n)
    if normalize:
        power = (dots * dots).sum(axis=1)
        beta = (dots * drops).sum(axis=1) / np.where(power > 0, power, 1.0)
    scores = ((beta[:, None] * dots - drops) ** 2).mean(axis=1)
    info = {"perturbation": perturbation if isinstance(perturbation, str) else "callable", "samples": samples,
            "noise": noise, "normalize": bool(normalize), "output": output, "seed": seed, "target": classes,
            "dots": dots, "drops": drops, "beta": beta}
    return MetricScores(owner, scores, False, with_choices(info, backend))


_NEEDS = ("model", "x", "maps", "target")


def _road_order(order, higher):
    def scores(model, x, maps, target=None, **options):
        if "order" in options:
            raise param_error("order", f"metric 'road_{order}'", "left out (the metric's name fixes it)",
                              repr(options["order"]), TypeError)
        return road(model, x, maps, target, order=order, **options)
    scores.__doc__ = f"ROAD, {order.upper()} order: area under the curve of the output as pixels are imputed " \
                     f"({'higher' if higher else 'lower'} is better)."
    return register_metric(f"road_{order}", "faithfulness", higher_is_better=higher, needs=_NEEDS)(scores)


_road_morf = _road_order("morf", False)
_road_lerf = _road_order("lerf", True)
register_metric("faithfulness_correlation", "faithfulness", higher_is_better=True, needs=_NEEDS)(faithfulness_correlation)
register_metric("irof", "faithfulness", higher_is_better=True, needs=_NEEDS)(irof)
register_metric("infidelity", "faithfulness", higher_is_better=False, needs=_NEEDS)(infidelity)
