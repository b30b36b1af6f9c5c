"""Concept activation vectors and TCAV (Kim et al. 2018, "Interpretability Beyond Feature
Attribution: Quantitative Testing with Concept Activation Vectors").

A CAV is the unit normal of a linear boundary between a concept's examples and random images
in one layer's activation space. TCAV asks how often the class score grows along it: the
fraction of the class's images whose directional derivative ``grad_h f_k(x) . v`` is positive.
A score means something only if it differs from the scores of CAVs learnt from random images:
a two-sided t-test over ``random_concepts`` repetitions. The concepts of the generated dataset
(``stripes``, ``dots``, ``red``, ...) are the ones Network Dissection counts unit by unit
(:mod:`convscope.dissection`): the same concepts, seen as a direction instead of a unit.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._batching import auto_batch_size
from .._plugins import load
from .._targets import entry_images, prepare, with_choices
from .._validate import check_choice, check_int, check_number, describe, param_error
from ..backend import OUTPUT, unchecked
from .._layers import default_layer, records, resolve_layer

__all__ = ["CAV", "TCAVResult", "learn_cav", "tcav", "concept_examples", "random_examples", "MIN_EXAMPLES"]

#: the fewest examples a concept (or a random set) may have: the CAV is tested on a third of them
MIN_EXAMPLES = 6


@dataclass
class CAV:
    """A concept activation vector: ``vector`` (unit norm, the layer's flattened activation
    shape), pointing from the random images towards the concept; ``accuracy`` of the linear
    classifier on the held-out third of the examples."""

    layer: str
    vector: np.ndarray
    accuracy: float
    intercept: float = 0.0
    concept: str = ""


@dataclass
class TCAVResult:
    """TCAV scores per explained class: ``score`` (mean over the concept CAVs), ``scores``
    (classes, R) one per CAV, ``random_scores`` (classes, R) of CAVs from random images,
    the two-sided ``p_value`` of Student's t-test between them and ``significant``
    (``p_value < alpha``); ``accuracies`` of the concept CAVs, the CAVs themselves in ``cavs``
    and ``random_cavs``."""

    classes: np.ndarray
    score: np.ndarray
    scores: np.ndarray
    random_scores: np.ndarray
    p_value: np.ndarray
    significant: np.ndarray
    layer: str
    concept: str
    alpha: float
    accuracies: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cavs: list = field(default_factory=list)
    random_cavs: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __repr__(self):
        rows = ", ".join(f"class {k}: {s:.2f} (p={p:.3g}{', significant' if g else ''})"
                         for k, s, p, g in zip(self.classes, self.score, self.p_value, self.significant))
        return f"TCAVResult({self.concept!r} at {self.layer!r}: {rows})"


def concept_examples(concept: str, n: int = 40, *, seed: int = 0, size: int = 64) -> np.ndarray:
    """``n`` images of the generated dataset (:func:`convscope.data.shapes`) that show ``concept``
    (one of :data:`convscope.data.CONCEPTS`: a shape, a colour or a texture)."""
    from ..data import CONCEPTS, shapes

    check_choice(concept, CONCEPTS, "concept", "concept_examples")
    n = check_int(n, "n", "concept_examples", low=1)
    pool = shapes(max(8 * n, 64), size=size, seed=seed)
    has = pool.mask(concept).any(axis=(1, 2))
    found = pool.images[has][:n]
    if len(found) < n:
        raise ValueError(f"concept_examples: only {len(found)} of {len(has)} generated images show {concept!r}; "
                         f"ask for fewer than n={n}.")
    return found.astype(np.float32)


def random_examples(n: int = 40, *, seed: int = 0, size: int = 64) -> np.ndarray:
    """``n`` random images of the generated dataset (any concept), a set per ``seed``."""
    from ..data import shapes

    n = check_int(n, "n", "random_examples", low=1)
    return shapes(n, size=size, seed=10_000 + seed).images.astype(np.float32)


def _flat_activations(backend, x, layer):
    out = []
    for start in range(0, len(x), auto_batch_size(*x.shape[2:], backend=backend)):
        out.append(backend.activations(x[start:start + auto_batch_size(*x.shape[2:], backend=backend)], [layer])[layer])
    a = np.concatenate(out)
    return a.reshape(len(a), -1).astype(np.float64)


def _logistic(features, labels, seed, l2=1e-3, steps=500):
    """L2-regularised logistic regression by gradient descent on standardised features;
    the normal mapped back to the raw activation space. The iterates ``w = Z^T a`` stay in the
    span of the samples, so the descent runs on the (n, n) Gram matrix: the same steps, at n^2
    instead of n D per step."""
    mu, sd = features.mean(axis=0), features.std(axis=0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    z = (features - mu) / sd
    gram = z @ z.T
    n = len(z)
    lr = 1.0 / (0.25 * np.linalg.eigvalsh(gram)[-1] / n + l2)
    a, b = np.zeros(n), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(gram @ a + b)))
        err = p - labels
        a -= lr * (err / n + l2 * a)
        b -= lr * err.mean()
    raw = (z.T @ a) / sd
    return raw, b - raw @ mu


def _fit_cav(pos, neg, layer, seed, concept=""):
    rng = np.random.default_rng(seed)
    feats = np.concatenate([pos, neg])
    labels = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    order = rng.permutation(len(feats))
    test = order[: len(feats) // 3]
    train = order[len(feats) // 3:]
    w, b = _logistic(feats[train], labels[train], seed)
    accuracy = float(((feats[test] @ w + b > 0) == labels[test].astype(bool)).mean())
    norm = np.linalg.norm(w)
    vector = w / norm if norm > 0 else w
    return CAV(layer, vector.astype(np.float32), accuracy, float(b / norm if norm > 0 else b), concept)


def _examples(images, param, owner):
    if isinstance(images, np.ndarray) and images.ndim == 4 and len(images) < MIN_EXAMPLES:
        raise param_error(param, owner, f"at least {MIN_EXAMPLES} example images (a third is held out)",
                          f"{len(images)} images")
    return images


def learn_cav(model, layer: str, concept_images, random_images, *, classifier: str = "linear",
              seed: int = 0) -> CAV:
    """Learn the CAV of a concept at ``layer``: a linear classifier (logistic regression,
    ``classifier="linear"``) separating the activations of ``concept_images`` from those of
    ``random_images``, trained on two thirds of them and scored on the rest (``accuracy``).
    Forward passes only; any backend."""
    owner = "learn_cav"
    check_choice(classifier, ("linear",), "classifier", owner)
    seed = check_int(seed, "seed", owner)
    concept_images = _examples(concept_images, "concept_images", owner)
    random_images = _examples(random_images, "random_images", owner)
    backend = load(model)
    pos = entry_images(backend, concept_images, owner, param="concept_images")
    neg = entry_images(backend, random_images, owner, param="random_images")
    for name, imgs in (("concept_images", pos), ("random_images", neg)):
        _examples(imgs, name, owner)
    if not isinstance(layer, str):
        raise param_error("layer", owner, "a layer name (str)", describe(layer), TypeError)
    layer = resolve_layer(backend, pos, layer, owner)[0]
    fast = unchecked(backend)
    return _fit_cav(_flat_activations(fast, pos, layer), _flat_activations(fast, neg, layer), layer, seed)


def _directional_derivatives(backend, x, layer, classes):
    """(classes, N, D): the gradient of each class score with respect to the layer, flattened."""
    out = []
    step = auto_batch_size(*x.shape[2:], backend=backend)
    for k in classes:
        parts = []
        for start in range(0, len(x), step):
            xb = x[start:start + step]
            seeds = lambda acts, k=k: {OUTPUT: np.eye(acts[OUTPUT].shape[1], dtype=np.float32)[np.full(len(xb), k)]}
            g = backend.gradient(xb, seeds, at=[OUTPUT], wrt=[layer])
            parts.append(g.grads[layer].reshape(len(xb), -1))
        out.append(np.concatenate(parts))
    return np.stack(out).astype(np.float64)


def student_t_test(a, b):
    """Two-sided p-value of Student's two-sample t-test (equal variances, as ``scipy.stats.ttest_ind``)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    na, nb = len(a), len(b)
    dof = na + nb - 2
    pooled = (((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum()) / dof
    diff = a.mean() - b.mean()
    if pooled == 0:
        return 1.0 if diff == 0 else 0.0
    t = diff / np.sqrt(pooled * (1 / na + 1 / nb))
    return float(_incomplete_beta(dof / 2, 0.5, dof / (dof + t * t)))


def _incomplete_beta(a, b, x):
    """The regularised incomplete beta I_x(a, b), by Lentz's continued fraction."""
    from math import exp, lgamma, log
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _incomplete_beta(b, a, 1 - x)
    front = exp(lgamma(a + b) - lgamma(a) - lgamma(b) + a * log(x) + b * log(1 - x)) / a
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return front * h


def tcav(model, x, target=None, *, concept, layer: str | None = None, random_concepts: int = 10,
         alpha: float = 0.05, n_examples: int = 40, seed: int = 0) -> TCAVResult:
    """TCAV (Kim et al. 2018): for each class in ``target`` (an int, a list of ints, or None: the
    classes predicted for ``x``), the fraction of the images ``x`` whose class score grows along
    the concept's CAV, ``TCAV = |{x : grad_h f_k(x) . v > 0}| / |x|``.

    ``concept`` is a name of the generated dataset's concepts (``n_examples`` images picked by
    :func:`concept_examples`) or an array of example images. ``random_concepts`` CAVs are learnt
    against as many sets of random images; the null: as many CAVs of other random sets against
    the same sets (each pair of sets independent). The scores are compared by a two-sided
    Student's t-test; ``significant`` where ``p < alpha``. ``layer`` None: the default CAM layer.
    What convscope chose (layer, classes) is in ``info["choices"]``. One gradient pass per class
    and batch.
    """
    owner = "tcav"
    backend, x = prepare(model, x, owner)
    random_concepts = check_int(random_concepts, "random_concepts", owner, low=2)
    n_examples = check_int(n_examples, "n_examples", owner, low=MIN_EXAMPLES)
    alpha = check_number(alpha, "alpha", owner, low=0.0, strict=True)
    if alpha >= 1:
        raise param_error("alpha", owner, "a number in (0, 1)", describe(alpha))
    seed = check_int(seed, "seed", owner)
    if target is not None:
        classes = np.atleast_1d(np.asarray(target))
        if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer) or len(classes) == 0:
            raise param_error("target", owner, "a class index, a list of them or None", describe(target))
    if isinstance(concept, str):
        from ..data import CONCEPTS
        check_choice(concept, CONCEPTS, "concept", owner)
    else:
        pos = _examples(entry_images(backend, concept, owner, param="concept"), "concept", owner)
    if layer is not None and not isinstance(layer, str):
        raise param_error("layer", owner, "a layer name (str) or None", describe(layer), TypeError)
    chosen = {}
    if layer is None:
        layer = default_layer(records(backend, x), owner)
        chosen["layer"] = f"{layer}: the default CAM layer"
    else:
        layer = resolve_layer(backend, x, layer, owner)[0]
    outputs = backend.forward(x)
    if target is None:
        classes = np.unique(outputs.argmax(axis=1))
        chosen["target"] = f"classes {classes.tolist()}: those predicted for x"
    elif (classes < 0).any() or (classes >= outputs.shape[1]).any():
        raise param_error("target", owner, f"a class index in [0, {outputs.shape[1] - 1}] or a list of them",
                          describe(target))
    name = concept if isinstance(concept, str) else "concept images"
    if isinstance(concept, str):
        pos = concept_examples(concept, n_examples, seed=seed, size=x.shape[2])
    pos_acts = _flat_activations(backend, pos, layer)
    r = random_concepts
    sets = [_flat_activations(backend, random_examples(len(pos), seed=seed * 7919 + i, size=x.shape[2]), layer)
            for i in range(2 * r)]
    cavs = [_fit_cav(pos_acts, sets[i], layer, seed + i, name) for i in range(r)]
    nulls = [_fit_cav(sets[r + i], sets[i], layer, seed + i, "random") for i in range(r)]
    grads = _directional_derivatives(backend, x, layer, classes)
    v = np.stack([c.vector for c in cavs + nulls]).astype(np.float64)  # (2R, D)
    frac = (np.einsum("knd,rd->knr", grads, v) > 0).mean(axis=1)       # (classes, 2R)
    scores, random_scores = frac[:, :r], frac[:, r:]
    p = np.array([student_t_test(s, q) for s, q in zip(scores, random_scores)])
    return TCAVResult(classes, scores.mean(axis=1), scores, random_scores, p, p < alpha, layer, name, alpha,
                      np.array([c.accuracy for c in cavs]), cavs, nulls,
                      with_choices({"choices": chosen} if chosen else {}, backend))
