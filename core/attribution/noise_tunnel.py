"""Noise tunnel: any attribution averaged over noisy copies of the images (SmoothGrad,
SmoothGrad-squared, VarGrad), as Captum's ``NoiseTunnel``."""
from __future__ import annotations

import numpy as np

from .._targets import check_target, output_seeds, prepare, with_choices
from .._validate import check_choice, check_int, check_number, describe, param_error
from .._batching import auto_batch_size
from .result import AttributionMaps

__all__ = ["noise_tunnel", "NOISE_TUNNEL_KINDS"]

NOISE_TUNNEL_KINDS = ("smoothgrad", "smoothgrad_sq", "vargrad")
#: Methods ``method=`` may name: they take ``(model, x, target)`` and return per-channel attributions.
_NAMED = ("saliency", "integrated_gradients", "input_x_gradient", "guided_backprop", "deconvnet", "deeplift",
          "lrp", "feature_ablation", "shapley_sampling", "occlusion", "rise", "kernel_shap", "lime")


def _method(method, owner):
    """(callable, options, name) for ``method``: a name, a (name, options) pair or a callable."""
    from .. import attribution  # the family's public face, imported when called (this module is part of it)

    options = {}
    if isinstance(method, tuple) and len(method) == 2 and isinstance(method[1], dict):
        method, options = method
    if callable(method):
        return method, options, getattr(method, "__name__", "callable")
    if not isinstance(method, str):
        raise param_error("method", owner, "an attribution name, a (name, options) pair or a callable "
                          "(model, x, target) -> AttributionMaps", describe(method), TypeError)
    check_choice(method, tuple(n for n in _NAMED if hasattr(attribution, n)), "method", owner)
    return getattr(attribution, method), options, method


def _classes(backend, x, target, owner):
    """The explained class of each clean image (checked against their outputs), or a callable as is."""
    if callable(target):
        return target, None
    outputs = backend.forward(x)
    return output_seeds(target, outputs, owner)[1], outputs


def noise_tunnel(model, x, target=None, *, method="saliency", kind: str = "smoothgrad", samples: int = 25,
                 stdev: float = 0.15, noise=None, perturbations_per_eval: int | None = None,
                 seed: int = 0) -> AttributionMaps:
    """A noise tunnel around ``method``: its attributions ``a(x + e_i)`` over ``samples`` noisy
    copies, reduced by ``kind``:

    - ``"smoothgrad"`` (Smilkov et al. 2017): ``mean_i a(x + e_i)``;
    - ``"smoothgrad_sq"``: ``mean_i a(x + e_i)^2``;
    - ``"vargrad"`` (Adebayo et al. 2018): ``mean_i a^2 - (mean_i a)^2``, the population variance,

    per channel (``attributions``, as Captum's ``NoiseTunnel``) and per pixel of the method's
    own map (``maps``: the same statistic of the maps of the noisy copies, so each method keeps
    its own channel reduction). ``e_i ~ N(0, sigma^2)`` with
    ``sigma = stdev (max(x) - min(x))`` per image, a fraction of its range as in the paper and
    in :func:`smoothgrad` (Captum's ``stdevs`` is absolute: pass ``noise=`` to reproduce it).

    Parameters
    ----------
    method : str, (str, dict) or callable
        An attribution of this family by name (``"saliency"``, ``"integrated_gradients"``,
        ...), with options, or a callable ``(model, x, target) -> AttributionMaps``.
    noise : array (samples, N, C, H, W) or None
        The noise itself, added as given (``stdev`` and ``seed`` are then unused); draw i for
        image n is ``noise[i, n]``. Otherwise draw i is
        ``default_rng([seed, i]).standard_normal(x.shape) * sigma``: the result does not depend
        on ``perturbations_per_eval``.
    perturbations_per_eval : int or None
        Noisy copies of each image in one call of the method, hence in one backend call for a
        gradient method (Captum's ``nt_samples_batch_size``; None: 2^18 pixels' worth).

    The explained class is fixed on the clean images (target None: their top class).
    """
    owner = "noise_tunnel"
    backend, x = prepare(model, x, owner)
    n = len(x)
    function, options, name = _method(method, owner)
    check_choice(kind, NOISE_TUNNEL_KINDS, "kind", owner)
    seed = check_int(seed, "seed", owner, low=0)
    if noise is None:
        samples = check_int(samples, "samples", owner, low=1)
        stdev = check_number(stdev, "stdev", owner, low=0)
    else:
        noise = np.asarray(noise, np.float32) if isinstance(noise, np.ndarray) else noise
        if not isinstance(noise, np.ndarray) or noise.ndim != 5 or noise.shape[1:] != x.shape:
            raise param_error("noise", owner, f"None or an array (samples, *{x.shape}) of noise, one draw per "
                              "sample and image", describe(noise))
        if not np.isfinite(noise).all():
            raise param_error("noise", owner, "finite values", "NaN or infinity")
        samples = len(noise)
    if perturbations_per_eval is None:
        per = max(1, auto_batch_size(*x.shape[2:]) // n)
    else:
        per = check_int(perturbations_per_eval, "perturbations_per_eval", owner, low=1)
    target = check_target(target, n, owner)
    classes, outputs = _classes(backend, x, target, owner)
    flat = x.reshape(n, -1)
    sigma = (stdev * (flat.max(axis=1) - flat.min(axis=1))).astype(np.float32)[:, None, None, None]

    def draw(i):
        if noise is not None:
            return noise[i]
        return np.random.default_rng([seed, int(i)]).standard_normal(x.shape, dtype=np.float32) * sigma

    sums, map_sums = [0.0, 0.0], [0.0, 0.0]  # sum and sum of squares, float64
    signed = False
    for start in range(0, samples, per):
        draws = range(start, min(start + per, samples))
        images = np.concatenate([x + draw(i) for i in draws])  # draw-major: (draw, image)
        chunk_target = classes if callable(classes) else np.tile(classes, len(draws))
        result = function(backend, images, chunk_target, **options)
        if not isinstance(result, AttributionMaps) or result.maps.shape != (len(images),) + x.shape[2:]:
            raise param_error("method", owner, f"a method returning AttributionMaps with one map per image, "
                              f"{(len(images),) + x.shape[2:]}", f"{name} returning {describe(result)}", TypeError)
        a = result.attributions if result.attributions is not None else result.maps[:, None]
        a = a.astype(np.float64).reshape((len(draws), n) + a.shape[1:])
        m = result.maps.astype(np.float64).reshape((len(draws), n) + result.maps.shape[1:])
        sums[0] = sums[0] + a.sum(axis=0)
        map_sums[0] = map_sums[0] + m.sum(axis=0)
        if kind != "smoothgrad":
            sums[1] = sums[1] + (a ** 2).sum(axis=0)
            map_sums[1] = map_sums[1] + (m ** 2).sum(axis=0)
        signed = result.signed
    attributions, maps = (_reduce(s, kind, samples) for s in (sums, map_sums))
    info = {"method": name, "kind": kind, "samples": samples, "stdev": stdev if noise is None else "given noise",
            "seed": seed if noise is None else None, "perturbations_per_eval": per}
    return AttributionMaps(maps.astype(np.float32), x, owner, None if callable(classes) else classes,
                           signed=signed and kind == "smoothgrad", attributions=attributions.astype(np.float32),
                           outputs=outputs, info=with_choices(info, backend))


def _reduce(sums, kind, samples):
    mean = sums[0] / samples
    if kind == "smoothgrad":
        return mean
    if kind == "smoothgrad_sq":
        return sums[1] / samples
    return sums[1] / samples - mean ** 2
