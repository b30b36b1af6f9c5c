"""What :func:`convscope.metrics.compare` runs on each batch, and what it accumulates.

:class:`CompareStep` computes each model x method's maps once per batch and every metric on
them; :class:`Tally` keeps the per-image scores per cell, the first error of each cell, the
largest map difference against the reference model and the summed curves. Both are picklable
and mergeable, so the streaming engine (:func:`convscope._scan.scan`) runs them in one process
or as Dask shards.
"""
from __future__ import annotations

import numpy as np

from .._plugins import load
from .._scan import Summary
from .._validate import param_error
from .registry import evaluate_metric

__all__ = ["CompareStep", "Tally", "batch_masks", "CELL_ERRORS"]

OWNER = "compare"
#: What a cell reports instead of failing the table: a method that does not apply to a model
#: (CAM without a spatial layer), a metric that cannot score these maps, a missing extra.
#: Anything else (a bug) propagates.
CELL_ERRORS = (ValueError, TypeError, NotImplementedError, RuntimeError, FloatingPointError, ImportError)


def batch_masks(batch):
    """The (N, H, W) bool masks a batch carries, or None; wrong shapes raise."""
    masks = batch.labels
    if masks is None or np.ndim(masks) != 3:
        return None
    masks = np.asarray(masks)
    expected = (len(batch), *batch.images.shape[2:])
    if masks.shape != expected or masks.dtype != bool:
        raise param_error("masks", OWNER, f"boolean masks of shape {expected} for the batch at image {batch.start}",
                          f"{masks.dtype} shape {masks.shape}")
    return masks


# --------------------------------------------------------------------------- the scan
class CompareStep:
    """One batch: each model x method's maps once, then every metric on them (picklable:
    the backends are loaded where the step runs)."""

    def __init__(self, models, methods, specs, options, target, reference):
        self.models, self.methods, self.specs = models, methods, specs
        self.options, self.target, self.reference = options, target, reference
        self._backends = None

    def __getstate__(self):
        return {**self.__dict__, "_backends": None}

    def backends(self):
        if self._backends is None:
            self._backends = {name: load(m) for name, m in self.models.items()}
        return self._backends

    def __call__(self, batch):
        x, masks = batch.images, batch_masks(batch)
        target = self.target
        if isinstance(target, np.ndarray):
            target = target[batch.indices]
        out = {"index": batch.indices, "scores": {}, "errors": {}, "diff": {}, "curves": {}, "choices": {}}
        maps_of = {}
        for model, backend in self.backends().items():
            for method, fn in self.methods.items():
                maps, failure = None, None
                if any(s.needs & {"maps", "method"} for s in self.specs):
                    try:
                        maps = fn(backend, x, target)
                    except CELL_ERRORS as err:
                        failure = f"{method} on {model}: {type(err).__name__}: {err}"
                    else:
                        _note_choices(out, method, getattr(maps, "info", None))
                maps_of[model, method] = maps
                for spec in self.specs:
                    self._score(out, (model, method, spec.name), spec, backend, x, maps, failure, target, masks, fn)
        if self.reference is not None:
            for (model, method), maps in maps_of.items():
                ref = maps_of.get((self.reference, method))
                if maps is not None and ref is not None and np.shape(ref.maps) == np.shape(maps.maps):
                    out["diff"][model, method] = float(np.max(np.abs(np.asarray(maps.maps, np.float64) - ref.maps)))
        return out

    def _score(self, out, cell, spec, backend, x, maps, failure, target, masks, fn):
        if failure is not None and spec.needs & {"maps", "method"}:
            out["errors"][cell] = failure
            return
        if "masks" in spec.needs and masks is None:
            out["errors"][cell] = "skipped: no masks given (this metric needs ground-truth masks)"
            return
        try:
            result = evaluate_metric(spec.name, model=backend, x=x, maps=maps, target=target, masks=masks, method=fn,
                              options=self.options.get(spec.name))
            scores = np.asarray(result.scores, np.float64)
            if scores.shape != (len(x),):
                raise ValueError(f"the metric returned scores of shape {scores.shape} for {len(x)} images")
        except CELL_ERRORS as err:
            out["errors"][cell] = f"{type(err).__name__}: {err}"
            return
        out["scores"][cell] = scores
        _note_choices(out, spec.name, result.info)
        curve = result.info.get("curve")
        if curve is not None and hasattr(curve, "fractions") and hasattr(curve, "scores"):
            out["curves"][cell] = (np.asarray(curve.fractions, np.float64),
                                   np.asarray(curve.scores, np.float64).sum(axis=0), len(x))


def _note_choices(out, name, info):
    """What a method or metric chose for the user (``info["choices"]``), kept by its name."""
    chosen = (info or {}).get("choices") if isinstance(info, dict) else None
    if chosen:
        out["choices"].setdefault(name, {}).update({str(k): str(v) for k, v in chosen.items()})


class Tally(Summary):
    """Per-image scores per cell (with their image indices), the first error per cell, the
    largest map difference per model x method, summed curves, and what the methods and metrics
    chose for the user (by name)."""

    def __init__(self):
        self.scores, self.errors, self.diff, self.curves, self.choices = {}, {}, {}, {}, {}

    def update(self, result):
        for cell, s in result["scores"].items():
            self.scores.setdefault(cell, []).append((result["index"], s))
        for cell, e in result["errors"].items():
            self.errors.setdefault(cell, e)
        for key, d in result["diff"].items():
            self.diff[key] = max(self.diff.get(key, 0.0), d)
        for cell, (fractions, total, count) in result["curves"].items():
            if cell in self.curves and len(self.curves[cell][0]) == len(fractions):
                f, t, c = self.curves[cell]
                self.curves[cell] = (f, t + total, c + count)
            else:
                self.curves.setdefault(cell, (fractions, total, count))
        for name, chosen in result.get("choices", {}).items():
            self.choices.setdefault(name, {}).update(chosen)
        return self

    def merge(self, other):
        for cell, parts in other.scores.items():
            self.scores.setdefault(cell, []).extend(parts)
        self.update({"index": None, "scores": {}, "errors": other.errors, "diff": other.diff,
                     "curves": other.curves, "choices": other.choices})
        return self
