"""Surrogate models over superpixels: KernelSHAP (Lundberg and Lee 2017) and LIME (Ribeiro et
al. 2016). Both score images with some superpixels replaced by the baseline and fit a weighted
linear model on the binary coalition vectors; they differ in the weights and the fit."""
from __future__ import annotations

from math import comb

import numpy as np

from .._batching import auto_batch_size
from .._targets import OUTPUT_MODES, check_target, prepare, with_choices
from .._validate import check_choice, check_int, check_number
from ._sampling import (Scorer, check_baseline, constrained_least_squares, feature_counts, per_call,
                        resolve_features, spread)
from .result import AttributionMaps

__all__ = ["kernel_shap", "lime", "shapley_kernel", "coalitions"]


def shapley_kernel(m, sizes):
    """The Shapley kernel ``pi(z) = (M - 1) / (C(M, |z|) |z| (M - |z|))`` for coalition sizes 0 < |z| < M."""
    sizes = np.asarray(sizes)
    binom = np.array([comb(m, int(k)) for k in sizes], np.float64)
    return (m - 1) / (binom * sizes * (m - sizes))


def coalitions(m, samples, rng):
    """(R, m) bool coalitions and their weights for KernelSHAP.

    ``samples >= 2^m - 2``: every coalition but the empty and the full one, weighted by the
    Shapley kernel (the fit is then the exact Shapley value). Otherwise ``samples`` coalitions
    drawn with the kernel as their distribution (a size k with probability proportional to
    ``(m - 1) / (k (m - k))``, then a uniform subset), each drawn one paired with its
    complement, all weighted equally."""
    if m == 1:
        return np.ones((0, 1), bool), np.ones(0)
    if samples >= 2 ** m - 2:
        codes = np.arange(1, 2 ** m - 1)
        z = (codes[:, None] >> np.arange(m)) & 1 == 1
        return z, shapley_kernel(m, z.sum(axis=1))
    sizes = np.arange(1, m)
    prob = (m - 1) / (sizes * (m - sizes))
    half = max(1, samples // 2)
    k = rng.choice(sizes, size=half, p=prob / prob.sum())
    ranks = np.argsort(rng.random((half, m)), axis=1)
    z = ranks < k[:, None]
    z = np.concatenate([z, ~z])[:samples]
    return z, np.ones(len(z))


def _setup(owner, model, x, target, features, baseline, output, seed, perturbations_per_eval):
    backend, x = prepare(model, x, owner)
    check_choice(output, OUTPUT_MODES, "output", owner)
    seed = check_int(seed, "seed", owner, low=0)
    target = check_target(target, len(x), owner)
    base = check_baseline(baseline, x, owner)
    labels, used = resolve_features(features, x, owner)
    size = per_call(perturbations_per_eval, len(x), owner, auto_batch_size(*x.shape[2:], backend=backend))
    return backend, x, target, base, labels, used, seed, size


def _score_coalitions(scorer, x, base, labels, per_image):
    """Objective of every image's coalitions ``per_image[n]`` (R_n, L_n), in bounded calls."""
    top = int(feature_counts(labels).max())
    z = np.ones((sum(len(c) for c in per_image), top), bool)
    samples = np.repeat(np.arange(len(x)), [len(c) for c in per_image])
    row = 0
    for c in per_image:
        z[row:row + len(c), :c.shape[1]] = c
        row += len(c)
    y = scorer.rows(x, base, labels, samples, lambda a, b: z[a:b])
    return np.split(y, np.cumsum([len(c) for c in per_image])[:-1])


def kernel_shap(model, x, target=None, *, features=None, baseline=0.0, samples: int | None = None, seed: int = 0,
                output: str = "score", perturbations_per_eval: int | None = None) -> AttributionMaps:
    """KernelSHAP (Lundberg and Lee 2017) over superpixels: ``phi`` minimising
    ``sum_z pi(z) (f(h(z)) - f(b) - z . phi)^2`` subject to ``sum phi = f(x) - f(b)``, where
    ``h(z)`` keeps the superpixels of ``x`` that z selects and sets the rest to the baseline,
    ``pi`` the Shapley kernel (:func:`shapley_kernel`).

    ``samples`` coalitions per image (None: ``2 M + 2048``, shap's ``nsamples="auto"``); when
    ``samples >= 2^M - 2`` every coalition is evaluated and ``phi`` is the exact Shapley value
    (shap's ``KernelExplainer`` then enumerates them all too). Otherwise the coalitions are
    drawn with :func:`coalitions` from ``numpy.random.default_rng([seed, n])`` for image n.
    ``features``, ``baseline``, ``perturbations_per_eval`` as in :func:`feature_ablation`.
    ``info["base_value"]`` holds ``f(b)`` per image.
    """
    owner = "kernel_shap"
    backend, x, target, base, labels, used, seed, size = _setup(owner, model, x, target, features, baseline, output,
                                                                seed, perturbations_per_eval)
    if samples is not None:
        samples = check_int(samples, "samples", owner, low=2)
    counts = feature_counts(labels)
    scorer = Scorer(backend, x, target, output, owner, size)
    fb = scorer.score(base, np.arange(len(x)))
    drawn = [coalitions(int(m), 2 * int(m) + 2048 if samples is None else samples,
                        np.random.default_rng([seed, i])) for i, m in enumerate(counts)]
    ys = _score_coalitions(scorer, x, base, labels, [z for z, _ in drawn])
    values = np.zeros((len(x), counts.max()), np.float64)
    exact = []
    for i, ((z, w), y) in enumerate(zip(drawn, ys)):
        values[i, :counts[i]] = constrained_least_squares(z, y - fb[i], w, scorer.clean[i] - fb[i])
        exact.append(bool(len(z) == max(2 ** int(counts[i]) - 2, 0)))
    info = {**used, "samples": samples if samples is not None else "auto", "seed": seed, "output": output,
            "exact": exact, "base_value": fb}
    return AttributionMaps(spread(values, labels), x, owner, scorer.classes, signed=True, outputs=scorer.outputs,
                           info=with_choices(info, backend))


def weighted_ridge(z, y, weights, alpha):
    """``(coef, intercept)`` of ridge regression with an intercept and sample weights, as
    scikit-learn's ``Ridge(alpha).fit(z, y, sample_weight=weights)``: centre by the weighted
    means, solve ``(Zc^T W Zc + alpha I) coef = Zc^T W yc`` (float64)."""
    z, y, w = z.astype(np.float64), y.astype(np.float64), weights.astype(np.float64)
    zm, ym = np.average(z, axis=0, weights=w), np.average(y, weights=w)
    zc, yc = z - zm, y - ym
    zw = zc * w[:, None]
    coef = np.linalg.solve(zw.T @ zc + alpha * np.eye(z.shape[1]), zw.T @ yc)
    return coef, ym - zm @ coef


def lime(model, x, target=None, *, features=None, baseline=0.0, samples: int = 1000, kernel_width: float = 0.25,
         seed: int = 0, output: str = "score", perturbations_per_eval: int | None = None) -> AttributionMaps:
    """LIME (Ribeiro et al. 2016) over superpixels, as ``lime.lime_image.LimeImageExplainer``:
    ``samples`` binary coalitions z (the first keeps every superpixel), each scored on ``x``
    with the superpixels z leaves out set to the baseline; weights
    ``sqrt(exp(-d^2 / kernel_width^2))`` of the cosine distance ``d = 1 - sqrt(|z| / M)`` to the
    full coalition; the map is the coefficients of ridge regression (alpha 1, with intercept,
    :func:`weighted_ridge`) of the scores on z.

    The coalitions are lime's: ``numpy.random.RandomState(seed).randint(0, 2, samples * M)``
    per image, so the same ``seed`` and segmentation give lime's samples (pass lime a
    ``random_seed`` so it draws nothing before them). ``info["intercept"]`` per image.
    The baseline (lime's ``hide_color``) defaults to 0, not lime's per-superpixel mean colour.
    """
    owner = "lime"
    backend, x, target, base, labels, used, seed, size = _setup(owner, model, x, target, features, baseline, output,
                                                                seed, perturbations_per_eval)
    samples = check_int(samples, "samples", owner, low=2)
    kernel_width = check_number(kernel_width, "kernel_width", owner, low=0, strict=True)
    counts = feature_counts(labels)
    drawn = []
    for m in counts:
        z = np.random.RandomState(seed).randint(0, 2, samples * int(m)).reshape(samples, int(m)) == 1
        z[0] = True
        drawn.append(z)
    scorer = Scorer(backend, x, target, output, owner, size)
    ys = _score_coalitions(scorer, x, base, labels, drawn)
    values = np.zeros((len(x), counts.max()), np.float64)
    intercepts = np.zeros(len(x))
    for i, (z, y) in enumerate(zip(drawn, ys)):
        d = 1 - np.sqrt(z.sum(axis=1) / z.shape[1])
        w = np.sqrt(np.exp(-d ** 2 / kernel_width ** 2))
        values[i, :counts[i]], intercepts[i] = weighted_ridge(z, y, w, 1.0)
    info = {**used, "samples": samples, "kernel_width": kernel_width, "seed": seed, "output": output,
            "intercept": intercepts}
    return AttributionMaps(spread(values, labels), x, owner, scorer.classes, signed=True, outputs=scorer.outputs,
                           info=with_choices(info, backend))
