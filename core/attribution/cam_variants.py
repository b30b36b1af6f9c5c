"""More class activation maps over the shared base of :mod:`.cam`, and the extension point.

A variant is one weight function ``weights_fn(p) -> (N, C) or (N, C, h, w)`` of a
:class:`~convscope.attribution.cam.LayerPass` (activations ``p.acts``, gradients ``p.grads``);
:func:`make_cam` turns it into a CAM function with the shared signature
``NAME(model, x, target=None, *, layer=None, clip=True, reshape=None, aug_smooth=False,
eigen_smooth=False)`` and registers it by name, so :func:`multi_layer_cam` can use it. The
built-in variants below are made the same way (definitions as in pytorch-grad-cam):

- HiResCAM (Draelos & Carin 2020): ``cam = ReLU(sum_c dS/dA_c * A_c)``;
- XGrad-CAM (Fu et al. 2020): ``w_c = sum_ij (A_cij / sum_ab A_cab) dS/dA_cij``;
- Eigen-Grad-CAM: the first principal component of ``dS/dA * A``;
- FullGrad (Srinivas & Fleuret 2019): input-gradient x input plus the bias-gradients of every
  conv and norm layer, each ``|.|``, min-max scaled and upsampled, summed and scaled again.
"""
from __future__ import annotations

import numpy as np

from .._layers import check_layers, check_spatial, default_layer, records
from .._targets import check_target, objective, output_seeds, prepare, with_choices
from .._batching import auto_batch_size
from .._validate import check_choice, check_int, describe, param_error
from ..backend import unchecked
from ..backend import INPUT, OUTPUT
from ._layer_maps import check_reshape, to_maps
from .cam import (LayerPass, _check_flag, _grad_cam_pp_weights, _layer_map, _output_seeds, _run, augmentation_info,
                  augmentation_mean, first_component)
from .result import AttributionMaps, upsample

__all__ = ["make_cam", "registered_cams", "hires_cam", "xgrad_cam", "eigen_grad_cam", "ablation_cam", "full_grad",
           "multi_layer_cam"]

_MODES = ("gradient", "activations")
_REGISTRY: dict = {}


def make_cam(name: str, weights_fn, *, mode: str = "gradient", doc: str | None = None):
    """A CAM function from a weight function, registered under ``name``.

    Parameters
    ----------
    name : str
        The variant's name (the result's owner, and its key in :func:`registered_cams` and
        ``multi_layer_cam(method=...)``).
    weights_fn : callable
        ``weights_fn(p) -> array``: (N, C) channel weights or (N, C, h, w) weights per channel
        and position, from the :class:`~convscope.attribution.cam.LayerPass` ``p``
        (``p.acts``, ``p.grads``, ``p.outputs``, ``p.seeds``, ``p.backend``).
    mode : {"gradient", "activations"}
        ``"gradient"``: ``p.grads`` holds dS/dA (one forward and backward pass);
        ``"activations"``: forward passes only, ``p.grads`` is None (any backend).
    doc : str, optional
        The docstring of the returned function.

    Returns
    -------
    callable
        ``f(model, x, target=None, *, layer=None, clip=True, reshape=None, aug_smooth=False,
        eigen_smooth=False) -> AttributionMaps`` computing ``ReLU(sum_c w_c A_c)`` at the layer,
        upsampled to the input.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise param_error("name", "make_cam", "a name that is a Python identifier", describe(name))
    if not callable(weights_fn):
        raise param_error("weights_fn", "make_cam", "a function of a LayerPass", describe(weights_fn), TypeError)
    check_choice(mode, _MODES, "mode", "make_cam")

    def variant(model, x, target=None, *, layer: str | None = None, clip: bool = True, reshape=None,
                aug_smooth: bool = False, eigen_smooth: bool = False) -> AttributionMaps:
        return _run(name, model, x, target, layer, weights_fn, mode, clip, reshape=reshape,
                    aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)

    variant.__name__ = variant.__qualname__ = name
    variant.__doc__ = doc
    _REGISTRY[name] = (weights_fn, mode)
    return variant


def registered_cams() -> list:
    """The names :func:`multi_layer_cam` accepts: the built-ins and every :func:`make_cam` variant."""
    return sorted(_REGISTRY)


def _xgrad_weights(p: LayerPass) -> np.ndarray:
    a, g = p.acts.astype(np.float64), p.grads.astype(np.float64)
    total = a.sum(axis=(2, 3), keepdims=True)
    return (g * a / (total + 1e-7)).sum(axis=(2, 3)).astype(np.float32)


# the built-ins of cam.py, registered for multi_layer_cam
_REGISTRY.update({"grad_cam": (lambda p: p.grads.mean(axis=(2, 3)), "gradient"),
                  "grad_cam_pp": (_grad_cam_pp_weights, "gradient"),
                  "layer_cam": (lambda p: np.maximum(p.grads, 0), "gradient")})

hires_cam = make_cam("hires_cam", lambda p: p.grads, doc="""HiResCAM (Draelos & Carin 2020):
    ``cam = ReLU(sum_c dS/dA_c * A_c)``, the element-wise product of the gradient and the
    activations summed over channels (for a model ending in GAP and a linear layer it is exactly
    what the score sums). ``eigen_smooth`` voids that guarantee.""")

xgrad_cam = make_cam("xgrad_cam", _xgrad_weights, doc="""XGrad-CAM (Fu et al. 2020):
    ``w_c = sum_ij (A_cij / sum_ab A_cab) dS/dA_cij`` (1e-7 added to the sum, as pytorch-grad-cam),
    ``cam = ReLU(sum_c w_c A_c)``.""")


def eigen_grad_cam(model, x, target=None, *, layer: str | None = None, clip: bool = True, reshape=None,
                   aug_smooth: bool = False, eigen_smooth: bool = False) -> AttributionMaps:
    """Eigen-Grad-CAM (pytorch-grad-cam's class-discriminative Eigen-CAM): the projection of the
    centred ``dS/dA * A`` on its first principal component (always "eigen-smoothed":
    ``eigen_smooth`` is taken for the shared signature and changes nothing, as in
    pytorch-grad-cam). The sign, arbitrary in an SVD, is chosen so that the map correlates with
    ``sum_c dS/dA_c A_c``."""
    _check_flag(eigen_smooth, "eigen_smooth", "eigen_grad_cam")
    return _run("eigen_grad_cam", model, x, target, layer, lambda p: p.grads, "gradient", clip, reshape=reshape,
                aug_smooth=aug_smooth, eigen_smooth=True)


_REGISTRY.update({"hires_cam": (lambda p: p.grads, "gradient"), "xgrad_cam": (_xgrad_weights, "gradient")})


# --------------------------------------------------------------------------- Ablation-CAM
def _ablated_producer(recs, layer: str) -> str:
    """The conv or norm layer whose parameters of channel c, zeroed, make channel c of ``layer``
    exactly zero: the layer itself, or the one a ReLU reads when nothing else reads it."""
    by = {r.name: r for r in recs}
    record = by[layer]
    producer = record
    if record.kind == "relu" and len(record.inputs) == 1 and record.inputs[0] in by:
        producer = by[record.inputs[0]]
        if [r.name for r in recs if producer.name in r.inputs] != [layer]:
            producer = None
    if producer is None or producer.kind not in ("conv", "norm"):
        raise ValueError(f"ablation_cam: channel c of {layer!r} can be zeroed only as the output of a conv or "
                         "norm layer (or of a ReLU that alone reads one), by zeroing that layer's filter c and "
                         f"bias c; {layer!r} ({record.kind}) is not. Pass layer=<such a layer>.")
    return producer.name


def _ablation_weights(p: LayerPass, batch_size: int) -> np.ndarray:
    """``w_c = (y - y_c) / y``: y the explained score, y_c the score with channel c zeroed (a copy
    of the model per channel, :meth:`Backend.with_weights`; the images in batches)."""
    producer = _ablated_producer(p.records, p.layer)
    params = {k: np.asarray(v) for k, v in p.backend.weights(producer).items() if k in ("weight", "kernel", "bias")}
    if not params:
        raise ValueError(f"ablation_cam: {producer!r} has no weight or bias to zero (a norm layer without "
                         "affine parameters); pass another layer.")
    n, c = p.acts.shape[:2]
    base = objective(p.outputs, p.seeds, "score")
    weights = np.zeros((n, c), np.float64)
    for ch in range(c):
        zeroed = {}
        for k, v in params.items():
            z = v.copy()
            z[ch] = 0  # filters, biases and norm scales are channel-first on every backend
            zeroed[k] = z
        ablated = unchecked(p.backend.with_weights({producer: zeroed}))
        scores = [objective(ablated.forward(p.x[s:s + batch_size]), p.seeds[s:s + batch_size], "score")
                  for s in range(0, n, batch_size)]
        weights[:, ch] = base - np.concatenate(scores)
    return np.divide(weights, base[:, None], out=np.zeros_like(weights), where=base[:, None] != 0).astype(np.float32)


def ablation_cam(model, x, target=None, *, layer: str | None = None, clip: bool = True, reshape=None,
                 aug_smooth: bool = False, eigen_smooth: bool = False, batch_size: int | None = None) -> AttributionMaps:
    """Ablation-CAM (Desai & Ramaswamy 2020): ``w_c = (y - y_c) / y``, y the explained class
    score and y_c the score with channel c of ``layer`` set to zero; ``cam = ReLU(sum_c w_c A_c)``.
    Forward passes only (any backend). Channel c is zeroed through the parameters, exactly: the
    filter and bias c of the conv (or the scale and offset c of the norm layer) producing ``layer``,
    directly or through a ReLU. One model copy per channel; ``batch_size`` images per call
    (None: sized to the images). A zero score gives zero weights."""
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", "ablation_cam", low=1)

    def weights(p: LayerPass) -> np.ndarray:
        return _ablation_weights(p, batch_size or auto_batch_size(*p.x.shape[2:], backend=p.backend))

    return _run("ablation_cam", model, x, target, layer, weights, "activations", clip, reshape=reshape,
                aug_smooth=aug_smooth, eigen_smooth=eigen_smooth, precheck=_ablated_producer)


# --------------------------------------------------------------------------- several layers
def _scaled(maps: np.ndarray, size=None) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image``: each map minus its min, over (1e-7 + its max),
    then (optionally) resized bilinearly."""
    m = maps.astype(np.float64) - maps.min(axis=(-2, -1), keepdims=True)
    m = (m / (1e-7 + m.max(axis=(-2, -1), keepdims=True))).astype(np.float32)
    return m if size is None or tuple(m.shape[-2:]) == tuple(size) else upsample(m, size)


def multi_layer_cam(model, x, target=None, *, method: str = "grad_cam", layers=None, reduce: str = "mean",
                    eigen_smooth: bool = False, aug_smooth: bool = False, reshape=None) -> AttributionMaps:
    """A CAM over several layers, aggregated as pytorch-grad-cam's ``aggregate_multi_layers``:
    each layer's ``ReLU`` map upsampled to the input and min-max scaled, then their mean (or
    ``reduce="max"``), scaled to [0, 1] again. One gradient pass serves every layer.

    ``method`` is a name of :func:`registered_cams`; ``layers`` a list of layer names (None: the
    default CAM layer alone, and ``info["choices"]`` says so). ``eigen_smooth`` and
    ``aug_smooth`` as every CAM (:func:`~convscope.attribution.grad_cam`), on each layer's map
    before it is scaled (``aug_smooth``: one pass for every layer per augmentation).
    ``info["per_layer"]`` holds each layer's scaled map.
    """
    owner = "multi_layer_cam"
    check_choice(method, registered_cams(), "method", owner)
    check_choice(reduce, ("mean", "max"), "reduce", owner)
    eigen_smooth = _check_flag(eigen_smooth, "eigen_smooth", owner)
    aug_smooth = _check_flag(aug_smooth, "aug_smooth", owner)
    backend, x = prepare(model, x, owner)
    target = check_target(target, len(x), owner)
    reshape = check_reshape(reshape, owner)
    recs = records(backend, x)
    chosen = {}
    if layers is None:
        layers = [default_layer(recs, owner)]
        chosen = {"choices": {"layers": f"{layers[0]}: the default CAM layer (pass layers=[...] for several)"}}
    elif isinstance(layers, str) or not isinstance(layers, (list, tuple)) or not len(layers):
        raise param_error("layers", owner, "a non-empty list of layer names", describe(layers))
    layers = check_layers(list(layers), backend, owner)
    run = (backend, layers, method, eigen_smooth, reshape, recs, owner)
    raw, classes, outputs = _maps_at_layers(x, target, *run)
    info = {"layers": layers, "method": method, "reduce": reduce}
    if eigen_smooth:
        info["eigen_smooth"] = True
    if aug_smooth:
        fixed = target if callable(target) else classes
        raw = augmentation_mean(x, raw, lambda xa: _maps_at_layers(xa, fixed, *run)[0])
        info["aug_smooth"] = augmentation_info()
    per_layer = [_scaled(m, x.shape[2:]) for m in raw]
    stack = np.stack(per_layer, axis=1)
    maps = _scaled(stack.mean(axis=1) if reduce == "mean" else stack.max(axis=1))
    return AttributionMaps(maps, x, owner, classes, outputs=outputs,
                           info={**info, "per_layer": dict(zip(layers, per_layer)), **with_choices(chosen, backend)})


def _maps_at_layers(x, target, backend, layers, method, eigen_smooth, reshape, recs, owner):
    """(the ReLU layer maps of ``method`` at every layer, the classes, the outputs) from one pass."""
    weights_fn, mode = _REGISTRY[method]
    by = {r.name: r for r in recs}
    box: dict = {}
    if mode == "gradient":
        g = backend.gradient(x, _output_seeds(target, owner, box), at=[OUTPUT], wrt=layers)
        acts, grads, outputs = g.activations, g.grads, g.outputs
    else:
        acts = backend.activations(x, [*layers, OUTPUT])
        grads, outputs = None, acts[OUTPUT]
        box["seeds"], box["classes"] = output_seeds(target, outputs, owner)
    maps = []
    for name in layers:
        a = check_spatial(to_maps(acts[name], by.get(name), reshape, recs, owner), name, owner)
        gr = None if grads is None else to_maps(grads[name], by.get(name), reshape, recs, owner)
        p = LayerPass(backend, x, name, a, gr, box["seeds"], box["classes"], outputs, recs, owner)
        maps.append(_layer_map(p, weights_fn(p), True, eigen_smooth))
    return maps, box["classes"], outputs


# --------------------------------------------------------------------------- FullGrad
def _bias_layers(recs) -> list:
    return [r for r in recs if r.kind in ("conv", "norm") and r.spatial]


def _effective_bias(backend, record, acts, owner) -> np.ndarray | None:
    """The per-channel bias of a conv (its parameter) or of a norm layer in inference mode,
    ``y = s x + b``: ``b`` fitted exactly from the layer's input and output of the same pass
    (a least-squares line per channel), which needs no running statistics or eps."""
    if record.kind == "conv":
        b = backend.weights(record.name).get("bias")
        return None if b is None else np.asarray(b, np.float64).reshape(-1)
    src = [i for i in record.inputs if i in acts]
    if len(src) != 1:
        return None
    xin = acts[src[0]].astype(np.float64).transpose(1, 0, 2, 3).reshape(acts[src[0]].shape[1], -1)
    y = acts[record.name].astype(np.float64).transpose(1, 0, 2, 3).reshape(xin.shape[0], -1)
    xm, ym = xin.mean(axis=1, keepdims=True), y.mean(axis=1, keepdims=True)
    s = ((xin - xm) * (y - ym)).sum(axis=1) / np.maximum(((xin - xm) ** 2).sum(axis=1), 1e-30)
    return (ym[:, 0] - s * xm[:, 0])


def full_grad(model, x, target=None, *, aug_smooth: bool = False, eigen_smooth: bool = False) -> AttributionMaps:
    """FullGrad (Srinivas & Fleuret 2019), as pytorch-grad-cam's ``FullGrad``:
    ``scale(sum_k scale(|dS/dx_k x_k|) + sum_l sum_c up(scale(|b_lc dS/dz_lc|)))`` over the
    input channels k and every conv and norm layer l with a bias, ``z_l`` its output, ``scale``
    the min-max scaling of each map. A norm layer's bias is its inference-mode offset
    ``beta - mean gamma / sqrt(var + eps)``, read from its input and output. One forward and
    backward pass. The map is in [0, 1]; ``info["layers"]`` names the bias layers used.

    ``eigen_smooth`` as pytorch-grad-cam's FullGrad: the terms of the sum (each input channel,
    each layer) min-max scaled at an eighth of the input size, their first principal
    component (sign as every CAM's) upsampled and scaled instead of their sum. ``aug_smooth``:
    the mean of the maps of the six flipped and scaled images, mapped back (:func:`grad_cam`).
    """
    owner = "full_grad"
    aug_smooth = _check_flag(aug_smooth, "aug_smooth", owner)
    eigen_smooth = _check_flag(eigen_smooth, "eigen_smooth", owner)
    backend, x = prepare(model, x, owner)
    target = check_target(target, len(x), owner)
    layers = _bias_layers(records(backend, x))
    maps, classes, outputs, used = _full_grad_maps(backend, x, target, layers, eigen_smooth, owner)
    info = {"layers": used, **({"eigen_smooth": True} if eigen_smooth else {})}
    if aug_smooth:
        fixed = target if callable(target) else classes
        maps = augmentation_mean(x, [maps], lambda xa: [_full_grad_maps(backend, xa, fixed, layers, eigen_smooth,
                                                                        owner)[0]])[0]
        info["aug_smooth"] = augmentation_info()
    return AttributionMaps(maps, x, owner, classes, outputs=outputs, info={**info, **with_choices({}, backend)})


def _full_grad_maps(backend, x, target, layers, eigen_smooth, owner):
    """(maps in [0, 1], classes, outputs, the bias layers used) of one forward and backward pass."""
    names = [r.name for r in layers]
    extra = sorted({i for r in layers if r.kind == "norm" for i in r.inputs} - set(names))
    box: dict = {}
    g = backend.gradient(x, _output_seeds(target, owner, box), at=[OUTPUT], wrt=[INPUT, *names, *extra])
    acts = dict(g.activations)
    inputs = _scaled(np.abs(g.grads[INPUT] * x))
    total = inputs.sum(axis=1, dtype=np.float64)
    small = tuple(max(1, s // 8) for s in x.shape[2:])  # eigen_smooth: pytorch-grad-cam's eighth of the size
    terms = [_scaled(inputs, small)] if eigen_smooth else None  # each term scaled, resized, kept to be projected
    used = []
    for r in layers:
        b = _effective_bias(backend, r, acts, owner)
        if b is None:
            continue
        bias_grad = np.abs(b[None, :, None, None] * g.grads[r.name])
        # the upsampling is linear: the channels' scaled maps are summed first, upsampled once
        summed = _scaled(bias_grad).sum(axis=1, dtype=np.float64).astype(np.float32)
        term = summed if summed.shape[1:] == x.shape[2:] else upsample(summed, x.shape[2:])
        total += term
        if terms is not None:
            terms.append(_scaled(term, small)[:, None])
        used.append(r.name)
    if eigen_smooth:
        stack = np.concatenate(terms, axis=1)
        total = _scaled(first_component(stack, stack.sum(axis=1)), x.shape[2:])
    return _scaled(total.astype(np.float32)), box["classes"], g.outputs, used
