"""Gradient attributions: saliency, SmoothGrad, integrated gradients, input x gradient,
deconvnet and guided backpropagation.

Each runs on any Backend through ``backend.gradient`` alone: the explained class is
turned into seeds inside the pass (a callable seed), so one call costs one forward and
one backward, and the range of ``target`` is checked against the pass's own outputs.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_choice, check_int, check_number, describe, param_error
from ..backend import INPUT, OUTPUT
from .._layers import check_layer_name
from .._targets import check_target, index_per_sample, output_seeds, prepare, with_choices
from .._batching import auto_batch_size
from .._noise import gaussian
from .result import AttributionMaps, reduce_channels

__all__ = ["saliency", "smoothgrad", "integrated_gradients", "input_x_gradient", "deconvnet", "guided_backprop",
           "input_gradient", "IG_METHODS"]

#: Saliency variants and the channel reduction each one applies to the gradient.
_VARIANTS = {"abs": "max-abs", "signed": "signed-max", "raw": "sum"}
IG_METHODS = ("riemann_middle", "riemann_trapezoid", "gausslegendre", "riemann_left", "riemann_right")


def _check_neuron(neuron, owner):
    if neuron is None or neuron == "max":
        return neuron
    if (isinstance(neuron, (tuple, list)) and len(neuron) == 2
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0 for v in neuron)):
        return tuple(int(v) for v in neuron)
    raise param_error("neuron", owner, "None (the whole channel), 'max' (its strongest unit) or a (row, column) pair",
                      describe(neuron))


def _unit_seeds(acts, target, neuron, layer, owner):
    """Seeds at ``layer`` selecting, per sample, one channel (all of it, its maximum, or one position)."""
    n, c = acts.shape[:2]
    if callable(target):
        got = np.asarray(target(acts))
        if got.shape == acts.shape and got.dtype.kind == "f":
            return got.astype(np.float32), None
        target = got
    if target is None:  # the most active channel
        target = acts.reshape(n, c, -1).mean(axis=2).argmax(axis=1)
    ch = index_per_sample(target, n, c, owner, what=f"a channel index of layer {layer!r}", of="channels")
    seeds = np.zeros_like(acts, dtype=np.float32)
    rows = np.arange(n)
    if acts.ndim == 2 or neuron is None:
        if acts.ndim == 2 and neuron is not None:
            raise param_error("neuron", owner, f"None for layer {layer!r}, whose output has no spatial axes",
                              repr(neuron))
        seeds[rows, ch] = 1.0
        return seeds, ch
    if acts.ndim != 4:
        raise param_error("layer", owner, "a layer with (C,) or (C, H, W) outputs",
                          f"{layer!r} of shape {acts.shape[1:]}")
    h, w = acts.shape[2:]
    if neuron == "max":
        flat = acts[rows, ch].reshape(n, -1).argmax(axis=1)
        ys, xs = np.divmod(flat, w)
    else:
        if neuron[0] >= h or neuron[1] >= w:
            raise param_error("neuron", owner, f"a position inside the {h}x{w} map of layer {layer!r}", repr(neuron))
        ys, xs = np.full(n, neuron[0]), np.full(n, neuron[1])
    seeds[rows, ch, ys, xs] = 1.0
    return seeds, ch


def input_gradient(backend, x, target, owner, *, rule="standard", layer=None, neuron=None):
    """One forward + backward: (gradient at the input, explained indices or None, outputs).

    The seed is placed at the outputs (``layer`` None) or at ``layer`` (a channel or unit).
    """
    box = {}
    if layer is None:
        def seeds(acts):
            box["seeds"], box["index"] = output_seeds(target, acts[OUTPUT], owner)
            return {OUTPUT: box["seeds"]}
        at = [OUTPUT]
    else:
        def seeds(acts):
            s, box["index"] = _unit_seeds(acts[layer], target, neuron, layer, owner)
            return {layer: s}
        at = [layer]
    g = backend.gradient(x, seeds, at=at, wrt=[INPUT], rule=rule)
    return g.grads[INPUT], box["index"], g.outputs


def _check_layer_args(layer, neuron, owner):
    if layer is not None and not isinstance(layer, str):
        raise param_error("layer", owner, "a layer name (str) or None", describe(layer), TypeError)
    if layer is None and neuron is not None:
        raise param_error("neuron", owner, "None unless a layer is given", repr(neuron))
    return _check_neuron(neuron, owner)


def _gradient_map(owner, model, x, target, variant, rule, layer, neuron):
    backend, x = prepare(model, x, owner)
    check_choice(variant, tuple(_VARIANTS), "variant", owner)
    target = check_target(target, len(x), owner)
    neuron = _check_layer_args(layer, neuron, owner)
    try:
        g, index, outputs = input_gradient(backend, x, target, owner, rule=rule, layer=layer, neuron=neuron)
    except ValueError:
        if layer is not None:  # a layer the backend does not know: say so about 'layer'
            check_layer_name(backend, x, layer, owner)
        raise
    info = {"variant": variant} if layer is None else {"variant": variant, "target_layer": layer, "neuron": neuron}
    return _maps(g, variant, x, owner, index, outputs, with_choices(info, backend))


def _maps(g, variant, x, owner, index, outputs, info):
    """The result of a gradient method: ``variant`` "abs" keeps ``|g|`` (its channel max is the map)."""
    if variant == "abs":
        a = np.abs(g)
        return AttributionMaps(a.max(axis=1), x, owner, index, attributions=a, outputs=outputs, info=info)
    return AttributionMaps(reduce_channels(g, _VARIANTS[variant]), x, owner, index, signed=True, attributions=g,
                           outputs=outputs, info=info)


def saliency(model, x, target=None, *, variant: str = "abs", layer: str | None = None, neuron=None) -> AttributionMaps:
    """Gradient saliency (Simonyan et al. 2014): ``g = dS_target / dx``.

    ``variant``: ``"abs"`` ``M = max_c |g_c|`` (the paper's map); ``"signed"`` the ``g_c`` of
    largest magnitude with its sign; ``"raw"`` ``sum_c g_c`` (the derivative for adding the same
    amount to every channel). ``attributions`` holds ``|g|`` ("abs") or ``g``.
    With ``layer``, ``target`` picks a channel of that layer instead of a class (see
    :func:`guided_backprop`).
    """
    return _gradient_map("saliency", model, x, target, variant, "standard", layer, neuron)


def guided_backprop(model, x, target=None, *, variant: str = "abs", layer: str | None = None,
                    neuron=None) -> AttributionMaps:
    """Guided backpropagation (Springenberg et al. 2015): the gradient with every ReLU's
    backward rule replaced by ``max(g, 0) * [x > 0]``.

    Explains a class score, or, with ``layer``, one channel of that layer: ``target`` is then
    the channel index (None: the most active channel), ``neuron`` None for the whole channel
    (gradient of its sum), ``"max"`` for its strongest unit per sample, or ``(row, column)``.
    ``variant`` as in :func:`saliency`.
    """
    return _gradient_map("guided_backprop", model, x, target, variant, "guided", layer, neuron)


def deconvnet(model, x, target=None, *, variant: str = "abs", layer: str | None = None,
              neuron=None) -> AttributionMaps:
    """Deconvnet (Zeiler and Fergus 2014): every ReLU passes ``max(g, 0)`` backwards,
    whatever its input was. Arguments as :func:`guided_backprop`; ``layer="conv3",
    neuron="max"`` gives the paper's projection of a feature map's strongest activation.
    """
    return _gradient_map("deconvnet", model, x, target, variant, "deconvnet", layer, neuron)


def input_x_gradient(model, x, target=None) -> AttributionMaps:
    """Input x gradient (Shrikumar et al.): ``a = x * dS/dx``, map ``sum_c a_c`` (signed)."""
    backend, x = prepare(model, x, "input_x_gradient")
    target = check_target(target, len(x), "input_x_gradient")
    g, index, outputs = input_gradient(backend, x, target, "input_x_gradient")
    a = x * g
    return AttributionMaps(a.sum(axis=1), x, "input_x_gradient", index, signed=True, attributions=a, outputs=outputs,
                           info=with_choices({}, backend))


# --------------------------------------------------------------------------- averaged gradients
def _averaged_gradient(backend, base, direction, alphas, weights, noise, target, batch_size, owner):
    """``sum_k w_k g(base_n + alpha_k direction_n + noise(k)_n)`` per sample n, over batches of
    ``batch_size`` images, draw-major (a batch holds whole draws when it can). ``noise(k)``
    returns draw k's noise for every sample, (N, C, H, W), or ``noise`` is None."""
    n = len(base)
    total = np.zeros((n, base[0].size), np.float64)
    count = len(alphas) * n
    alphas = np.asarray(alphas, np.float32)
    for start in range(0, count, batch_size):
        j = np.arange(start, min(start + batch_size, count))
        k, s = np.divmod(j, n)
        images = base[s] + alphas[k, None, None, None] * direction[s] if direction is not None else base[s].copy()
        if noise is not None:
            for draw in np.unique(k):
                images[k == draw] += noise(draw)[s[k == draw]]
        chunk_target = target if target is None or callable(target) else target[s]
        g, _, _ = input_gradient(backend, images, chunk_target, owner)
        coef = np.zeros((n, len(j)), np.float32)  # sample n gathers w_k g over its rows: one GEMM
        coef[s, np.arange(len(j))] = np.asarray(weights, np.float32)[k]
        total += coef @ g.reshape(len(j), -1)
    return total.reshape(base.shape).astype(np.float32)


def _classes(backend, x, target):
    """Per-sample classes fixed on the clean images (None: one forward for the top class).
    A callable target is passed on as is; ranges are checked inside each pass."""
    if callable(target):
        return target, None
    if target is None:
        outputs = backend.forward(x)
        return outputs.argmax(axis=1).astype(np.int64), outputs
    return np.broadcast_to(np.asarray(target, np.int64), (len(x),)).copy(), None


def smoothgrad(model, x, target=None, *, noise: float = 0.15, samples: int = 25, variant: str = "abs",
               batch_size: int | None = None, seed: int = 0) -> AttributionMaps:
    """SmoothGrad (Smilkov et al. 2017): the gradient averaged over noisy copies,
    ``g = (1/n) sum_i dS/dx (x + e_i)``, ``e_i ~ N(0, sigma^2)``, ``sigma = noise (max(x) - min(x))``
    per image; the map reduces ``g`` as :func:`saliency` does for ``variant``.

    ``batch_size`` noisy images go through the backend per call (None: 2^19 pixels' worth,
    128 images of 64 x 64, 10 of 224 x 224); the noise depends on ``seed`` only, so results
    do not depend on ``batch_size``.
    """
    owner = "smoothgrad"
    backend, x = prepare(model, x, owner)
    check_choice(variant, tuple(_VARIANTS), "variant", owner)
    noise = check_number(noise, "noise", owner, low=0)
    samples = check_int(samples, "samples", owner, low=1)
    seed = check_int(seed, "seed", owner, low=0)
    batch_size = _gradient_batch(batch_size, x, owner, backend)
    target = check_target(target, len(x), owner)
    classes, outputs = _classes(backend, x, target)
    flat = x.reshape(len(x), -1)
    sigma = (noise * (flat.max(axis=1) - flat.min(axis=1))).astype(np.float32)[:, None, None, None]

    def draw(k):  # draw k's noise for every sample: a function of (seed, k) alone
        return gaussian([seed, int(k)], x.shape) * sigma

    g = _averaged_gradient(backend, x, None, np.zeros(samples), np.full(samples, 1.0 / samples), draw,
                           classes, batch_size, owner)
    return _maps(g, variant, x, owner, None if callable(classes) else classes, outputs,
                 with_choices({"noise": noise, "samples": samples, "variant": variant}, backend))


def _gradient_batch(batch_size, x, owner, backend):
    if batch_size is None:  # a backward pass prefers larger batches: 128 images of 64 x 64 (measured)
        return auto_batch_size(*x.shape[2:], pixels=2 ** 19, backend=backend)
    return check_int(batch_size, "batch_size", owner, low=1)


def _quadrature(method, steps, owner):
    """Points ``alpha_k`` in [0, 1] and weights ``w_k`` with ``int_0^1 f ~ sum_k w_k f(alpha_k)``."""
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return 0.5 * (nodes + 1), 0.5 * weights
    if method == "riemann_trapezoid":
        if steps < 2:
            raise param_error("steps", owner, ">= 2 for the trapezoid rule", str(steps))
        w = np.full(steps, 1.0 / (steps - 1))
        w[[0, -1]] /= 2
        return np.linspace(0, 1, steps), w
    offset = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}[method]
    return (np.arange(steps) + offset) / steps, np.full(steps, 1.0 / steps)


def _baseline(baseline, x, owner):
    if baseline is None:
        return np.zeros_like(x)
    if isinstance(baseline, (int, float, np.integer, np.floating)) and not isinstance(baseline, bool):
        return np.full_like(x, check_number(baseline, "baseline", owner))
    b = np.asarray(baseline, np.float32)
    try:
        return np.ascontiguousarray(np.broadcast_to(b, x.shape))
    except ValueError:
        raise param_error("baseline", owner, f"None, a number, or an array that broadcasts to the input {x.shape}",
                          f"shape {b.shape}") from None


def integrated_gradients(model, x, target=None, *, baseline=None, steps: int = 50, method: str = "riemann_middle",
                         batch_size: int | None = None) -> AttributionMaps:
    """Integrated gradients (Sundararajan et al. 2017):
    ``a = (x - x') * int_0^1 dS/dx (x' + t (x - x')) dt``, the integral by ``method`` with
    ``steps`` points. Completeness: ``sum a ~ S(x) - S(x')``.

    The default is the midpoint rule, ``alpha_k = (k + 1/2) / steps``: a ReLU network's path
    gradient jumps at every kink, where Gauss-Legendre (Captum's default, also offered)
    converges no faster than a Riemann sum and was the least accurate rule on the demo model
    at 200 steps; and unlike the trapezoid rule it never differentiates at the baseline
    itself, where a constant image ties every max-pool window and the gradient depends on how
    the framework breaks ties.

    ``baseline`` x' is None (black, zeros), a number or an array broadcasting to ``x``;
    ``batch_size`` interpolated images go through the backend per call (None: as in
    :func:`smoothgrad`). The map is ``sum_c a_c`` (signed). ``info["delta"]`` (N,) is the
    convergence delta ``sum a - (S(x) - S(x'))`` per image, as Captum's
    ``return_convergence_delta`` (one more forward pass of the baselines).
    """
    owner = "integrated_gradients"
    backend, x = prepare(model, x, owner)
    steps = check_int(steps, "steps", owner, low=1)
    check_choice(method, IG_METHODS, "method", owner)
    batch_size = _gradient_batch(batch_size, x, owner, backend)
    target = check_target(target, len(x), owner)
    base = _baseline(baseline, x, owner)
    alphas, weights = _quadrature(method, steps, owner)
    classes, outputs = _classes(backend, x, target)
    diff = x - base
    g = _averaged_gradient(backend, base, diff, alphas, weights, None, classes, batch_size, owner)
    a = diff * g
    delta = _convergence_delta(backend, x, base, a, classes, outputs, batch_size, owner)
    return AttributionMaps(a.sum(axis=1), x, owner, None if callable(classes) else classes, signed=True,
                           attributions=a, outputs=outputs,
                           info=with_choices({"steps": steps, "method": method, "delta": delta}, backend))


def _convergence_delta(backend, x, base, a, classes, outputs, batch_size, owner):
    """(N,) float64 ``sum a - (S(x) - S(x'))`` (Captum's ``return_convergence_delta``): how far
    the quadrature is from completeness. Costs one forward of the baselines (and of the images
    when the target was given)."""
    n = len(x)
    ends = [x] if outputs is None else []
    ends.append(base)
    stacked = np.concatenate(ends)
    out = np.concatenate([backend.forward(stacked[s:s + batch_size]) for s in range(0, len(stacked), batch_size)])
    if outputs is None:
        outputs = out[:n]
    seeds, _ = output_seeds(classes, outputs, owner)
    score = np.einsum("nk,nk->n", outputs.astype(np.float64), seeds.astype(np.float64))
    start = np.einsum("nk,nk->n", out[-n:].astype(np.float64), seeds.astype(np.float64))
    return a.reshape(n, -1).astype(np.float64).sum(axis=1) - (score - start)
