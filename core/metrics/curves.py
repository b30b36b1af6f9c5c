"""Deletion and insertion curves (Petsiuk et al. 2018, RISE): remove the most important
pixels first and watch the score fall, or put them back into a blank image and watch it rise.

A good map makes the deletion curve fall fast (low area under it) and the insertion curve
rise fast (high area). Both need only ``forward``, so they run on every backend.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._plugins import load
from ..backend import unchecked
from .._validate import check_choice, check_int, param_error
from .._imageops import fill_images
from .._targets import entry_images, OUTPUT_MODES, check_target, objective, output_seeds
from .._batching import auto_batch_size
from .._incremental_runs import IncrementalRuns, box_indices, check_incremental, crop, growing_boxes, small_enough
from .pointing import as_maps
from .registry import register_metric
from .result import MetricScores

__all__ = ["deletion", "insertion", "PerturbationCurve"]


@dataclass
class PerturbationCurve:
    """Scores along a deletion or insertion curve.

    ``fractions`` (S + 1,) of pixels removed (deletion) or inserted (insertion);
    ``scores`` (N, S + 1) the explained output at each step; ``auc`` (N,) the area under each
    curve by the trapezoid rule over ``fractions`` in [0, 1]; ``target`` (N,) the classes.
    """

    kind: str
    fractions: np.ndarray
    scores: np.ndarray
    auc: np.ndarray
    target: np.ndarray | None
    output: str
    info: dict = field(default_factory=dict)

    @property
    def mean_auc(self) -> float:
        """The mean area under the curves: lower is better for deletion, higher for insertion."""
        return float(self.auc.mean())

    def __repr__(self):
        return f"PerturbationCurve({self.kind}, {len(self.auc)} images, {len(self.fractions) - 1} steps, " \
               f"mean AUC {self.mean_auc:.4f})"


def _curve(kind, model, x, maps, target, steps, fill, output, batch_size, blur_sigma, incremental):
    backend = load(model)
    x = entry_images(backend, x, kind)
    backend = unchecked(backend)  # checked once here; the curve's passes need not
    m = as_maps(maps, kind, x.shape[2:])
    n, _, h, w = x.shape
    if len(m) != n:
        raise param_error("maps", kind, f"one map per image ({n})", f"{len(m)} maps")
    steps = check_int(steps, "steps", kind, low=1)
    check_choice(output, OUTPUT_MODES, "output", kind)
    incremental = check_incremental(incremental, kind)
    if target is None and getattr(maps, "target", None) is not None:
        target = maps.target
    target = check_target(target, n, kind)
    batch_size = auto_batch_size(h, w, backend=backend) if batch_size is None else check_int(batch_size, "batch_size", kind, low=1)
    blank = fill_images(x, fill, kind, sigma=blur_sigma)

    # rank of each pixel in decreasing importance (ties: raster order), and pixels changed per step
    order = np.argsort(-m.reshape(n, -1), axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None].repeat(n, 0), axis=1)
    rank = rank.reshape(n, 1, h, w)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * h * w).astype(np.int64)
    start, put = (x, blank) if kind == "deletion" else (blank, x)  # step k: the top counts[k] pixels of put on start

    runs = IncrementalRuns(backend, incremental, kind)
    outputs = _Outputs(steps + 1, n)
    clean_step = 0 if kind == "deletion" else steps  # the unperturbed images: scored first, the target checked
    clean = np.concatenate([backend.forward(x[i:i + batch_size]) for i in range(0, n, batch_size)])
    seeds, classes = output_seeds(target, clean, kind)
    routed = _steps_incrementally(runs, outputs, start, put, rank, order, counts, batch_size, clean_step)
    outputs.put(np.full(n, clean_step), np.arange(n), clean)
    routed[clean_step] = True
    pairs = [(k, i) for k in range(steps + 1) for i in range(n) if not routed[k, i]]
    runs.plain = len(pairs) + n
    for first in range(0, len(pairs), batch_size):
        ks, idx = np.array(pairs[first:first + batch_size]).T
        changed = rank[idx] < counts[ks, None, None, None]
        images = np.where(changed, put[idx], start[idx])
        outputs.put(ks, idx, backend.forward(images.astype(np.float32, copy=False)))
    outputs = outputs.values
    scores = np.stack([objective(o, seeds, output) for o in outputs], axis=1)
    auc = ((scores[:, 1:] + scores[:, :-1]) / 2 * np.diff(fractions)).sum(axis=1)
    return PerturbationCurve(kind, fractions, scores.astype(np.float32), auc, classes, output,
                             info=runs.info())


class _Outputs:
    """The (steps + 1, N, K) outputs of a curve, filled as they come (K from the first)."""

    def __init__(self, steps, n):
        self.shape, self.values = (steps, n), None

    def put(self, ks, idx, out):
        if self.values is None:
            self.values = np.empty(self.shape + out.shape[1:], np.float32)
        self.values[ks, idx] = out


def _steps_incrementally(runs, outputs, start, put, rank, order, counts, batch_size, clean_step):
    """Score the steps of each image whose changed pixels lie in a small box (the early ones)
    through one plan per image on its start image, with the box of the last such step as the
    window; returns ``routed`` (steps + 1, N) bool. ``clean_step`` (the unperturbed images, scored
    apart) is left out."""
    n, _, h, w = start.shape
    routed = np.zeros((len(counts), n), bool)
    if runs.mode is False:
        return routed
    for i in range(n):
        boxes = growing_boxes(order[i], w)[np.maximum(counts, 1) - 1]  # the box of step k's changed pixels
        sides = boxes[:, 2:] - boxes[:, :2]
        take = counts > 0
        take[clean_step] = False
        if runs.mode == "auto":
            small = np.array([small_enough(tuple(v), (h, w)) for v in sides])
            runs.note_too_large(np.count_nonzero(take & ~small))
            take &= small
        ks = np.flatnonzero(take)
        if not len(ks):
            continue
        window = tuple(int(v) for v in sides[ks].max(axis=0))
        plan = runs.plan(start[i:i + 1], window, len(ks))
        if plan is None:
            continue
        for first in range(0, len(ks), batch_size):
            chunk = ks[first:first + batch_size]
            r, c, corners = box_indices(boxes[chunk, :2], window, (h, w))
            changed = (rank[i, 0][r, c] < counts[chunk, None, None])[:, None]
            patches = np.where(changed, crop(put[i], r, c), crop(start[i], r, c))
            outputs.put(chunk, i, runs.scores(plan, patches, corners))
        routed[ks, i] = True
        del plan
    return routed


def deletion(model, x, maps, target=None, *, steps: int = 32, fill="mean", output: str = "score",
             batch_size: int | None = None, blur_sigma: float = 5.0, incremental="auto") -> PerturbationCurve:
    """Deletion curve: the explained score (or, with ``output="probability"`` as in RISE, its
    softmax probability) as the top ``k / steps`` of the pixels by ``maps`` are replaced by
    ``fill`` (all channels), k = 0..steps; lower AUC is better.

    ``maps`` (N, H, W) or an AttributionMaps (whose target is used when ``target`` is None;
    else the predicted class of the clean image). ``fill`` as in occlusion: "mean" (each
    image's mean colour), "zero", "blur", a number or per-channel values.

    The default differs from RISE's black on purpose: for images in [0, 1], deleting the
    object to black leaves its silhouette, which a shape classifier still reads (on the demo
    model Grad-CAM then scores no better than a random map); the mean colour removes the
    information instead. For inputs normalised to zero mean, "zero" is the dataset mean.

    ``incremental``: an early step's image differs from the image only inside the bounding
    box of the pixels removed so far. Where the backend offers an incremental plan
    (Nakandala et al., SIGMOD 2019, as :func:`~convscope.attribution.occlusion`), ``"auto"``
    runs the steps whose box has sides at most half the image's through one plan per image
    (the last such box as its window), recomputing only what the box reaches, with the same
    scores within float rounding, when an image has at least 32 such steps (many ``steps``,
    a compact map: fewer do not pay for building the plan); later steps take the plain
    forward. ``True`` routes every step (an error when the model has no incremental path),
    ``False`` none. ``curve.info`` says what was done and why (the keys of occlusion's info).
    """
    return _curve("deletion", model, x, maps, target, steps, fill, output, batch_size, blur_sigma, incremental)


def insertion(model, x, maps, target=None, *, steps: int = 32, fill="blur", output: str = "score",
              batch_size: int | None = None, blur_sigma: float = 5.0, incremental="auto") -> PerturbationCurve:
    """Insertion curve: start from ``fill`` (by default a Gaussian blur of the image, as in
    RISE) and put back the top ``k / steps`` of the pixels by ``maps``; higher AUC is better.
    Arguments as :func:`deletion`; the incremental plan runs on the filled image, from which
    an early step differs only inside the box of the pixels put back.
    """
    return _curve("insertion", model, x, maps, target, steps, fill, output, batch_size, blur_sigma, incremental)


def _auc_scores(kind, higher_is_better):
    fn = deletion if kind == "deletion" else insertion

    def scores(model, x, maps, target=None, **options):
        curve = fn(model, x, maps, target, **options)
        return MetricScores(kind, curve.auc.astype(np.float64), higher_is_better,
                            {"curve": curve, "target": curve.target, **options,
                             **curve.info})
    scores.__doc__ = f"Area under the {kind} curve ({'higher' if higher_is_better else 'lower'} is better)."
    return register_metric(kind, "faithfulness", higher_is_better=higher_is_better,
                           needs=("model", "x", "maps", "target"))(scores)


_deletion_scores = _auc_scores("deletion", False)
_insertion_scores = _auc_scores("insertion", True)
