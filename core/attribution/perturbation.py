"""Black-box perturbation: RISE, feature ablation, Shapley value sampling, KernelSHAP and LIME.

Forward passes only, so every method runs on every backend (an ONNX file with no framework).
Perturbed images are made a bounded number at a time (``batch_size`` or
``perturbations_per_eval``) and only their scores are kept: memory does not grow with the
number of masks, features or samples. The explained class is fixed on the clean images
(their pass comes first and checks ``target``).
"""
from __future__ import annotations

import numpy as np

from .._batching import auto_batch_size
from .._imageops import resize_matrix
from .._incremental_runs import IncrementalRuns, box_indices, check_incremental, crop, feature_boxes, small_enough
from .._targets import OUTPUT_MODES, check_target, objective, prepare, with_choices
from .._validate import check_choice, check_int, check_number, describe, param_error
from ._sampling import Scorer, check_baseline, feature_counts, per_call, resolve_features, spread
from ._surrogates import kernel_shap, lime
from .result import AttributionMaps

__all__ = ["rise", "feature_ablation", "shapley_sampling", "kernel_shap", "lime", "rise_masks"]


def rise_masks(count, size, *, cell=7, p=0.5, seed=0):
    """(count, H, W) float32 RISE masks (Petsiuk et al. 2018): a ``cell`` x ``cell`` grid of
    Bernoulli(p) cells, bilinearly upsampled to ``(cell + 1) * ceil(H / cell)`` (align-corners
    False, edges clamped) and cropped at a random shift in ``[0, ceil(H / cell))`` per axis.
    The grids and shifts come from ``numpy.random.default_rng(seed)``, drawn all at once
    (``count * cell^2`` bits), so mask i depends on (seed, i, count) only."""
    owner = "rise_masks"
    count = check_int(count, "count", owner, low=1)
    if not (isinstance(size, (tuple, list)) and len(size) == 2):
        raise param_error("size", owner, "(H, W), two positive ints", describe(size))
    size = tuple(check_int(v, "size", owner, low=1) for v in size)
    cell = check_int(cell, "cell", owner, low=1, high=min(size))
    p = _check_p(p, owner)
    return _mask_chunk(_mask_draws(count, size, cell, p, check_int(seed, "seed", owner, low=0)), size, cell, 0, count)


def _check_p(p, owner):
    p = check_number(p, "p", owner, low=0, strict=True)
    if p > 1:
        raise param_error("p", owner, "a probability in (0, 1]", str(p))
    return p


def _check_masks(masks, size, owner):
    if isinstance(masks, (int, np.integer)) and not isinstance(masks, bool):
        return check_int(masks, "masks", owner, low=1), None
    m = np.asarray(masks) if isinstance(masks, np.ndarray) else None
    if m is None or m.ndim != 3 or m.shape[1:] != tuple(size) or m.dtype.kind not in "fbiu":
        raise param_error("masks", owner, f"a number of masks or an (M, {size[0]}, {size[1]}) array of masks "
                          "in [0, 1] at the images' size", describe(masks))
    m = m.astype(np.float32)
    if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
        raise param_error("masks", owner, "values in [0, 1]", f"values in [{m.min()}, {m.max()}]")
    return len(m), m


def rise(model, x, target=None, *, masks=4000, cell: int = 7, p: float = 0.5, seed: int = 0,
         batch_size: int | None = None, output: str = "score") -> AttributionMaps:
    """RISE (Petsiuk et al. 2018): ``S(x) = 1 / (M E[m]) sum_i f(x * m_i) m_i``, the masks'
    average weighted by the explained output of the masked image.

    ``masks`` is the number M of random masks (:func:`rise_masks` with ``cell``, ``p``,
    ``seed``; E[m] = p) or an (M, H, W) array of your own in [0, 1] (E[m] is then their mean).
    ``output``: ``"score"`` (the project's default) or ``"probability"``, the softmax, which the
    paper uses. ``batch_size`` masked images per backend call (None: 2^18 pixels' worth);
    masks are made ``batch_size`` at a time, never all at once.
    """
    owner = "rise"
    backend, x = prepare(model, x, owner)
    n, _, h, w = x.shape
    count, given = _check_masks(masks, (h, w), owner)
    cell = check_int(cell, "cell", owner, low=1, high=min(h, w) if given is None else None)
    p = _check_p(p, owner)
    seed = check_int(seed, "seed", owner, low=0)
    check_choice(output, OUTPUT_MODES, "output", owner)
    size = max(n, auto_batch_size(h, w, backend=backend) if batch_size is None else check_int(batch_size, "batch_size", owner, low=1))
    target = check_target(target, n, owner)
    scorer = Scorer(backend, x, target, output, owner, size)
    per = max(1, size // n)  # masks per call
    total = np.zeros((n, h * w), np.float64)
    mean = float(given.mean()) if given is not None else p
    draws = None if given is not None else _mask_draws(count, (h, w), cell, p, seed)
    for start in range(0, count, per):
        stop = min(start + per, count)
        m = given[start:stop] if given is not None else _mask_chunk(draws, (h, w), cell, start, stop)
        images = (x[None] * m[:, None, None]).reshape(-1, *x.shape[1:])  # mask-major, then sample
        samples = np.tile(np.arange(n), stop - start)
        scores = scorer.score(images, samples).reshape(stop - start, n)
        total += scores.T @ m.reshape(stop - start, -1).astype(np.float64)
    maps = (total / (count * mean)).reshape(n, h, w)
    info = {"masks": count if given is None else "given", "cell": cell, "p": p, "seed": seed, "output": output,
            "batch_size": size}
    return AttributionMaps(maps.astype(np.float32), x, owner, scorer.classes, signed=output == "score",
                           outputs=scorer.outputs,
                           info=with_choices(info, backend))


def _mask_draws(count, size, cell, p, seed):
    """The random part of :func:`rise_masks`: grids (count, cell, cell) and shifts, all drawn at once (small)."""
    ch, cw = -(-size[0] // cell), -(-size[1] // cell)
    rng = np.random.default_rng(seed)
    grids = (rng.random((count, cell, cell)) < p).astype(np.float32)
    return grids, rng.integers(0, ch, count), rng.integers(0, cw, count)


def _mask_chunk(draws, size, cell, start, stop):
    """Masks start:stop of :func:`rise_masks`, upsampled and cropped from their draws."""
    (h, w), (grids, dy, dx) = size, draws
    ch, cw = -(-h // cell), -(-w // cell)
    ry, rx = resize_matrix(cell, (cell + 1) * ch), resize_matrix(cell, (cell + 1) * cw)
    rows, cols = ry[dy[start:stop, None] + np.arange(h)], rx[dx[start:stop, None] + np.arange(w)]
    return np.einsum("nHi,nij,nWj->nHW", rows, grids[start:stop], cols, optimize=True).astype(np.float32)


def _setup(owner, model, x, target, features, baseline, output):
    backend, x = prepare(model, x, owner)
    check_choice(output, OUTPUT_MODES, "output", owner)
    target = check_target(target, len(x), owner)
    base = check_baseline(baseline, x, owner)
    labels, used = resolve_features(features, x, owner)
    return backend, x, target, base, labels, used


def _result(owner, x, maps, scorer, backend, info):
    return AttributionMaps(maps, x, owner, scorer.classes, signed=True,
                           attributions=np.ascontiguousarray(np.broadcast_to(maps[:, None], x.shape)),
                           outputs=scorer.outputs, info=with_choices(info, backend))


def feature_ablation(model, x, target=None, *, features=None, baseline=0.0, output: str = "score",
                     perturbations_per_eval: int | None = None, incremental="auto") -> AttributionMaps:
    """Feature ablation: ``a_l = f(x) - f(x with feature l set to the baseline)`` for every
    feature l, given to each of its pixels (all channels), as Captum's ``FeatureAblation``.

    ``features``: None or ``"slic"`` (SLIC superpixels, 50 segments, scikit-image), an int
    (that many SLIC segments), or your integer label map, (H, W) or (N, H, W).
    ``baseline``: a number, one value per channel, or an array broadcasting to ``x``.
    ``perturbations_per_eval`` ablated copies of each image per backend call (None: 2^18
    pixels' worth of images a call).

    ``incremental``: an ablated image differs from ``x`` only inside its feature's bounding
    box, so where the backend offers an incremental plan (Nakandala et al., SIGMOD 2019, as
    :func:`~convscope.attribution.occlusion`) only what the box reaches is recomputed, layer
    by layer, with the same scores within float rounding. ``"auto"`` routes the features whose
    box has sides at most half the image's through one plan per image, at their common box
    size, when an image has at least 32 of them (a grid of windows, fine superpixels: fewer do
    not pay for building the plan), and the others through the plain forward; ``True``
    routes every feature, and raises when the model has no incremental path; ``False`` is
    the plain forward. ``info["incremental"]`` says whether a plan was used,
    ``info["incremental_why"]`` why evaluations took the plain path, ``info["plan"]`` the
    plan's own account.
    """
    owner = "feature_ablation"
    backend, x, target, base, labels, used = _setup(owner, model, x, target, features, baseline, output)
    incremental = check_incremental(incremental, owner)
    n, _, h, w = x.shape
    count = feature_counts(labels)
    size = per_call(perturbations_per_eval, n, owner, auto_batch_size(h, w, backend=backend))
    scorer = Scorer(backend, x, target, output, owner, size)
    pairs = np.argwhere(np.arange(count.max())[:, None] < count[None])  # (feature, sample), feature-major
    samples, feats = pairs[:, 1], pairs[:, 0]

    runs = IncrementalRuns(backend, incremental, owner)
    scores = np.empty(len(pairs), np.float64)
    routed = _ablate_incrementally(runs, scorer, x, base, labels, count, samples, feats, scores)
    rest = np.flatnonzero(~routed)
    runs.plain = len(rest)

    def keep_of(start, stop):
        return np.arange(count.max())[None] != feats[rest[start:stop], None]

    scores[rest] = scorer.rows(x, base, labels, samples[rest], keep_of)
    values = np.zeros((n, count.max()), np.float64)
    values[samples, feats] = scorer.clean[samples] - scores
    info = {**used, "baseline": _baseline_name(baseline), "output": output, "evaluated": len(pairs),
            **runs.info()}
    return _result(owner, x, spread(values, labels), scorer, backend, info)


def _ablate_incrementally(runs, scorer, x, base, labels, count, samples, feats, scores):
    """Score the (sample, feature) pairs whose feature box is small through one plan per image
    (boxes of the routed features' common size); returns which pairs were routed."""
    routed = np.zeros(len(samples), bool)
    _, _, h, w = x.shape
    for s in range(len(x)):
        if runs.mode is False:
            break
        boxes = feature_boxes(labels[s], int(count[s]))
        sides = boxes[:, 2:] - boxes[:, :2]
        take = (sides > 0).all(axis=1)
        if runs.mode == "auto":
            small = np.array([small_enough(tuple(v), (h, w)) for v in sides])
            runs.note_too_large(np.count_nonzero(take & ~small))
            take &= small
        if not take.any():
            continue
        window = tuple(int(v) for v in sides[take].max(axis=0))
        rows = np.flatnonzero(samples == s)
        rows = rows[take[feats[rows]]]
        plan = runs.plan(x[s:s + 1], window, len(rows))
        if plan is None:
            continue
        for start in range(0, len(rows), scorer.per_call):
            chunk = rows[start:start + scorer.per_call]
            f = feats[chunk]
            r, c, starts = box_indices(boxes[f, :2], window, (h, w))
            ablated = (labels[s][r, c] == f[:, None, None])[:, None]
            patches = np.where(ablated, crop(base[s], r, c), crop(x[s], r, c))
            out = runs.scores(plan, patches, starts)
            scorer.largest = max(scorer.largest, len(chunk))
            scores[chunk] = objective(out, scorer.seeds[samples[chunk]], scorer.output)
        routed[rows] = True
        del plan
    return routed


def _baseline_name(baseline):
    return float(baseline) if isinstance(baseline, (int, float, np.integer, np.floating)) else "given"


def shapley_sampling(model, x, target=None, *, features=None, baseline=0.0, samples: int = 25, seed: int = 0,
                     permutations=None, output: str = "score",
                     perturbations_per_eval: int | None = None) -> AttributionMaps:
    """Shapley value sampling (Castro et al. 2009; Strumbelj and Kononenko 2010), as Captum's
    ``ShapleyValueSampling``: for each of ``samples`` random orders of the features, start from
    the baseline, add the features of ``x`` one at a time and credit each with the change of
    the output; ``a_l`` is the mean credit over the orders.

    Orders are ``numpy.random.default_rng(seed).permutation(L)`` over L = the largest feature
    count of the batch (a feature an image lacks changes nothing), shared by the images;
    ``permutations`` (S, L) gives them instead (e.g. Captum's, from ``torch.randperm``).
    ``features``, ``baseline`` and ``perturbations_per_eval`` as in :func:`feature_ablation`.
    Costs ``1 + samples * L`` evaluations per image.
    """
    owner = "shapley_sampling"
    backend, x, target, base, labels, used = _setup(owner, model, x, target, features, baseline, output)
    n, _, h, w = x.shape
    top = int(feature_counts(labels).max())
    if permutations is None:
        samples = check_int(samples, "samples", owner, low=1)
        seed = check_int(seed, "seed", owner, low=0)
        rng = np.random.default_rng(seed)
        orders = np.stack([rng.permutation(top) for _ in range(samples)])
    else:
        orders = np.asarray(permutations)
        if (orders.ndim != 2 or orders.shape[1] != top or orders.dtype.kind not in "iu"
                or not (np.sort(orders, axis=1) == np.arange(top)).all()):
            raise param_error("permutations", owner, f"(S, {top}) integer rows, each a permutation of the "
                              f"{top} features", describe(permutations))
        samples, seed = len(orders), None
    size = per_call(perturbations_per_eval, n, owner, auto_batch_size(h, w, backend=backend))
    scorer = Scorer(backend, x, target, output, owner, size)
    rank = np.argsort(orders, axis=1)  # rank[k, l]: the step at which order k adds feature l
    rows = np.arange(samples * top * n)
    draw, rest = np.divmod(rows, top * n)
    step, sample = np.divmod(rest, n)

    def keep_of(start, stop):
        return rank[draw[start:stop]] <= step[start:stop, None]

    start_score = scorer.score(base, np.arange(n))  # every order starts from the baseline
    scores = scorer.rows(x, base, labels, sample, keep_of).reshape(samples, top, n)
    before = np.concatenate([np.broadcast_to(start_score, (samples, 1, n)), scores[:, :-1]], axis=1)
    credit = scores - before  # credit[k, t, s]: feature orders[k, t] added at step t
    values = np.zeros((n, top), np.float64)
    for k in range(samples):
        values[:, orders[k]] += credit[k].T
    info = {**used, "baseline": _baseline_name(baseline), "samples": samples, "seed": seed, "output": output}
    return _result(owner, x, spread(values / samples, labels), scorer, backend, info)
