"""Compare attribution methods (and models) on every metric in one table.

:func:`compare` streams a dataset through each model x method once per batch: the maps are
computed once and shared by every metric, each metric's per-image scores are accumulated,
and the table reports their mean with a bootstrap confidence interval over images
(:func:`~convscope.metrics.result.interval`). The walk is the streaming engine's
(:func:`convscope._scan.scan`), so memory is bounded by the batch, and with ``client=`` the
batches are Dask shards run on the workers and merged in order.

Models may be one network in several frameworks (the torch module, its ONNX export and its
Keras port): the ``max_map_difference`` column then says how far each model's maps lie from
the reference model's.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import numpy as np

from .._plugins import load
from .._scan import scan
from .._targets import check_target, entry_images
from .._validate import check_number, describe, param_error
from ..data.datasets import ArrayDataset, Batch, ConceptImages, as_dataset
from .comparison import Comparison
from ._compare_scan import CompareStep, Tally
from .registry import FAMILIES, METRICS, as_method, get_metric

__all__ = ["compare", "Comparison"]

OWNER = "compare"


# --------------------------------------------------------------------------- arguments
def _model_name(model, i: int) -> str:
    if isinstance(model, (str, os.PathLike)):
        return Path(model).name
    name = getattr(model, "name", None)
    return name if isinstance(name, str) and name else f"{type(model).__name__}"


def _unique(names):
    seen, out = {}, []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def named_models(models) -> dict:
    """``models`` (one model, a list, or a dict name -> model) as a dict name -> model."""
    if isinstance(models, dict):
        if not models or not all(isinstance(k, str) for k in models):
            raise param_error("models", OWNER, "a non-empty dict of model names (str) to models", describe(models))
        return dict(models)
    if isinstance(models, (list, tuple)):
        if not models:
            raise param_error("models", OWNER, "at least one model", "an empty list")
        return dict(zip(_unique([_model_name(m, i) for i, m in enumerate(models)]), models))
    return {_model_name(models, 0): models}


def _method_name(method) -> str:
    if isinstance(method, str):
        return method
    if isinstance(method, tuple) and len(method) == 2 and isinstance(method[1], dict):
        opts = ", ".join(f"{k}={v}" for k, v in method[1].items())
        return f"{method[0]}({opts})" if opts else str(method[0])
    return getattr(method, "__name__", type(method).__name__)


def named_methods(methods) -> dict:
    """``methods`` (a name, (name, options), a callable, a list of these, or a dict name ->
    any of these) as a dict name -> (model, x, target) -> AttributionMaps."""
    if isinstance(methods, dict):
        items = list(methods.items())
    else:
        if isinstance(methods, (str, tuple)) or callable(methods):
            methods = [methods]
        if not isinstance(methods, list) or not methods:
            raise param_error("methods", OWNER, "attribution method names, (name, options) pairs or a dict "
                              "name -> method", describe(methods), TypeError)
        items = list(zip(_unique([_method_name(m) for m in methods]), methods))
    if not items:
        raise param_error("methods", OWNER, "at least one method", "none")
    return {str(name): as_method(m, OWNER, "methods") for name, m in items}


def metric_specs(metrics) -> list:
    """The registered metrics asked for: names, ``"all"``, or family names."""
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, (list, tuple)) or not metrics:
        raise param_error("metrics", OWNER, "metric names, 'all' or family names", describe(metrics), TypeError)
    specs = []
    for name in metrics:
        if name == "all":
            chosen = list(METRICS.values())
        elif name in FAMILIES and name not in METRICS:
            chosen = [s for s in METRICS.values() if s.family == name]
            if not chosen:
                raise param_error("metrics", OWNER, f"a family with registered metrics ({sorted(_families())})",
                                  repr(name))
        else:
            if isinstance(name, str) and name not in METRICS:
                close = difflib.get_close_matches(name, list(METRICS) + list(FAMILIES) + ["all"], n=3, cutoff=0.5)
                hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
                raise param_error("metrics", OWNER, f"a metric name ({', '.join(sorted(METRICS))}), 'all' or a "
                                  f"family ({', '.join(FAMILIES)})", f"{name!r}{hint}")
            chosen = [get_metric(name, OWNER)]
        specs += [s for s in chosen if s not in specs]
    return specs


def _families():
    return {s.family for s in METRICS.values()}


def metric_options(options, specs) -> dict:
    """``options``: a dict metric name -> dict of that metric's keyword options."""
    if options is None:
        return {}
    names = [s.name for s in specs]
    if not isinstance(options, dict):
        raise param_error("options", OWNER, "a dict metric name -> {option: value}", describe(options), TypeError)
    for name, opts in options.items():
        if name not in names:
            close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise param_error("options", OWNER, f"keyed by the metrics compared ({', '.join(names)})",
                              f"{name!r}{hint}")
        if not isinstance(opts, dict):
            raise param_error("options", OWNER, "a dict of keyword options per metric", f"{describe(opts)} for "
                              f"{name!r}", TypeError)
    return {k: dict(v) for k, v in options.items()}


# --------------------------------------------------------------------------- data with masks
class _ConceptsWithMasks(ConceptImages):
    """A concept dataset whose batches carry the object masks (in the ``labels`` slot)."""

    def _batches(self, batch_size, start, stop):
        stop = self.n if stop is None else min(stop, self.n)
        for i in range(start, stop, batch_size):
            b = self.concepts.batch(self.begin + i, self.begin + min(i + batch_size, stop))
            yield Batch(b.images, b.object_masks, self.begin + i)

    def subset(self, start, stop):
        return _ConceptsWithMasks(self.concepts, self.begin + start, self.begin + stop)


def _check_masks(masks, n, size):
    masks = np.asarray(masks) if not isinstance(masks, np.ndarray) else masks
    if masks.dtype != bool or masks.ndim != 3:
        raise param_error("masks", OWNER, "a boolean (N, H, W) array (True on the object)",
                          f"{masks.dtype} shape {masks.shape}")
    if masks.shape != (n, *size):
        raise param_error("masks", OWNER, f"one mask per image of the images' size {(n, *size)}",
                          f"shape {masks.shape}")
    return masks


def masked_dataset(data, masks):
    """A dataset whose batches carry masks (N, H, W) in their ``labels`` slot, or no masks;
    and a note on where the masks came from."""
    from ..data.shapes import ConceptDataset

    if masks is None and isinstance(data, tuple) and len(data) == 2 and np.ndim(data[0]) == 4 \
            and np.ndim(data[1]) == 3:
        data, masks = data  # one (x, masks) pair
    if isinstance(data, ConceptDataset):
        if masks is None:
            return _ConceptsWithMasks(data), "masks: the dataset's object_masks"
        return ArrayDataset(data.images, _check_masks(masks, data.n, (data.size, data.size)), owner=OWNER), None
    if masks is not None:
        if isinstance(data, tuple) and len(data) == 2 and np.ndim(data[0]) == 4:
            data = data[0]
        if not (isinstance(data, np.ndarray) or hasattr(data, "__array__")) or np.ndim(data) != 4:
            raise param_error("masks", OWNER, "None when data is not an array (give an iterable of (x, masks) "
                              "pairs instead)", describe(masks))
        return ArrayDataset(data, _check_masks(masks, len(data), np.shape(data)[2:]), owner=OWNER), None
    if isinstance(data, tuple) and len(data) == 2 and np.ndim(data[0]) == 4 and np.ndim(data[1]) == 1:
        data = data[0]  # labels are not masks
    return as_dataset(data, owner=OWNER), None


# --------------------------------------------------------------------------- compare
def _framework(backend) -> str:
    inner = getattr(backend, "inner", backend)
    module = type(inner).__module__
    for part, name in (("torch", "torch"), ("onnx", "onnx"), ("tensorflow", "keras")):
        if f"backends.{part}" in module:
            return name
    return module.split(".")[0]


def _choose_reference(reference, names, backends, first, info):
    """The reference model and the models comparable with it (same output count; every model
    already takes the data's image size, checked at entry)."""
    outputs = {n: int(unchecked_forward(b, first).shape[1]) for n, b in backends.items()}
    if reference is not None:
        info["reference"] = f"{reference} (given)"
        return reference, [n for n in names if outputs[n] == outputs[reference]]
    if len(names) < 2:
        info["reference"] = "none: one model only (max_map_difference left empty)"
        return None, []
    if len(set(outputs.values())) == 1:
        info["reference"] = (f"{names[0]} (chosen: the first model; every model has {outputs[names[0]]} outputs "
                             "and takes the images at their size)")
        return names[0], list(names)
    info["reference"] = ("none: the models differ in output count "
                         f"({', '.join(f'{n}: {outputs[n]}' for n in names)}); max_map_difference left empty")
    return None, []


def _check_target(target, n):
    if callable(target) and not isinstance(target, (int, np.integer)):
        raise param_error("target", OWNER, "None, an int or one int per image", "a callable", TypeError)
    if n is None and target is not None and not isinstance(target, (int, np.integer)):
        raise param_error("target", OWNER, "None or an int when data is streamed from an iterable", describe(target))
    return check_target(target, n or 0, OWNER)


def unchecked_forward(backend, x):
    from ..backend import unchecked

    return unchecked(backend).forward(x)


def compare(models, methods, metrics, data, *, target=None, masks=None, batch_size=None, client=None,
            level: float = 0.95, reference=None, progress=None, options=None) -> Comparison:
    """Score every model x method on every metric: a tidy table with confidence intervals.

    Parameters
    ----------
    models : a model, a list of models, or a dict name -> model
        Anything :func:`convscope.load` takes (modules, Keras models, ``.onnx``/``.keras``
        paths, backends); they may be of different frameworks.
    methods : names of attribution functions, ``(name, options)`` pairs, callables
        ``(model, x, target) -> AttributionMaps``, or a dict name -> any of these.
    metrics : registered metric names (:data:`~convscope.metrics.METRICS`), ``"all"`` or a family name.
    data : (N, C, H, W) array (or one ``(x, masks)`` pair), ``convscope.data.shapes(n)`` (its
        object masks are used when ``masks`` is None), a folder, or an iterable of batches
        (arrays or ``(x, masks)`` pairs), streamed batch by batch.
    target : None (each model's predicted class), an int, or one int per image.
    masks : (N, H, W) bool ground truth for an array ``data``; metrics that need masks are
        reported as skipped (per cell) when there are none.
    batch_size : images per batch (None: :func:`~convscope._batching.auto_batch_size`).
    client : a ``dask.distributed.Client``: batches are shards run on its workers.
    level : the confidence level of the bootstrap interval over images.
    reference : the model name whose maps the others are compared with
        (``max_map_difference``); None: the first model when all have the same output count
        and input size, else the column is left empty (``info["reference"]`` says which).
    options : a dict metric name -> {option: value} for that metric.

    Invalid arguments (an unknown metric, with the close matches; masks of the wrong shape;
    an unknown method) raise before any model pass. A method that does not apply to a model
    (CAM on a model without a spatial layer) or a metric that fails on its maps is reported in
    that cell's ``error`` while the other cells are computed.
    """
    specs = metric_specs(metrics)
    opts = metric_options(options, specs)
    named = named_methods(methods)
    models = named_models(models)
    level = check_number(level, "level", OWNER, low=0, strict=True)
    if level >= 1:
        raise param_error("level", OWNER, "in (0, 1)", str(level))
    dataset, note = masked_dataset(data, masks)
    target = _check_target(target, dataset.n)
    names = list(models)
    if reference is not None and reference not in names:
        close = difflib.get_close_matches(str(reference), names, n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise param_error("reference", OWNER, f"one of the model names {names}", f"{reference!r}{hint}")
    first = dataset.peek(OWNER)
    backends = {name: load(m) for name, m in models.items()}
    for backend in backends.values():
        entry_images(backend, first, OWNER, param="data")
    info = {"models": {n_: _framework(b) for n_, b in backends.items()}, "level": level}
    if note:
        info["masks"] = note
    ref, comparable = _choose_reference(reference, names, backends, first, info)
    shipped = models if client is not None else backends
    step = CompareStep(shipped, named, specs, opts, target, ref)
    tally = scan(dataset, step, Tally, batch_size=batch_size, client=client, progress=progress, owner=OWNER)
    if target is None:
        info["target"] = "each model's predicted class (target=None)"
    if tally.choices:
        info["choices"] = tally.choices
    return Comparison.from_tally(tally, names, info["models"], list(named), specs, level, comparable, info)
