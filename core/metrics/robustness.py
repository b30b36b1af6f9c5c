"""Robustness: how much an explanation changes when the input barely does.

- :func:`max_sensitivity`, :func:`avg_sensitivity` (Yeh et al. 2019, "On the (in)fidelity
  and sensitivity of explanations"): the largest, or the mean, relative change
  ``||phi(x') - phi(x)|| / ||phi(x)||`` over points ``x'`` drawn uniformly from the L-inf ball
  of radius ``radius`` around ``x``;
- :func:`local_lipschitz_estimate` (Alvarez-Melis and Jaakkola 2018, "On the robustness of
  interpretability methods"): ``max ||phi(x) - phi(x')||_2 / ||x - x'||_2`` over the same kind
  of points.

All three take the explanation ``method`` (an attribution function's name, a ``(name,
{options})`` pair or a callable ``method(model, x, target)``) and explain the perturbed copies
in stacks: ``batch_size`` perturbed images (several draws of several images) per call of the
method, never one call per draw. The explained class of every perturbed copy is the class of
its clean image (the predicted one when ``target`` is None, and ``info["choices"]`` says so).

The draws depend on ``seed`` alone: draw ``k`` is
``numpy.random.default_rng([seed, k]).uniform(-radius, radius, x.shape)`` (float64) added to
the images in float64 and rounded to float32, so the scores do not depend on ``batch_size``.
"""
from __future__ import annotations

import numpy as np

from .._plugins import load
from ..backend import unchecked
from .._batching import auto_batch_size
from .._targets import check_target, entry_images, output_seeds, with_choices
from .._validate import check_choice, check_int, check_number, describe, param_error
from .pointing import as_maps
from .registry import as_method, register_metric
from .result import MetricScores

__all__ = ["max_sensitivity", "avg_sensitivity", "local_lipschitz_estimate"]

NORMS = ("fro", "inf")
_NEEDS = ("model", "x", "method", "target")


def _uniform_draw(seed: int, k: int, shape, radius: float) -> np.ndarray:
    """Draw ``k`` of the noise for ``seed``: uniform in [-radius, radius], float64, ``shape``."""
    return np.random.default_rng([seed, int(k)]).uniform(-radius, radius, shape)


def _norm(a: np.ndarray, norm: str) -> np.ndarray:
    """Row norms of (R, D) float64: L2 (Frobenius of the map) or L-inf."""
    return np.sqrt(np.einsum("rd,rd->r", a, a)) if norm == "fro" else np.abs(a).max(axis=1)


def _by_max(m: np.ndarray) -> np.ndarray:
    """Each row divided by its largest magnitude (a zero row stays zero)."""
    top = np.abs(m).max(axis=1, keepdims=True)
    return m / np.where(top > 0, top, 1.0)


def _perturbed_ratios(owner, model, x, method, target, *, radius, samples, seed, batch_size, ratio):
    """Checks, the clean explanation and ``ratio(phi, phi', x, x')`` for every draw: (samples, N).

    ``phi`` (R, H*W) float64 maps of the clean images of the rows, ``phi'`` those of their
    perturbed copies; ``x``, ``x'`` (R, C*H*W) float64."""
    backend = load(model)
    x = entry_images(backend, x, owner)
    explain = as_method(method, owner)
    radius = check_number(radius, "radius", owner, low=0, strict=True)
    samples = check_int(samples, "samples", owner, low=1)
    seed = check_int(seed, "seed", owner, low=0)
    n, _, h, w = x.shape
    batch_size = auto_batch_size(h, w, backend=backend) if batch_size is None else check_int(batch_size, "batch_size", owner, low=1)
    target = check_target(target, n, owner)

    seeds, classes = output_seeds(target, unchecked(backend).forward(x), owner)  # range checked, named ours
    chosen = {"target": "the class predicted on each clean image, kept for its perturbed copies"} \
        if target is None else {}

    def explained(images, rows):
        fixed = classes[rows] if classes is not None else (lambda out, s=seeds[rows]: s)
        m = as_maps(explain(backend, images, fixed), owner)
        if m.shape != (len(rows), h, w):
            raise param_error("method", owner, f"a method that returns one ({h}, {w}) map per image",
                              f"maps of shape {m.shape}")
        return m.reshape(len(rows), -1).astype(np.float64)

    phi = explained(x, np.arange(n))
    flat = x.reshape(n, -1).astype(np.float64)
    out = np.empty(samples * n, np.float64)
    for start in range(0, samples * n, batch_size):
        j = np.arange(start, min(start + batch_size, samples * n))
        k, rows = np.divmod(j, n)  # draw-major: a batch holds whole draws when it can
        moved = flat[rows].copy()
        for draw in np.unique(k):
            moved[k == draw] += _uniform_draw(seed, draw, x.shape, radius).reshape(n, -1)[rows[k == draw]]
        moved = moved.astype(np.float32)
        phi_moved = explained(moved.reshape(len(j), *x.shape[1:]), rows)
        out[j] = ratio(phi[rows], phi_moved, flat[rows], moved.astype(np.float64))
    info = with_choices({"radius": radius, "samples": samples, "seed": seed, "target": classes,
                         "choices": chosen}, backend)
    return out.reshape(samples, n), phi, info


def _sensitivity(kind, model, x, method, target, radius, samples, norm, normalise, seed, batch_size):
    check_choice(norm, NORMS, "norm", kind)
    if not isinstance(normalise, (bool, np.bool_)):
        raise param_error("normalise", kind, "True or False", describe(normalise), TypeError)
    prep = _by_max if normalise else (lambda m: m)

    def ratio(phi, phi_moved, _x, _moved):
        a = prep(phi)
        with np.errstate(divide="ignore", invalid="ignore"):
            return _norm(prep(phi_moved) - a, norm) / _norm(a, norm)

    ratios, phi, info = _perturbed_ratios(kind, model, x, method, target, radius=radius, samples=samples, seed=seed,
                                          batch_size=batch_size, ratio=ratio)
    scores = ratios.max(axis=0) if kind == "max_sensitivity" else ratios.mean(axis=0)
    undefined = _norm(phi, norm) == 0
    scores[undefined] = np.nan
    if undefined.any():
        info["undefined"] = f"{int(undefined.sum())} clean maps are zero everywhere: the relative change is not defined"
    info.update(norm=norm, normalise=bool(normalise), ratios=ratios.T)
    return MetricScores(kind, scores, False, info)


@register_metric("max_sensitivity", "robustness", higher_is_better=False, needs=_NEEDS)
def max_sensitivity(model, x, method, target=None, *, radius: float = 0.02, samples: int = 10, norm: str = "fro",
                    normalise: bool = True, seed: int = 0, batch_size: int | None = None) -> MetricScores:
    """Max-sensitivity (Yeh et al. 2019): ``max_k ||phi(x + e_k) - phi(x)|| / ||phi(x)||`` over
    ``samples`` draws ``e_k`` uniform in the L-inf ball of ``radius``; lower is better.

    Parameters
    ----------
    method : str, (str, dict) or callable
        The explanation: ``"saliency"``, ``("integrated_gradients", {"steps": 32})`` or
        ``method(model, x, target) -> AttributionMaps``; its (N, H, W) maps are compared.
    norm : ``"fro"`` (L2 of the map, Yeh et al.) or ``"inf"`` (its largest entry).
    normalise : bool
        Divide each map (clean and perturbed alike) by its own largest magnitude first, so the
        score measures a change of shape, not of scale. Quantus's ``normalise=True`` divides by
        the largest magnitude of the whole batch instead, which makes an image's score depend on
        the other images; Yeh et al. compare the maps as they come (``normalise=False``).
    batch_size : int or None
        Perturbed images per call of the method (None: 2^18 pixels, 64 images of 64 x 64).

    Returns
    -------
    MetricScores
        (N,) scores, NaN where the clean map is zero everywhere; ``info["ratios"]`` (N,
        samples) every draw's ratio.
    """
    return _sensitivity("max_sensitivity", model, x, method, target, radius, samples, norm, normalise, seed,
                        batch_size)


@register_metric("avg_sensitivity", "robustness", higher_is_better=False, needs=_NEEDS)
def avg_sensitivity(model, x, method, target=None, *, radius: float = 0.02, samples: int = 10, norm: str = "fro",
                    normalise: bool = True, seed: int = 0, batch_size: int | None = None) -> MetricScores:
    """Average sensitivity (Yeh et al. 2019): the mean over ``samples`` draws of
    ``||phi(x + e_k) - phi(x)|| / ||phi(x)||``, a Monte Carlo estimate of the expected change
    in the L-inf ball of ``radius``; lower is better. Arguments as :func:`max_sensitivity`.
    """
    return _sensitivity("avg_sensitivity", model, x, method, target, radius, samples, norm, normalise, seed,
                        batch_size)


@register_metric("local_lipschitz_estimate", "robustness", higher_is_better=False, needs=_NEEDS)
def local_lipschitz_estimate(model, x, method, target=None, *, radius: float = 0.1, samples: int = 10,
                             normalise: bool = False, seed: int = 0,
                             batch_size: int | None = None) -> MetricScores:
    """Local Lipschitz estimate (Alvarez-Melis and Jaakkola 2018):
    ``max_k ||phi(x) - phi(x'_k)||_2 / ||x - x'_k||_2`` over ``samples`` points ``x'_k`` drawn
    uniformly from the L-inf ball of ``radius`` around ``x``; lower is better.

    The paper maximises over the ball ``B_eps(x)``; sampling it is the estimate Quantus also
    makes, but Quantus draws unbounded Gaussian noise (std 0.1) and by default normalises the
    maps by the batch's largest magnitude. Here the points stay inside the ball and the maps are
    compared as the method returns them (``normalise=True``: each map divided by its own
    largest magnitude). Other arguments as :func:`max_sensitivity`.
    """
    owner = "local_lipschitz_estimate"
    if not isinstance(normalise, (bool, np.bool_)):
        raise param_error("normalise", owner, "True or False", describe(normalise), TypeError)
    prep = _by_max if normalise else (lambda m: m)

    def ratio(phi, phi_moved, flat, moved):
        return _norm(prep(phi) - prep(phi_moved), "fro") / _norm(flat - moved, "fro")

    ratios, _, info = _perturbed_ratios(owner, model, x, method, target, radius=radius, samples=samples, seed=seed,
                                        batch_size=batch_size, ratio=ratio)
    info.update(normalise=bool(normalise), ratios=ratios.T)
    return MetricScores(owner, ratios.max(axis=0), False, info)
