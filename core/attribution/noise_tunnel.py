"""Noise tunnel: any attribution averaged over noisy copies of the images (SmoothGrad,
SmoothGrad-squared, VarGrad), as Captum's ``NoiseTunnel``."""
from __future__ import annotations

import numpy as np

from .._targets import check_target, output_seeds, prepare, with_choices
from .._validate import check_choice, check_int, check_number, describe, param_error
from .._batching import auto_batch_size
from .._noise import gaussian
from ..backend import INPUT
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


class _DryRun(BaseException):
    """Raised by :class:`_Dry` at a method's first model pass (a BaseException, so that no
    ``except Exception`` on the way turns it into another error)."""


def _no_pass(*args, **kwargs):
    raise _DryRun


class _Dry:
    """A backend whose passes stop the call: the inner method checks its arguments, then stops
    at its first pass (the layer names it asks for checked first, as the trusted path does), or
    at any other call but the queries its checks read (the layer records, the weights, the batch
    ceiling), so that bad options raise before noise_tunnel runs a pass. Plain attributes
    (channels, value_range, ...) are the backend's."""

    QUERIES = ("layers", "weights", "memory_ceiling", "_note_input", "_check_names")

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, attr):
        value = getattr(self._backend, attr)
        return _no_pass if callable(value) and not isinstance(value, type) and attr not in self.QUERIES else value

    name = property(lambda self: self._backend.name)

    def _names(self, names, param, owner):
        check = getattr(self._backend, "_check_names", None)
        if check is not None and names is not None and not callable(names):
            check(list(names), param, owner)

    def forward(self, x):
        raise _DryRun

    def activations(self, x, layers):
        self._names(layers, "layers", "activations")
        raise _DryRun

    def gradient(self, x, seeds, *, wrt=(INPUT,), at=None, **rule):
        self._names(wrt, "wrt", "gradient")
        self._names(at if at is not None or not isinstance(seeds, dict) else list(seeds), "at", "gradient")
        raise _DryRun

    def layers(self):
        return self._backend.layers()

    def weights(self, layer):
        return self._backend.weights(layer)


def _check_options(function, options, name, backend, x, target, owner):
    """The inner method's options checked before any pass: their names against its signature,
    and for a method of this family its own checks, run on a backend that stops at the first pass."""
    import inspect

    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): the first call checks
        return
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    takes = [p for p in list(params)[3:] if params[p].kind in named]
    free = any(p.kind is p.VAR_KEYWORD for p in params.values())
    bad = [k for k in options if k in ("model", "x", "target") or (k not in takes and not free)]
    if bad:
        raise param_error("method", owner, f"options that {name} takes ({', '.join(takes) or 'none'}; noise_tunnel "
                          "gives the model, the images and the target)", f"option {bad[0]!r} for {name}", TypeError)
    from .. import attribution

    if name in _NAMED and getattr(attribution, name, None) is function:
        try:
            function(_Dry(backend), x, target, **options)
        except _DryRun:
            pass


def _classes(backend, x, target, owner):
    """The explained class of each clean image and the clean outputs: for target None their top
    class, from one forward; a given class or callable as is, with no pass (the method's first
    pass checks a class against the outputs, as Captum's NoiseTunnel leaves it to its method)."""
    if callable(target):
        return target, None
    if target is not None:
        return np.broadcast_to(np.asarray(target, np.int64), (len(x),)).copy(), None
    outputs = backend.forward(x)
    return output_seeds(target, outputs, owner)[1], outputs


def _first_call(function, backend, images, target, options, name, owner):
    """The method's first call; a class it finds out of range is reported as noise_tunnel's."""
    try:
        return function(backend, images, target, **options)
    except (ValueError, IndexError) as err:
        text = str(err)
        if not text.startswith(f"The 'target' parameter of {name} "):
            raise
        raise type(err)(text.replace(f"parameter of {name}", f"parameter of {owner} (given to {name})", 1)) from None


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
        ...), with options, or a callable ``(model, x, target) -> AttributionMaps``. The
        options are checked before any pass: their names against the method's signature, and
        a method of this family runs its own checks (on a backend that stops at the first pass).
    noise : array (samples, N, C, H, W) or None
        The noise itself, added as given (``stdev`` and ``seed`` are then unused); draw i for
        image n is ``noise[i, n]``. Otherwise draw i is
        ``gaussian([seed, i], x.shape) * sigma`` (:func:`convscope._noise.gaussian`: Box-Muller on
        ``default_rng([seed, i])``, as fast as ``torch.randn``): the result does not depend
        on ``perturbations_per_eval``.
    perturbations_per_eval : int or None
        Noisy copies of each image in one call of the method, hence in one backend call for a
        gradient method (Captum's ``nt_samples_batch_size``; None: 2^18 pixels' worth).

    The explained class is fixed on the clean images (target None: their top class, from one
    forward pass whose scores are the result's ``outputs``; a given target needs no such pass,
    and ``outputs`` is then None).
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
        per = max(1, auto_batch_size(*x.shape[2:], backend=backend) // n)
    else:
        per = check_int(perturbations_per_eval, "perturbations_per_eval", owner, low=1)
    target = check_target(target, n, owner)
    _check_options(function, options, name, backend, x, target, owner)
    classes, outputs = _classes(backend, x, target, owner)
    flat = x.reshape(n, -1)
    sigma = (stdev * (flat.max(axis=1) - flat.min(axis=1))).astype(np.float32)[:, None, None, None]

    def noisy(i, out):
        """x plus draw i, written into ``out`` (no temporaries: the draw is made in place)."""
        if noise is not None:
            return np.add(x, noise[i], out=out)
        gaussian([seed, int(i)], x.shape, out=out)
        out *= sigma
        return np.add(out, x, out=out)

    sums, map_sums = [0.0, 0.0], [0.0, 0.0]  # sum and sum of squares, float64
    signed = False
    buffer = np.empty((min(per, samples) * n, *x.shape[1:]), np.float32)  # reused: the method never keeps it
    for start in range(0, samples, per):
        draws = range(start, min(start + per, samples))
        images = buffer[:len(draws) * n]
        for k, i in enumerate(draws):  # draw-major: (draw, image)
            noisy(i, images[k * n:(k + 1) * n])
        chunk_target = classes if callable(classes) else np.tile(classes, len(draws))
        if start == 0:
            result = _first_call(function, backend, images, chunk_target, options, name, owner)
        else:
            result = function(backend, images, chunk_target, **options)
        if not isinstance(result, AttributionMaps) or result.maps.shape != (len(images),) + x.shape[2:]:
            raise param_error("method", owner, f"a method returning AttributionMaps with one map per image, "
                              f"{(len(images),) + x.shape[2:]}", f"{name} returning {describe(result)}", TypeError)
        a = result.attributions if result.attributions is not None else result.maps[:, None]
        a = a.reshape((len(draws), n) + a.shape[1:])
        m = result.maps.reshape((len(draws), n) + result.maps.shape[1:])
        sums[0] = sums[0] + a.sum(axis=0, dtype=np.float64)  # each value in float64, then summed
        map_sums[0] = map_sums[0] + m.sum(axis=0, dtype=np.float64)
        if kind != "smoothgrad":
            sums[1] = sums[1] + np.square(a, dtype=np.float64).sum(axis=0)
            map_sums[1] = map_sums[1] + np.square(m, dtype=np.float64).sum(axis=0)
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
