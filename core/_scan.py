"""Streaming scans with mergeable summaries, in one process or on Dask distributed.

A scan reads a dataset batch by batch, turns each batch into a small result with a
``step`` (for example a model's activations reduced to per-channel maxima), and folds the
results into a :class:`Summary`. A summary holds a bounded amount of state (top-k heaps,
counts, histograms), so memory does not grow with the dataset, and two summaries of
disjoint parts merge into the summary of the union::

    s = make_summary(); s.update(step(batch1)); s.update(step(batch2))
    == make_summary().update(step(batch1)) merged with make_summary().update(step(batch2))

With ``client=`` (a ``dask.distributed.Client``) the dataset is cut into one contiguous
shard per worker, shard boundaries on multiples of ``batch_size`` so every batch holds
the same images as in the one-process run; each worker scans its shard and the summaries
are merged in shard order. Summaries that order their entries totally (value, then
global image index) give results identical to the one-process run.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from ._batching import batch_size_for
from ._progress import progress_bar
from ._validate import param_error
from .data.datasets import Batch, Dataset, as_dataset, empty_error

__all__ = ["Summary", "TopK", "Collect", "Sum", "ActivationStep", "scan", "shard_ranges"]


class Summary:
    """What a scan accumulates: ``update(result)`` folds in one batch's result, ``merge(other)``
    folds in another summary of disjoint data (in place; both return ``self``)."""

    def update(self, result) -> "Summary":  # pragma: no cover - interface
        raise NotImplementedError

    def merge(self, other: "Summary") -> "Summary":  # pragma: no cover - interface
        raise NotImplementedError


class TopK(Summary):
    """The ``k`` largest scores per channel, each with a global key and a payload.

    Entries are ordered by value (descending), ties by key (ascending): a total order, so
    the kept entries do not depend on how the data was batched or sharded. ``values`` and
    ``keys`` are (C, m) with m <= k; ``payload`` maps names to (C, m, ...) arrays.

    :meth:`update` takes ``(values, keys, payload)``: values (N, C), keys (N,) (global
    image indices), and payload either a dict of (N, C, ...) arrays or a callable
    ``payload(rows, channels) -> {name: (len(rows), ...)}`` that builds the payload of the
    chosen (image row, channel) pairs only, so expensive payloads (image crops) are made
    only for entries that enter the top k.
    """

    def __init__(self, k: int, channels: int):
        self.k, self.channels = int(k), int(channels)
        self.values = np.zeros((self.channels, 0), np.float32)
        self.keys = np.zeros((self.channels, 0), np.int64)
        self.payload: dict = {}
        self.seen = 0

    def update(self, result) -> "TopK":
        values, keys, payload = result
        values = np.asarray(values)
        keys = np.broadcast_to(np.asarray(keys, np.int64)[None, :], (self.channels, len(values)))
        if callable(payload):
            fetch = lambda cols, ch: payload(cols, ch)  # noqa: E731
        else:
            fetch = lambda cols, ch: {name: a[cols, ch] for name, a in payload.items()}  # noqa: E731
        self.seen += len(values)
        return self._combine(values.T, keys, fetch)

    def merge(self, other: "TopK") -> "TopK":
        if other.channels != self.channels:
            raise ValueError(f"Cannot merge a TopK of {other.channels} channels into one of {self.channels}.")
        self.seen += other.seen
        payload = other.payload
        return self._combine(other.values, other.keys, lambda cols, ch: {n: a[ch, cols] for n, a in payload.items()})

    def _combine(self, values_b, keys_b, fetch_b) -> "TopK":
        m = self.values.shape[1]
        values = np.concatenate([self.values, values_b.astype(self.values.dtype, copy=False)], axis=1)
        keys = np.concatenate([self.keys, keys_b], axis=1)
        if values.shape[1] > self.k and m == self.k:  # only candidates that can beat the k-th entry
            floor = self.values[:, -1:]
            alive = (values[:, m:] >= floor).any(axis=0)
            if not alive.all():
                cols = np.concatenate([np.arange(m), m + np.flatnonzero(alive)])
                values, keys = values[:, cols], keys[:, cols]
                fetch_b = _reindex(fetch_b, np.flatnonzero(alive))
        order = np.lexsort((keys, -values), axis=1)[:, : self.k]
        rows = np.arange(self.channels)[:, None]
        new_values, new_keys = values[rows, order], keys[rows, order]
        old = order < m
        ch_new, pos_new = np.nonzero(~old)
        fetched = fetch_b(order[ch_new, pos_new] - m, ch_new) if len(ch_new) else {}
        payload = {}
        for name in set(self.payload) | set(fetched):
            sample = self.payload[name] if name in self.payload else fetched[name]
            tail = sample.shape[2:] if name in self.payload else sample.shape[1:]
            out = np.zeros((self.channels, order.shape[1], *tail), sample.dtype)
            if name in self.payload and old.any():
                ch_old, pos_old = np.nonzero(old)
                out[ch_old, pos_old] = self.payload[name][ch_old, order[ch_old, pos_old]]
            if name in fetched:
                out[ch_new, pos_new] = fetched[name]
            payload[name] = out
        self.values, self.keys, self.payload = new_values, new_keys, payload
        return self


def _reindex(fetch, alive):
    return lambda cols, ch: fetch(alive[cols], ch)


class Collect(Summary):
    """Rows kept in full (features for nearest neighbours or embeddings): ``update`` takes a
    dict of arrays with a common first axis, one of them ``"index"`` (global image indices);
    :meth:`result` returns them concatenated and sorted by index. Memory grows with the
    number of rows kept, so keep rows small (pooled features, thumbnails)."""

    def __init__(self):
        self.parts: list = []

    def update(self, result: dict) -> "Collect":
        self.parts.append({k: np.asarray(v) for k, v in result.items()})
        return self

    def merge(self, other: "Collect") -> "Collect":
        self.parts.extend(other.parts)
        return self

    def result(self) -> dict:
        if not self.parts:
            return {}
        out = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        order = np.argsort(out["index"], kind="stable")
        return {k: v[order] for k, v in out.items()}


class Sum(Summary):
    """Elementwise sums of named arrays (counts, histograms over fixed bins, intersections
    and unions): ``update`` and ``merge`` add. Integer counts merge exactly."""

    def __init__(self):
        self.totals: dict = {}

    def update(self, result: dict) -> "Sum":
        for k, v in result.items():
            v = np.asarray(v)
            self.totals[k] = self.totals[k] + v if k in self.totals else v.copy()
        return self

    def merge(self, other: "Sum") -> "Sum":
        return self.update(other.totals)


class ActivationStep:
    """A scan step that runs a model: ``step(batch) = reduce(batch, {layer: activations})``.

    It holds the model as given (a torch module, a Keras model, an ONNX path) and loads
    the backend on first use, so it can be shipped to Dask workers, each loading its own.
    ``reduce`` (picklable: a module-level function or a callable object) turns the batch
    and its activations into the small result a summary takes.
    """

    def __init__(self, model, layers, reduce: Callable | None = None, *, backend=None, options: dict | None = None):
        self.model, self.layers, self.reduce = model, list(layers), reduce
        self.options = dict(options or {})
        self._backend = backend

    @property
    def backend(self):
        if self._backend is None:
            from ._plugins import load

            self._backend = load(self.model, **self.options)
        return self._backend

    def __call__(self, batch: Batch):
        acts = self.backend.activations(batch.images, self.layers)
        return (batch, acts) if self.reduce is None else self.reduce(batch, acts)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_backend"] = None
        return state


def shard_ranges(n: int, batch_size: int, shards: int) -> list:
    """Split ``[0, n)`` into at most ``shards`` contiguous ``(start, stop)`` ranges whose
    boundaries fall on multiples of ``batch_size`` (so batches match the one-process run)."""
    n_batches = math.ceil(n / batch_size)
    parts = np.array_split(np.arange(n_batches), min(shards, n_batches))
    return [(int(p[0]) * batch_size, min(n, (int(p[-1]) + 1) * batch_size)) for p in parts if len(p)]


def _scan_local(dataset: Dataset, step, summary: Summary, batch_size, owner, bar) -> tuple:
    seen = 0
    for batch in dataset.batches(batch_size, owner=owner):
        summary.update(step(batch))
        seen += len(batch)
        bar.update(len(batch))
    return summary, seen


def _scan_shard(dataset, step, make_summary, batch_size, owner):
    summary, seen = _scan_local(dataset, step, make_summary(), batch_size, owner, progress_bar(progress=False))
    return summary, seen


def scan(data, step: Callable, make_summary: Callable[[], Summary], *, batch_size: int | None = None, client=None,
         progress: bool | None = None, owner: str = "scan", desc: str | None = None) -> Summary:
    """Stream ``data`` through ``step`` into a summary; returns the summary.

    ``data`` is anything :func:`~convscope.data.datasets.as_dataset` takes; ``step(batch)``
    maps a :class:`Batch` to a result; ``make_summary()`` makes an empty :class:`Summary`.
    With ``client`` (a ``dask.distributed.Client``) each worker scans one shard and the
    summaries are merged; ``step`` and ``make_summary`` must then be picklable and the
    dataset must have random access (arrays, folders, ``shapes(n)``). ``batch_size`` None
    takes :func:`~convscope._batching.auto_batch_size` of the image size (64 at 64 x 64).
    ``progress`` as everywhere (:mod:`convscope._progress`). Raises ValueError when the dataset holds no image.
    """
    dataset = as_dataset(data, owner=owner)
    batch_size = batch_size_for(batch_size, dataset.image_size, owner)
    if client is None:
        bar = progress_bar(total=dataset.n, desc=desc or owner, progress=progress, unit="img")
        try:
            summary, seen = _scan_local(dataset, step, make_summary(), batch_size, owner, bar)
        finally:
            bar.close()
        if seen == 0:
            raise empty_error(owner)
        return summary
    return _scan_dask(dataset, step, make_summary, batch_size, client, progress, owner, desc)


def _scan_dask(dataset, step, make_summary, batch_size, client, progress, owner, desc):
    if not hasattr(client, "submit") or not hasattr(client, "scheduler_info"):
        raise param_error("client", owner, "a dask.distributed.Client", type(client).__name__, TypeError)
    if not dataset.random_access or dataset.n is None:
        raise param_error("data", owner, "a dataset that can be split into shards (an array, a folder, "
                          "convscope.data.shapes(n)) when client= is given", f"a {type(dataset).__name__}", TypeError)
    from distributed import as_completed
    from cloudpickle import dumps

    try:
        dumps((step, make_summary))
    except Exception as err:
        raise TypeError(f"{owner} with client= ships the model and the scan step to the Dask workers, but they cannot be "
                        f"pickled ({err}). Pass the model itself (a torch.nn.Module, a Keras model, an '.onnx' path), "
                        "not a loaded Backend.") from None
    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise ValueError(f"The 'client' parameter of {owner} must have at least one worker. Got none instead.")
    ranges = shard_ranges(dataset.n, batch_size, len(workers))
    futures = {}
    for (start, stop), worker in zip(ranges, workers):
        # the worker is a preference, not a restriction: a shard whose worker dies is run again
        # on another (Dask reports KilledWorker after repeated deaths), never left waiting
        f = client.submit(_scan_shard, dataset.subset(start, stop), step, make_summary, batch_size, owner,
                          workers=[worker], allow_other_workers=True, pure=False)
        futures[f.key] = (f, stop - start)
    bar = progress_bar(total=dataset.n, desc=desc or owner, progress=progress, unit="img")
    try:
        for f in as_completed([f for f, _ in futures.values()]):
            f.result()  # raise a worker's error here
            bar.update(futures[f.key][1])
    finally:
        bar.close()
    summary = make_summary()
    seen = 0
    for f, _ in futures.values():  # in shard order
        part, count = f.result()
        summary.merge(part)
        seen += count
    if seen == 0:
        raise empty_error(owner)
    return summary
