"""DeepLift (rescale rule, Shrikumar et al. 2017), DeepLiftShap and GradientShap (Lundberg and
Lee 2017), as Captum defines them.

:func:`deeplift` is one pass of the images beside their baselines on the backend
(``gradient(..., rule=DeepLiftRules(baseline))``: multipliers at every nonlinearity, see
:mod:`convscope._relevance`); the attribution is ``(x - baseline) * multipliers``.
"""
from __future__ import annotations

import numpy as np

from .._batching import batch_size_for
from .._relevance import DeepLiftRules
from .._targets import check_target, output_seeds, prepare, with_choices
from .._validate import check_int, check_number, describe, param_error
from ..backend import INPUT, OUTPUT
from .result import AttributionMaps

__all__ = ["deeplift", "deeplift_shap", "gradient_shap"]


def _baseline(baseline, x, owner, param="baseline"):
    """A number, one image (C, H, W) or one per image (N, C, H, W) -> (N, C, H, W) float32."""
    if isinstance(baseline, (int, float, np.integer, np.floating)) and not isinstance(baseline, bool):
        return np.full(x.shape, baseline, np.float32)
    try:
        b = np.asarray(baseline, dtype=np.float32)
    except (TypeError, ValueError):
        raise param_error(param, owner, "a number or an array", describe(baseline), TypeError) from None
    if b.shape == x.shape[1:]:
        b = np.broadcast_to(b, x.shape)
    if b.shape != x.shape:
        raise param_error(param, owner, f"a number, an image {x.shape[1:]} or one per image {x.shape}",
                          f"shape {b.shape}")
    if not np.isfinite(b).all():
        raise param_error(param, owner, "finite (no NaN or Inf)", "non-finite values")
    return np.ascontiguousarray(b)


def _baselines(baselines, x, owner):
    b = np.asarray(baselines, dtype=np.float32) if not isinstance(baselines, np.ndarray) else baselines
    if b.ndim != 4 or b.shape[1:] != x.shape[1:] or len(b) == 0:
        raise param_error("baselines", owner, f"a stack (B, {', '.join(map(str, x.shape[1:]))}) of baselines",
                          describe(baselines))
    if not np.isfinite(b).all():
        raise param_error("baselines", owner, "finite (no NaN or Inf)", "non-finite values")
    return np.ascontiguousarray(b, dtype=np.float32)


def _multipliers(backend, x, baseline, target, eps, owner):
    """(multipliers at the input, explained classes, seeds, outputs): the classes from a forward
    pass, then one DeepLift pass (every backend takes seeds as a mapping with a rule set)."""
    outputs = backend.forward(x)
    seeds, index = output_seeds(target, outputs, owner)
    g = backend.gradient(x, {OUTPUT: seeds}, wrt=[INPUT], rule=DeepLiftRules(baseline=baseline, eps=eps))
    return g.grads[INPUT], index, seeds, outputs


def _check_backend(backend, owner):
    if DeepLiftRules not in tuple(getattr(backend, "rule_sets", ())):
        raise param_error("model", owner, "a model on a backend with DeepLift rules",
                          f"the {getattr(backend, 'name', type(backend).__name__)} backend, which has none")


def deeplift(model, x, target=None, *, baseline=0.0, eps=1e-10) -> AttributionMaps:
    """DeepLift with the rescale rule: ``a = (x - x0) * m``, ``m`` the multipliers, which replace
    every nonlinearity's derivative by ``(f(u) - f(u0)) / (u - u0)`` (Shrikumar et al. 2017;
    Captum's ``DeepLift``, whose max-pool rule it follows). ``baseline`` x0: a number, an image
    (C, H, W) or one per image. ``info["delta"]``: Captum's convergence delta, ``sum a - (S(x) - S(x0))``
    per image (zero up to float error for a ReLU net: the summation-to-delta property).
    """
    owner = "deeplift"
    backend, x = prepare(model, x, owner)
    target = check_target(target, len(x), owner)
    check_number(eps, "eps", owner, low=0.0)
    base = _baseline(baseline, x, owner)
    _check_backend(backend, owner)
    m, index, seeds, outputs = _multipliers(backend, x, base, target, eps, owner)
    a = (x - base) * m
    base_out = backend.forward(base)
    delta = a.sum(axis=(1, 2, 3)) - ((outputs - base_out) * seeds).sum(axis=1)
    return AttributionMaps(a.sum(axis=1), x, owner, index, signed=True, attributions=a, outputs=outputs,
                           info=with_choices({"delta": delta}, backend))


def deeplift_shap(model, x, target=None, *, baselines, eps=1e-10, batch_size=None) -> AttributionMaps:
    """DeepLiftShap (Lundberg and Lee 2017; Captum's ``DeepLiftShap``): the mean over the
    ``baselines`` (B, C, H, W) of :func:`deeplift` against each. ``info["delta"]``: per image,
    the mean over baselines of DeepLift's delta."""
    owner = "deeplift_shap"
    backend, x = prepare(model, x, owner)
    target = check_target(target, len(x), owner)
    check_number(eps, "eps", owner, low=0.0)
    refs = _baselines(baselines, x, owner)
    _check_backend(backend, owner)
    n = len(x)
    total, delta, index, outputs = np.zeros(x.shape, np.float64), np.zeros(n), [], []
    per_call = batch_size_for(batch_size, x.shape[2:], owner, backend=backend)
    ref_scores = np.concatenate([backend.forward(refs[i:i + per_call]) for i in range(0, len(refs), per_call)])
    for start in range(0, n, per_call):  # images in chunks: their classes once, then every baseline
        sl = slice(start, start + per_call)
        xs = x[sl]
        t = target if target is None or callable(target) or np.ndim(target) == 0 else target[sl]
        out = backend.forward(xs)
        seeds, idx = output_seeds(t, out, owner)
        for ref, ref_score in zip(refs, ref_scores):
            base = np.ascontiguousarray(np.broadcast_to(ref, xs.shape))
            g = backend.gradient(xs, {OUTPUT: seeds}, wrt=[INPUT], rule=DeepLiftRules(baseline=base, eps=eps))
            a = (xs - base) * g.grads[INPUT]
            total[sl] += a
            delta[sl] += a.sum(axis=(1, 2, 3)) - ((out - ref_score) * seeds).sum(axis=1)
        index.append(idx)
        outputs.append(out)
    index = None if any(i is None for i in index) else np.concatenate(index)
    outputs = np.concatenate(outputs)
    a = (total / len(refs)).astype(np.float32)
    return AttributionMaps(a.sum(axis=1), x, owner, index, signed=True, attributions=a, outputs=outputs,
                           info=with_choices({"delta": (delta / len(refs)).astype(np.float32)}, backend))


def gradient_shap(model, x, target=None, *, baselines, samples=5, stdev=0.0, seed=0, alphas=None,
                  baseline_index=None, batch_size=None) -> AttributionMaps:
    """GradientShap (Lundberg and Lee 2017; Captum's ``GradientShap``): expected gradients.
    For each of ``samples`` draws per image: a baseline drawn from ``baselines`` (B, C, H, W),
    Gaussian noise of ``stdev`` added to the image, ``alpha`` uniform in [0, 1]; the gradient at
    ``b + alpha (x + noise - b)`` times ``(x + noise - b)``, averaged over the draws.

    The draws come from ``numpy.random.default_rng(seed)``; ``alphas`` and ``baseline_index``
    ((N, samples) each) fix them instead (to reproduce another library's draws).
    """
    owner = "gradient_shap"
    backend, x = prepare(model, x, owner)
    target = check_target(target, len(x), owner)
    refs = _baselines(baselines, x, owner)
    samples = check_int(samples, "samples", owner, low=1)
    stdev = check_number(stdev, "stdev", owner, low=0.0)
    n = len(x)
    rng = np.random.default_rng(check_int(seed, "seed", owner))
    draws = {}
    makers = (("baseline_index", baseline_index, lambda: rng.integers(0, len(refs), (n, samples)), "i"),
              ("alphas", alphas, lambda: rng.uniform(0.0, 1.0, (n, samples)), "f"))
    for param, given, make, kind in makers:
        v = make() if given is None else np.asarray(given)
        if v.shape != (n, samples) or v.dtype.kind not in ("iu" if kind == "i" else "fiu"):
            raise param_error(param, owner, f"an array ({n}, {samples}) of {'ints' if kind == 'i' else 'numbers'}",
                              describe(given))
        if kind == "i" and (v.min() < 0 or v.max() >= len(refs)):
            raise param_error(param, owner, f"indices in [0, {len(refs) - 1}]", str(int(v.max())))
        draws[param] = v
    outputs = backend.forward(x)  # the explained class is the images' own, not each point's
    fixed, index = output_seeds(target, outputs, owner)
    per_call = batch_size_for(batch_size, x.shape[2:], owner, backend=backend)
    total = np.zeros(x.shape, np.float64)
    for k in range(samples):  # one draw of every image per step, in chunks of per_call images
        noisy = x + rng.normal(0.0, stdev, x.shape).astype(np.float32) if stdev > 0 else x
        base = refs[draws["baseline_index"][:, k]]
        alpha = draws["alphas"][:, k].astype(np.float32)[:, None, None, None]
        points = base + alpha * (noisy - base)
        for start in range(0, n, per_call):
            sl = slice(start, start + per_call)
            g = backend.gradient(np.ascontiguousarray(points[sl]), {OUTPUT: fixed[sl]}, wrt=[INPUT])
            total[sl] += g.grads[INPUT] * (noisy[sl] - base[sl])
    a = (total / samples).astype(np.float32)
    return AttributionMaps(a.sum(axis=1), x, owner, index, signed=True, attributions=a, outputs=outputs,
                           info=with_choices({"samples": samples, "stdev": stdev}, backend))
