"""Sanity checks for attribution maps (Adebayo et al. 2018; Sixt et al. 2020).

A map that explains the model must change when the model does. :func:`model_randomisation`
(the model-parameter randomisation test, MPRT) re-draws the weights of the layers, from the
top down, all of the layers above and including one (``order="cascading"``) or one layer at a
time (``"independent"``), and measures how similar the map of each randomised model stays to
the trained model's (:mod:`._similarity`: Spearman rank correlation, SSIM, HOG correlation).
:func:`random_logit` compares the map of the explained class with that of a random other
class (Sixt et al. 2020; Quantus's RandomLogit). For both, lower similarity is better.

The randomised models are copies (``Backend.with_weights``): the user's model is not touched.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from .._batching import auto_batch_size
from .._plugins import load
from .._targets import check_target, entry_images, index_per_sample, with_choices
from .._validate import check_choice, check_int, describe, param_error
from ..backend import unchecked
from ..render import Renderable
from ._similarity import HOG_MIN, SIMILARITIES, similarity as _similarity, similarity_to
from .registry import as_method, register_metric
from .pointing import as_maps
from .result import MetricScores

__all__ = ["model_randomisation", "random_logit", "RandomisationResult", "normal_like"]

ORDERS = ("cascading", "independent")
#: batch-norm statistics: measured on data, not learned; kept by the default randomisation
STATISTICS = ("running_mean", "running_var")


def normal_like(layer: str, weights: dict, rng) -> dict:
    """The default randomisation: each parameter tensor re-drawn from N(0, s^2) with ``s`` that
    tensor's own standard deviation (biases too); batch-norm statistics are kept."""
    pairs = weights.items() if hasattr(weights, "items") else [(None, weights)]
    if any(np.asarray(v).dtype.kind not in "fiu" for _, v in pairs):
        raise param_error("weights", "normal_like", "a mapping {parameter name: numeric array}",
                          describe(weights), TypeError)
    return {k: rng.normal(0.0, float(np.std(v)), np.shape(v)).astype(np.float32)
            for k, v in weights.items() if k not in STATISTICS}


@dataclass
class RandomisationResult(Renderable):
    """The model-parameter randomisation test.

    ``layers`` the layer randomised at each step (top first); ``similarity`` ``{measure: (steps,
    N)}`` between the trained model's map and each step's; ``maps`` (steps + 1, N, H, W), the
    trained model's first; ``images`` (N, C, H, W); ``target`` (N,) the explained classes.
    :meth:`to_rgb` draws the paper's figure: one row per image, one column per step.
    """

    order: str
    layers: list
    similarity: dict
    maps: np.ndarray
    images: np.ndarray
    target: np.ndarray
    info: dict = field(default_factory=dict)

    def final(self, measure: str = "spearman") -> np.ndarray:
        """(N,) similarity after the last step (every listed layer randomised, when cascading)."""
        check_choice(measure, list(self.similarity), "measure", "RandomisationResult.final")
        return self.similarity[measure][-1]

    def to_rgb(self) -> np.ndarray:
        from ..render import grid, heatmap, normalize, to_rgb
        from ..render.annotate import with_headers

        steps, n, h, w = self.maps.shape
        shown = normalize(np.abs(self.maps).reshape(steps * n, h, w), "minmax").reshape(steps, n, h, w)
        tiles = []
        for i in range(n):
            tiles.append(to_rgb(self.images[i]))
            tiles += [heatmap(shown[s, i]) for s in range(steps)]
        body = grid(tiles, ncols=steps + 1)
        heads = ["image", "trained", *self.layers] if self.order == "cascading" else \
            ["image", "trained", *(f"only {name}" for name in self.layers)]
        return with_headers(body, heads, cell=w, pad=2)

    def __repr__(self):
        means = ", ".join(f"{k} {np.nanmean(v[-1]):.3f}" for k, v in self.similarity.items())
        return f"RandomisationResult({self.order}, {len(self.layers)} layers, after the last: {means})"


def _measures(similarity, owner):
    names = [similarity] if isinstance(similarity, str) else similarity
    if not isinstance(names, (list, tuple)) or not names:
        raise param_error("similarity", owner, f"a name or a sequence of names of {list(SIMILARITIES)}",
                          describe(similarity), TypeError)
    for name in names:
        check_choice(name, list(SIMILARITIES), "similarity", owner)
    return list(dict.fromkeys(names))


def _flag(value, param, owner):
    if not isinstance(value, (bool, np.bool_)):
        raise param_error(param, owner, "True or False", describe(value), TypeError)
    return bool(value)


def _maps(method, backend, x, target, batch_size):
    """The method's maps and targets, ``batch_size`` images a call."""
    per_image = isinstance(target, np.ndarray)
    parts = [method(backend, x[i:i + batch_size], target[i:i + batch_size] if per_image else target)
             for i in range(0, len(x), batch_size)]
    maps = np.concatenate([np.asarray(getattr(p, "maps", p), np.float32) for p in parts])
    found = [getattr(p, "target", None) for p in parts]
    return maps, (None if any(t is None for t in found) else np.concatenate(found))


def _say_undefined(info, scores):
    """``info`` with why some scores are NaN, when some are."""
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        info = {**info, "undefined": f"images {bad.tolist()[:8]}: a constant map (a CAM clipped to zero "
                                     "everywhere, say) has no ranks or structure to compare"}
    return info


def _layers_with_weights(backend):
    found = []
    for r in backend.layers():
        try:
            own = backend.weights(r.name)
        except (ValueError, KeyError):
            continue  # a second call (name#2) or a functional layer: no parameters of its own
        if any(k not in STATISTICS and np.asarray(v).dtype.kind == "f" for k, v in own.items()):
            found.append(r.name)
    return found


def _check_layers(layers, known, owner):
    if layers is None:
        if not known:
            raise param_error("model", owner, "a model with layers that hold weights", "none")
        return known[::-1]
    names = [layers] if isinstance(layers, str) else layers
    if not isinstance(names, (list, tuple)) or not names:
        raise param_error("layers", owner, "a non-empty sequence of layer names", describe(layers), TypeError)
    from .._validate import check_name

    for name in names:
        check_name(name, known, "layers", owner, what="layer (with weights)")
    return list(dict.fromkeys(names))


def model_randomisation(model, x, method, target=None, *, order: str = "cascading", layers=None,
                        similarity=("spearman", "ssim", "hog"), absolute: bool = True, seed: int = 0,
                        randomize=None, batch_size: int | None = None) -> RandomisationResult:
    """Model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps").

    The weights of ``layers`` (default: every layer with weights, from the top down) are
    re-drawn, cumulatively (``order="cascading"``: step k randomises the first k layers) or one
    layer at a time with the others trained (``"independent"``), and each step's maps are
    compared with the trained model's by each ``similarity`` measure ("spearman", "ssim",
    "hog"; :mod:`convscope.metrics._similarity`). A method whose maps stay similar as the model
    loses what it learned does not explain the model. ``absolute`` (default, as the paper's
    Figure 2) compares absolute maps; each map is divided by its max |value| first.

    Parameters
    ----------
    method : attribution name, (name, options) or callable (model, x, target) -> maps
    target : None (the trained model's predicted class, kept for every step), int or (N,) ints
    randomize : callable(layer, weights, rng) -> weights, optional
        Draws a layer's new weights from its trained ones (``{parameter: array}``, as
        ``backend.weights`` gives them); default :func:`normal_like`. ``rng`` is a NumPy
        Generator seeded by ``seed`` and the layer's name, so both orders use the same draws.
    batch_size : images per method call (default: sized to the images)

    The paper's finding, reproduced on the demo model (docs/metrics.md): gradients and
    Grad-CAM decorrelate as layers are randomised, guided backprop stays close to the edges
    of the image.
    """
    owner = "model_randomisation"
    backend = load(model)
    x = entry_images(backend, x, owner)
    check_choice(order, ORDERS, "order", owner)
    measures = _measures(similarity, owner)
    absolute = _flag(absolute, "absolute", owner)
    seed = check_int(seed, "seed", owner, low=0)
    if randomize is not None and not callable(randomize):
        raise param_error("randomize", owner, "a callable (layer, weights, rng) -> weights", describe(randomize),
                          TypeError)
    randomize = normal_like if randomize is None else randomize
    n, _, h, w = x.shape
    if "hog" in measures and min(h, w) < HOG_MIN:
        raise param_error("similarity", owner, f"without 'hog' for images under {HOG_MIN} x {HOG_MIN}",
                          f"{measures} for {h} x {w} images")
    batch_size = auto_batch_size(h, w, backend=backend) if batch_size is None else check_int(batch_size, "batch_size", owner, low=1)
    target = None if target is None else check_target(target, n, owner)
    explain = as_method(method, owner)
    if not hasattr(backend, "with_weights"):
        raise param_error("model", owner, "a backend with the with_weights capability", type(backend).__name__,
                          TypeError)
    steps = _check_layers(layers, _layers_with_weights(backend), owner)

    chosen = target is None
    trained, classes = _maps(explain, unchecked(backend), x, target, batch_size)
    if classes is not None:
        target = classes
    elif target is None:  # a method that does not say what it explained: the trained model's prediction
        target = unchecked(backend).forward(x).argmax(axis=1)
    drawn, all_maps = {}, [trained]
    for name in steps:
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        drawn[name] = randomize(name, backend.weights(name), rng)
        replaced = dict(drawn) if order == "cascading" else {name: drawn[name]}
        all_maps.append(_maps(explain, unchecked(backend.with_weights(replaced)), x, target, batch_size)[0])
    all_maps = np.stack(all_maps)
    scores = {m: similarity_to(m, trained, all_maps[1:], absolute=absolute) for m in measures}
    info = {"order": order, "absolute": absolute, "seed": seed,
            "randomize": getattr(randomize, "__name__", repr(randomize))}
    if chosen and target is not None:
        info["choices"] = {"target": "the trained model's explained class, kept for every randomised model"}
    return RandomisationResult(order, steps, scores, all_maps, x, target, with_choices(info, backend))


def random_logit(model, x, method, target=None, *, maps=None, num_classes: int | None = None,
                 similarity: str = "ssim", absolute: bool = False, seed: int = 0) -> MetricScores:
    """Random-logit test (Sixt et al. 2020; Quantus's RandomLogit): the similarity of the map of
    the explained class to that of a random other class; lower is better (a map that does not
    change with the class explains the image, not the decision).

    The other class of image i is drawn as Quantus draws it, so both give the same classes for
    the same ``seed``: ``j = RandomState(seed).randint(0, K - 1, N)``, and class ``j`` among the
    ``K - 1`` classes other than the target in increasing order. ``num_classes`` K: default the
    model's number of outputs. ``similarity``: "ssim" (as Quantus), "spearman" or "hog"; maps
    are divided by their max |value| first (Quantus does so over the whole batch by default;
    here per map, so an image's score does not depend on the others). ``maps``: the explained
    class's maps when already made ((N, H, W) or an AttributionMaps, whose target is used when
    ``target`` is None), as Quantus's ``a_batch``; else ``method`` makes them.
    """
    owner = "random_logit"
    backend = load(model)
    x = entry_images(backend, x, owner)
    check_choice(similarity, list(SIMILARITIES), "similarity", owner)
    if similarity == "hog" and min(x.shape[2:]) < HOG_MIN:
        raise param_error("similarity", owner, f"not 'hog' for images under {HOG_MIN} x {HOG_MIN}",
                          f"'hog' for {x.shape[2]} x {x.shape[3]} images")
    absolute = _flag(absolute, "absolute", owner)
    seed = check_int(seed, "seed", owner, low=0)
    n = len(x)
    run = unchecked(backend)
    explain = as_method(method, owner)
    if num_classes is not None:
        num_classes = check_int(num_classes, "num_classes", owner, low=2)
    if maps is not None:
        if target is None and getattr(maps, "target", None) is not None:
            target = maps.target
        maps = as_maps(maps, owner, x.shape[2:])
        if len(maps) != n:
            raise param_error("maps", owner, f"one map per image ({n})", f"{len(maps)} maps")
        if target is None:
            raise param_error("target", owner, "the maps' classes when maps are given", "None")
    target = None if target is None else check_target(target, n, owner)
    if callable(target):
        raise param_error("target", owner, "None, an int or one int per image (classes to swap)", "a callable",
                          TypeError)
    k = run.forward(x[:1]).shape[1]  # the arguments are checked; the number of outputs needs a pass
    if num_classes is not None and num_classes > k:
        raise param_error("num_classes", owner, f"<= {k}, the model's outputs", str(num_classes))
    k = num_classes or k
    if k < 2:
        raise param_error("model", owner, "a model with two or more classes", f"{k} output")
    if target is not None:
        target = index_per_sample(target, n, k, owner)
    info = {}
    if maps is None:
        first = explain(run, x, target)
        maps = np.asarray(getattr(first, "maps", first), np.float32)
    if target is None:  # the maps were made here
        found = getattr(first, "target", None)
        target = np.asarray(found if found is not None else run.forward(x).argmax(axis=1), np.int64)
        info["choices"] = {"target": "the predicted class of each image"}
    j = np.random.RandomState(seed).randint(0, k - 1, n)
    other = j + (j >= target)
    second = explain(run, x, other)
    second = np.asarray(getattr(second, "maps", second), np.float32)
    scores = _similarity(similarity, maps, second, absolute=absolute)
    info = {**info, "target": target, "other": other, "similarity": similarity, "absolute": absolute, "seed": seed,
            "num_classes": k}
    return MetricScores("random_logit", scores, False, with_choices(_say_undefined(info, scores), backend))


register_metric("random_logit", "randomisation", higher_is_better=False,
                needs=("model", "x", "method", "target"))(random_logit)


@register_metric("model_randomisation", "randomisation", higher_is_better=False,
                 needs=("model", "x", "method", "target"))
def _model_randomisation_scores(model, x, method, target=None, *, similarity: str = "spearman", **options):
    """Model-parameter randomisation: the similarity after the last cascading step (lower is better)."""
    result = model_randomisation(model, x, method, target, similarity=similarity, **options)
    measure = _measures(similarity, "model_randomisation")[0]
    scores = result.final(measure).astype(np.float64)
    return MetricScores("model_randomisation", scores, False, _say_undefined(
        {**result.info, "similarity": measure, "layers": result.layers, "result": result}, scores))
