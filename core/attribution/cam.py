"""The class activation map family: one shared base, each variant a small function.

Every CAM reads the activations ``A`` (N, C, h, w) of one layer and combines its channels:
``cam = ReLU(sum_c w_c A_c)``, upsampled bilinearly to the input size. The variants differ
only in the weights ``w`` (per channel, or per channel and position), as in pytorch-grad-cam.
Gradient variants get ``A`` and ``dS/dA`` from ONE forward and backward pass
(``backend.gradient(..., wrt=[layer])``); CAM, Score-CAM and Eigen-CAM need only forward
passes, so they run on any backend.

``clip`` (default True) keeps the final ReLU; ``clip=False``
returns the signed map (the argument was called ``relu`` before; that name still works).
Every CAM (Eigen-CAM and Guided Grad-CAM's Grad-CAM factor too) takes pytorch-grad-cam's test-time smoothing:
``eigen_smooth=True`` (the first principal component of ``w_c A_c`` instead of their sum) and
``aug_smooth=True`` (the mean of the maps of the flipped and scaled images, mapped back).
New variants: :func:`convscope.attribution.make_cam` (module ``cam_variants``).

The default layer is the last channels-first map on the data path into the outputs (before
global pooling), the same logical tensor on every backend; ``maps.info["layer"]`` names it.
A token model (a ViT) gets its last token layer whose gradient reaches the patch tokens,
reshaped to the patch grid; ``reshape=`` (a function (N, T, D) -> (N, C, h, w), as
pytorch-grad-cam's ``reshape_transform``) handles any other layout. What convscope chose
(the layer, a final softmax left out) is in ``maps.info["choices"]``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .._validate import check_choice, check_int, describe, param_error
from ..backend import OUTPUT
from .._layers import check_spatial, default_candidates, default_layer, gap_linear_head, records, resolve_layer
from .._targets import OUTPUT_MODES, check_target, objective, output_seeds, prepare, with_choices
from .gradients import input_gradient
from .._batching import auto_batch_size
from .._renamed import renamed
from ._layer_maps import check_reshape, patch_tokens_reached, to_maps
from .result import AttributionMaps, reduce_channels, upsample

__all__ = ["cam", "grad_cam", "grad_cam_pp", "score_cam", "layer_cam", "eigen_cam", "guided_grad_cam", "LayerPass"]


@dataclass
class LayerPass:
    """What a variant's weight function sees: the backend, the images, the layer, its
    activations ``acts`` (N, C, h, w), the gradient ``grads`` of the explained objective with
    respect to them (None for gradient-free variants), the output seeds and classes."""

    backend: object
    x: np.ndarray
    layer: str
    acts: np.ndarray
    grads: np.ndarray | None
    seeds: np.ndarray | None
    classes: np.ndarray | None
    outputs: np.ndarray | None
    records: list | None  # the layer records
    owner: str
    choice: str | None = None  # why this layer, when convscope chose it among candidates


def _layer_pass(owner, model, x, target, layer, mode, precheck=None, reshape=None):
    """Run the one pass a variant needs: ``"gradient"`` (A and dS/dA), ``"activations"`` (A
    and the outputs) or ``"layer"`` (A only). ``precheck(records, layer)`` may refuse the
    model before any pass is run. The layer's arrays come as (N, C, h, w) maps whatever its
    layout (:mod:`._layer_maps`); a token model's default layer is chosen by the gradient."""
    backend, x = prepare(model, x, owner)
    target = check_target(target, len(x), owner)
    reshape = check_reshape(reshape, owner)
    if layer is not None and not isinstance(layer, str):
        raise param_error("layer", owner, "a layer name (str) or None", describe(layer), TypeError)
    recs = records(backend, x)
    choice = None
    if layer is None:
        kind, names = default_candidates(recs)
        if kind == "tokens" and mode == "gradient":
            layer, choice = _token_layer(backend, x, target, names, recs, owner)
        elif kind == "tokens":  # gradient-free variants read activations only: no pass to choose
            layer, choice = names[0], f"{names[0]}: the last token layer before the head"
        else:
            layer = default_layer(recs, owner)
    else:
        layer = resolve_layer(backend, x, layer, owner)[0]
    if precheck is not None:
        precheck(recs, layer)
    p = _pass(backend, x, target, layer, mode, recs, owner, reshape)
    if choice is not None:
        p.choice = choice
    return p


def _token_layer(backend, x, target, names, recs, owner):
    """The last token layer whose gradient reaches the patch tokens, from one pass."""
    seed_fn = _output_seeds(target, owner, {})
    g = backend.gradient(x, seed_fn, at=[OUTPUT], wrt=names)
    by = {r.name: r for r in recs}
    for name in names:
        if patch_tokens_reached(g.grads[name], by[name], recs):
            skipped = names[:names.index(name)]
            why = (f"{name}: the last token layer before the head whose gradient reaches the patch tokens"
                   + (f" (after it, {', '.join(skipped)} pass the class token only)" if skipped else ""))
            return name, why
    raise ValueError(f"{owner}: no token layer of this model gets a gradient on its patch tokens for the explained "
                     "class; pass layer=<name> explicitly.")


def _output_seeds(target, owner, box):
    def seed_fn(acts):
        box["seeds"], box["classes"] = output_seeds(target, acts[OUTPUT], owner)
        return {OUTPUT: box["seeds"]}
    return seed_fn


def _pass(backend, x, target, layer, mode, recs, owner, reshape=None):
    """The pass itself, then the layer's arrays as (N, C, h, w) maps, H x W > 1."""
    seeds = classes = None
    record = next((r for r in recs if r.name == layer), None)
    if mode == "gradient":
        box = {}
        g = backend.gradient(x, _output_seeds(target, owner, box), at=[OUTPUT], wrt=[layer])
        acts, grads, outputs = g.activations[layer], g.grads[layer], g.outputs
        grads = to_maps(grads, record, reshape, recs, owner)
        seeds, classes = box["seeds"], box["classes"]
    else:
        names = [layer, OUTPUT] if mode == "activations" else [layer]
        got = backend.activations(x, names)
        acts, grads, outputs = got[layer], None, got.get(OUTPUT)
        if outputs is not None:
            seeds, classes = output_seeds(target, outputs, owner)
    acts = check_spatial(to_maps(acts, record, reshape, recs, owner), layer, owner)
    return LayerPass(backend, x, layer, acts, grads, seeds, classes, outputs, recs, owner)


def _combine(p: LayerPass, weights: np.ndarray, clip: bool) -> np.ndarray:
    """``ReLU(sum_c w_c A_c)`` at the layer's resolution, (N, h, w)."""
    if weights.ndim == 4:
        m = np.einsum("nchw,nchw->nhw", weights, p.acts)
    else:
        m = np.einsum("nc,nchw->nhw", weights, p.acts)
    return np.maximum(m, 0) if clip else m


def _result(p: LayerPass, layer_maps: np.ndarray, clip: bool, **info) -> AttributionMaps:
    maps = upsample(layer_maps, p.x.shape[2:])
    return AttributionMaps(maps, p.x, p.owner, p.classes, signed=not clip, outputs=p.outputs,
                           info={"layer": p.layer, "layer_maps": layer_maps.astype(np.float32), **_choices(p), **info})


def _choices(p: LayerPass) -> dict:
    """What convscope chose for the user on this call: the layer (when it was not given) and
    the backend's own choices (a final softmax left out, say)."""
    return with_choices({"choices": {"layer": p.choice}} if p.choice is not None else {}, p.backend)


#: pytorch-grad-cam's test-time augmentations: (horizontal flip, factor) for flips x [0.9, 1, 1.1]
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))


def augmentation_mean(x, plain, maps_of):
    """``aug_smooth``: per entry of the list ``plain`` (the maps of ``x``, one array per layer),
    the mean over :data:`AUGMENTATIONS` of ``maps_of(xa)`` for ``x`` flipped and scaled, each map
    flipped back (``plain`` itself for the identity)."""
    runs = []
    for flip, factor in AUGMENTATIONS:
        if not flip and factor == 1.0:
            runs.append(plain)
            continue
        xa = np.ascontiguousarray((x[..., ::-1] if flip else x) * np.float32(factor))
        runs.append([m[..., ::-1] if flip else m for m in maps_of(xa)])
    return [np.mean([r[i] for r in runs], axis=0, dtype=np.float64).astype(np.float32) for i in range(len(plain))]


def augmentation_info():
    """What ``info["aug_smooth"]`` records: the augmentations averaged."""
    return [{"flip": f, "factor": k} for f, k in AUGMENTATIONS]


def first_component(weighted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``eigen_smooth``: the projection of the centred (h w, C) matrix of ``weighted`` (N, C, h, w)
    on its first principal component, (N, h, w), as pytorch-grad-cam's ``get_2d_projection``;
    its sign (arbitrary in an SVD) is chosen to correlate positively with ``reference`` (N, h, w)."""
    n, c, h, w = weighted.shape
    m = np.nan_to_num(weighted.astype(np.float64)).reshape(n, c, h * w).transpose(0, 2, 1)
    m = m - m.mean(axis=1, keepdims=True)
    _, _, vt = np.linalg.svd(m, full_matrices=False)
    proj = np.einsum("npc,nc->np", m, vt[:, 0])
    ref = reference.reshape(n, h * w).astype(np.float64)
    sign = np.sign(np.einsum("np,np->n", proj, ref - ref.mean(axis=1, keepdims=True)))
    return (proj * np.where(sign == 0, 1, sign)[:, None]).reshape(n, h, w).astype(np.float32)


def _layer_map(p: LayerPass, weights: np.ndarray, clip: bool, eigen_smooth: bool) -> np.ndarray:
    if not eigen_smooth:
        return _combine(p, weights, clip)
    weighted = weights * p.acts if weights.ndim == 4 else weights[:, :, None, None] * p.acts
    m = first_component(weighted, weighted.sum(axis=1))
    return np.maximum(m, 0) if clip else m


def _run(owner, model, x, target, layer, weights_fn, mode, clip, precheck=None, reshape=None,
         aug_smooth=False, eigen_smooth=False, **info):
    """The shared base: one pass, ``weights_fn(p)`` (N, C) or (N, C, h, w), the combined map,
    smoothed as :func:`_smoothed` says."""
    aug_smooth = _check_flag(aug_smooth, "aug_smooth", owner)
    eigen_smooth = _check_flag(eigen_smooth, "eigen_smooth", owner)
    p = _layer_pass(owner, model, x, target, layer, mode, precheck, reshape)
    return _result(p, _smoothed(p, target, weights_fn, mode, clip, reshape, aug_smooth, eigen_smooth, info), clip,
                   **info)


def _smoothed(p: LayerPass, target, weights_fn, mode, clip, reshape, aug_smooth, eigen_smooth, info):
    """The layer maps (N, h, w) of the pass ``p``: ``eigen_smooth`` replaces ``sum_c w_c A_c`` by
    the first principal component of ``w_c A_c``; ``aug_smooth`` averages the layer maps of the
    images flipped and scaled as pytorch-grad-cam does (:data:`AUGMENTATIONS`), each mapped
    back, all explaining the classes of the images themselves. Says what it did in ``info``."""
    layer_maps = _layer_map(p, weights_fn(p), clip, eigen_smooth)
    if eigen_smooth:
        info["eigen_smooth"] = True
    if aug_smooth:
        layer_maps = _augmented(p, target, weights_fn, mode, clip, eigen_smooth, reshape, layer_maps)
        info["aug_smooth"] = augmentation_info()
    return layer_maps


def _check_flag(value, param, owner):
    if not isinstance(value, (bool, np.bool_)):
        raise param_error(param, owner, "True or False", describe(value), TypeError)
    return bool(value)


def _augmented(p: LayerPass, target, weights_fn, mode, clip, eigen_smooth, reshape, plain):
    fixed = target if callable(target) or p.classes is None else p.classes

    def maps_of(xa):
        q = _pass(p.backend, xa, fixed, p.layer, mode, p.records, p.owner, reshape)
        return [_layer_map(q, weights_fn(q), clip, eigen_smooth)]
    return augmentation_mean(p.x, [plain], maps_of)[0]


# --------------------------------------------------------------------------- gradient variants
@renamed(relu="clip")
def grad_cam(model, x, target=None, *, layer: str | None = None, clip: bool = True,
             reshape=None, aug_smooth: bool = False, eigen_smooth: bool = False) -> AttributionMaps:
    """Grad-CAM (Selvaraju et al. 2017): ``w_c = mean_ij dS/dA_cij``,
    ``cam = ReLU(sum_c w_c A_c)``. Any layer with a spatial output; default the last one."""
    return _run("grad_cam", model, x, target, layer, _grad_cam_weights, "gradient", clip,
                reshape=reshape, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)


def _grad_cam_pp_weights(p: LayerPass) -> np.ndarray:
    g, a = p.grads.astype(np.float64), p.acts.astype(np.float64)
    g2 = g * g
    denom = 2 * g2 + a.sum(axis=(2, 3), keepdims=True) * g2 * g
    alpha = np.divide(g2, denom, out=np.zeros_like(g2), where=(g != 0) & (denom != 0))
    return (alpha * np.maximum(g, 0)).sum(axis=(2, 3)).astype(np.float32)


@renamed(relu="clip")
def grad_cam_pp(model, x, target=None, *, layer: str | None = None, clip: bool = True,
             reshape=None, aug_smooth: bool = False, eigen_smooth: bool = False) -> AttributionMaps:
    """Grad-CAM++ (Chattopadhay et al. 2018), with the usual exp(score) closed form:
    ``alpha_cij = g^2 / (2 g^2 + sum_ab A_cab g^3)``, ``w_c = sum_ij alpha_cij ReLU(g_cij)``,
    where ``g = dS/dA`` (alpha = 0 where g = 0)."""
    return _run("grad_cam_pp", model, x, target, layer, _grad_cam_pp_weights, "gradient", clip,
                reshape=reshape, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)


@renamed(relu="clip")
def layer_cam(model, x, target=None, *, layer: str | None = None, clip: bool = True,
             reshape=None, aug_smooth: bool = False, eigen_smooth: bool = False) -> AttributionMaps:
    """LayerCAM (Jiang et al. 2021): a weight per channel and position,
    ``cam = ReLU(sum_c ReLU(dS/dA_c) * A_c)``; works on early layers too."""
    return _run("layer_cam", model, x, target, layer, lambda p: np.maximum(p.grads, 0), "gradient", clip,
                reshape=reshape, aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)


def _grad_cam_weights(p: LayerPass) -> np.ndarray:
    return p.grads.mean(axis=(2, 3))


def guided_grad_cam(model, x, target=None, *, layer: str | None = None, reshape=None, aug_smooth: bool = False,
                    eigen_smooth: bool = False) -> AttributionMaps:
    """Guided Grad-CAM (Selvaraju et al. 2017): the guided-backprop gradient (N, C, H, W)
    times the upsampled Grad-CAM map; the map is ``max_c |.|``. Two passes: one standard
    (Grad-CAM), one with the guided ReLU rule.

    ``aug_smooth`` and ``eigen_smooth`` smooth the Grad-CAM factor only (as :func:`grad_cam`
    does; six more gradient passes for ``aug_smooth``), as pytorch-grad-cam's example combines a
    smoothed CAM with guided backprop; the guided gradient is of the images themselves.
    ``info["grad_cam"]`` holds the (smoothed) factor.
    """
    owner = "guided_grad_cam"
    aug_smooth = _check_flag(aug_smooth, "aug_smooth", owner)
    eigen_smooth = _check_flag(eigen_smooth, "eigen_smooth", owner)
    p = _layer_pass(owner, model, x, target, layer, "gradient", reshape=reshape)
    smoothing: dict = {}
    coarse = _result(p, _smoothed(p, target, _grad_cam_weights, "gradient", True, reshape, aug_smooth, eigen_smooth,
                                  smoothing), True)
    target = p.classes if p.classes is not None else target
    guided, _, _ = input_gradient(p.backend, p.x, target, owner, rule="guided")
    a = guided * coarse.maps[:, None]
    return AttributionMaps(reduce_channels(a, "max-abs"), p.x, owner, p.classes, attributions=a, outputs=p.outputs,
                           info={"layer": p.layer, "grad_cam": coarse.maps, **smoothing, **_choices(p)})


# --------------------------------------------------------------------------- gradient-free variants
@renamed(relu="clip")
def cam(model, x, target=None, *, layer: str | None = None, clip: bool = True,
             reshape=None, aug_smooth: bool = False, eigen_smooth: bool = False) -> AttributionMaps:
    """CAM (Zhou et al. 2016): ``cam = ReLU(sum_c W_kc A_c)`` with ``W`` the weights of the
    linear layer that follows global average pooling of ``layer``, k the explained class.

    Only for models of that form (``layer -> global average pool -> (flatten) -> linear``);
    any other head raises a ValueError that says what is in the way. One forward pass.
    Callable targets use the seeds as class weights: ``w_c = sum_k seeds_k W_kc``.
    """
    def weights(p: LayerPass) -> np.ndarray:
        linear = gap_linear_head(p.records, p.layer, "cam")
        params = p.backend.weights(linear)
        w = np.asarray(params.get("weight", params.get("kernel")), np.float32)
        k, c = p.outputs.shape[1], p.acts.shape[1]
        if w.shape == (c, k) and w.shape != (k, c):
            w = w.T
        if w.shape != (k, c):
            raise ValueError(f"cam: the weights of {linear!r} have shape {w.shape}, expected ({k}, {c}) "
                             f"for {c} channels and {k} outputs.")
        return p.seeds @ w

    return _run("cam", model, x, target, layer, weights, "activations", clip,
                precheck=lambda recs, name: gap_linear_head(recs, name, "cam"), reshape=reshape,
                aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)


def _score_cam_weights(p: LayerPass, output: str, batch_size: int) -> np.ndarray:
    """``w_c = f(x * H_c)``, H_c the upsampled activation map min-max scaled to [0, 1]."""
    n, c, _, _ = p.acts.shape
    size = p.x.shape[2:]
    # a constant map scales to 0 and masks the image to all zeros: judged before upsampling,
    # whose rounding could turn a constant map's last bits into a full-range mask
    live = np.argwhere(p.acts.max(axis=(2, 3)) > p.acts.min(axis=(2, 3)))
    weights = np.zeros((n, c), np.float64)
    if len(live) < n * c:  # one forward of a black image serves every constant map
        blank = p.backend.forward(np.zeros((1, *p.x.shape[1:]), np.float32))
        values = objective(np.repeat(blank, n, axis=0), p.seeds, output)
        weights[:] = values[:, None]
    for start in range(0, len(live), batch_size):
        ns, cs = live[start:start + batch_size].T
        masks = upsample(p.acts[ns, cs], size)
        low = masks.min(axis=(1, 2), keepdims=True)
        high = masks.max(axis=(1, 2), keepdims=True)
        masks = np.divide(masks - low, high - low, out=np.zeros_like(masks), where=high > low)
        out = p.backend.forward(p.x[ns] * masks[:, None])
        weights[ns, cs] = objective(out, p.seeds[ns], output)
    return weights.astype(np.float32)


@renamed(relu="clip")
def score_cam(model, x, target=None, *, layer: str | None = None, output: str = "score",
              batch_size: int | None = None, clip: bool = True, reshape=None, aug_smooth: bool = False,
              eigen_smooth: bool = False) -> AttributionMaps:
    """Score-CAM (Wang et al. 2020): ``w_c = f(x * H_c)``, where ``H_c`` is channel c upsampled to
    the input and scaled to [0, 1], f the explained class's score (the default, as every method
    explains the scores) or its softmax probability (``output="probability"``, as in the
    authors' code). Gradient-free.

    ``batch_size`` masked images per backend call (None: as occlusion chooses). A constant channel scales to 0 (never
    NaN); all such channels share one forward pass of a black image.
    """
    check_choice(output, OUTPUT_MODES, "output", "score_cam")
    if batch_size is not None:
        batch_size = check_int(batch_size, "batch_size", "score_cam", low=1)

    def weights(p: LayerPass) -> np.ndarray:
        return _score_cam_weights(p, output, batch_size or auto_batch_size(*p.x.shape[2:], backend=p.backend))

    return _run("score_cam", model, x, target, layer, weights,
                "activations", clip, reshape=reshape, output=output, aug_smooth=aug_smooth,
                eigen_smooth=eigen_smooth)


def _ones(p: LayerPass) -> np.ndarray:
    return np.ones(p.acts.shape[:2], np.float32)


@renamed(relu="clip")
def eigen_cam(model, x, target=None, *, layer: str | None = None, clip: bool = True,
              reshape=None, aug_smooth: bool = False, eigen_smooth: bool = False) -> AttributionMaps:
    """Eigen-CAM (Muhammad and Yeasin 2020): the projection of the centred activations on
    their first principal component, ``cam = (A - mean) v_1`` with ``v_1`` the top right
    singular vector of the (h w, C) activation matrix. Class-agnostic: ``target`` is
    ignored. The sign of ``v_1`` is chosen so that the map correlates positively with the
    channel-summed activation. One forward pass to the layer.

    ``aug_smooth`` as every CAM (:func:`grad_cam`): the mean of the maps of the six flipped and
    scaled images, mapped back (six more forward passes). ``eigen_smooth`` is taken for the
    shared signature and changes nothing: the map is the first principal component already
    (pytorch-grad-cam's ``EigenCAM`` ignores it too); ``info["eigen_smooth"]`` is always True.
    """
    _check_flag(eigen_smooth, "eigen_smooth", "eigen_cam")
    if target is not None:
        warnings.warn("eigen_cam is class-agnostic (the first principal component of the activations): the target "
                      f"{describe(target)} is ignored.", RuntimeWarning, stacklevel=2)
    return _run("eigen_cam", model, x, None, layer, _ones, "layer", clip, reshape=reshape, aug_smooth=aug_smooth,
                eigen_smooth=True)
