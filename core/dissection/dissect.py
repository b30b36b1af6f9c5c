"""Network Dissection (Bau et al. 2017): which units of a layer detect which concepts.

For each unit u of the layer: its threshold t_u is the top-``quantile`` value of all its
activations over the dataset (exact, :mod:`.threshold`); each activation map is upsampled
bilinearly to the mask resolution and thresholded at t_u; IoU(u, c) = |A_u & M_c| /
|A_u | M_c| summed over the dataset (:mod:`.iou`). A unit is a detector of its best
concept when that IoU exceeds ``iou_threshold`` (0.04, as in the paper).

The model runs once over the data (:mod:`._cache`), into a cache held in memory up to
``cache_ram_mb`` per shard and on disk beyond; while it runs, the high 16 bits of each
unit's candidate top values are counted (:class:`.threshold.TopDigitCounts`); two passes
over the cache then count the low 16 bits within the chosen buckets and the IoU counts. On
Dask distributed each worker runs its shard and keeps its cache, and only sparse digit
counts and integer counts travel, so the result is identical to the one-process run.
"""
from __future__ import annotations

import numpy as np

from .._batching import batch_size_for
from .._plugins import load
from .._validate import check_name, check_number
from ._cache import ShardCache
from .concepts import concept_source
from .iou import count_iou_codes
from .result import Dissection
from .threshold import key_to_float, low_digit_counts, merge_counts, rank_k, select_counts

__all__ = ["dissect"]


def _stage_fill(model, options, layer, source, start, stop, batch_size, cache_dir, quantile, ram_bytes):
    from ._cache import fill_cache

    return fill_cache(load(model, **options), layer, source, start, stop, batch_size, cache_dir, quantile=quantile,
                      ram_bytes=ram_bytes)


def _stage_low_digit(cache, prefix):
    return merge_counts([low_digit_counts(acts, prefix) for acts, _, _ in cache.chunks()])


def _stage_iou(cache, thresholds, remove=True):
    inter = above = None
    try:
        c, hm, wm = cache.mask_shape
        for acts, codes, maxima in cache.chunks(codes=True):
            i, a = count_iou_codes(acts, codes, (hm, wm), c, thresholds, maxima)
            inter, above = (i, a) if inter is None else (inter + i, above + a)
        return inter, above
    finally:
        if remove:
            cache.remove()


def _shards(n, batch_size, client):
    if client is None:
        return [(0, n, None)]
    from .._scan import shard_ranges

    workers = sorted(client.scheduler_info()["workers"])
    if not workers:
        raise ValueError("The 'client' parameter of dissect must have at least one worker. Got none instead.")
    return [(a, b, w) for (a, b), w in zip(shard_ranges(n, batch_size, len(workers)), workers)]


def _drop_filled(filled):
    filled[0].remove()


def _wait_or_report_a_lost_worker(client, futures, workers, poll: float = 1.0):
    """Wait for ``futures``, each pinned to its worker (its shard's activation cache lives
    there); when one of those workers leaves the cluster (killed, out of memory), cancel them
    all and raise, instead of waiting for ever for a worker that will not come back."""
    from distributed import wait

    while True:
        try:
            wait(futures, timeout=poll)
            return
        except TimeoutError:
            pass
        alive = set(client.scheduler_info()["workers"])
        lost = sorted({w for w, f in zip(workers, futures) if w not in alive and not f.done()})
        if lost:
            client.cancel(futures)
            raise RuntimeError(f"dissect: the Dask worker {lost[0]} left the cluster while it held a shard (its "
                               "activation cache is gone with it); no result was made. Run dissect again.")


def _run(client, fn, per_shard, undo=None):
    """Run ``fn(*args)`` for each (worker, args), locally or pinned to that Dask worker.

    With ``undo``, when a shard fails, ``undo(result)`` runs on the worker of every shard
    that succeeded (their caches would otherwise stay on the workers) before the first
    error is raised."""
    if client is None:
        return [fn(*args) for _, args in per_shard]
    futures = [client.submit(fn, *args, workers=[w], allow_other_workers=False, pure=False) for w, args in per_shard]
    _wait_or_report_a_lost_worker(client, futures, [w for w, _ in per_shard])
    if undo is not None:
        failed = [f for f in futures if f.status != "finished"]
        if failed:
            done = [(w, (f,)) for (w, _), f in zip(per_shard, futures) if f.status == "finished"]
            _run(client, undo, done)  # a future as an argument: its result, on that worker
            failed[0].result()  # raises the shard's error
    return client.gather(futures)


def dissect(model, layer: str, concepts, *, quantile: float = 0.005, iou_threshold: float = 0.04,
            batch_size: int | None = None, client=None, progress: bool | None = None, cache_dir=None, cache_ram_mb: float = 256,
            skip_empty: bool = False, options=None) -> Dissection:
    """Dissect ``layer`` of ``model`` on a concept dataset.

    Parameters
    ----------
    model : anything :func:`convscope.load` accepts.
    layer : name of a layer with a spatial output (N, U, h, w).
    concepts : ``convscope.data.shapes(n)``, a Broden folder, :class:`ConceptArrays`, or any
        concept source (see :mod:`convscope.dissection.concepts`).
    quantile : fraction of each unit's activations above its threshold (0.005).
    iou_threshold : IoU a unit's best concept must exceed for the unit to count as its detector.
    client : a ``dask.distributed.Client``: one shard per worker, identical results.
    cache_dir : folder for the temporary activation cache when it goes to disk (default: the
        system temp folder).
    cache_ram_mb : memory (MB) a shard's activation cache may take; a shard whose cache
        (U x h x w x 4 + U x 4 + ceil(C / 8) x Hm x Wm bytes per image) needs more is cached on
        disk in ``cache_dir``, so memory stays bounded however large the dataset. 0: always disk.
    skip_empty : allow concepts with no pixels in the data (their IoU is 0); by default an error.
    """
    source = concept_source(concepts)
    quantile = check_number(quantile, "quantile", "dissect", low=0, strict=True)
    if quantile >= 1:
        raise ValueError(f"The 'quantile' parameter of dissect must be < 1. Got {quantile} instead.")
    iou_threshold = check_number(iou_threshold, "iou_threshold", "dissect", low=0)
    ram_bytes = int(check_number(cache_ram_mb, "cache_ram_mb", "dissect", low=0) * 2 ** 20)
    options = dict(options or {})
    backend = load(model, **options)
    check_name(layer, [r.name for r in backend.layers()], "layer", "dissect")
    n = source.n
    if not n:
        raise ValueError("The 'concepts' parameter of dissect must hold at least one image. Got an empty dataset instead.")
    batch_size = batch_size_for(batch_size, getattr(source, "image_size", None), "dissect", backend=backend)
    shards = _shards(n, batch_size, client)
    target = backend if client is None else model

    from .._progress import progress_bar

    bar = progress_bar(total=n, desc=f"dissect {layer}", progress=progress, unit="img")
    try:
        if client is None:
            from ._cache import fill_cache

            filled = [fill_cache(backend, layer, source, a, b, batch_size, cache_dir, bar.update, quantile=quantile,
                                 ram_bytes=ram_bytes) for a, b, _ in shards]
        else:
            filled = _run(client, _stage_fill, [(w, (target, options, layer, source, a, b, batch_size, cache_dir,
                                                      quantile, ram_bytes)) for a, b, w in shards], undo=_drop_filled)
            bar.update(n)
    finally:
        bar.close()
    caches = [f[0] for f in filled]
    try:
        mask_counts = sum(f[2] for f in filled)
        maxima = np.concatenate([f[3] for f in filled])
        units, h, w = caches[0].act_shape
        k = rank_k(n * h * w, quantile)
        high, rank = select_counts(*merge_counts([f[1] for f in filled]), np.full(units, k))
        low, _ = select_counts(*merge_counts(_run(client, _stage_low_digit, [(s[2], (c, high))
                                                                           for s, c in zip(shards, caches)])), rank)
        thresholds = key_to_float((high.astype(np.uint32) << np.uint32(16)) | low)
        counts = _run(client, _stage_iou, [(s[2], (c, thresholds)) for s, c in zip(shards, caches)])
    finally:  # a shard whose IoU stage ran has removed its cache already; this covers errors
        _run(client, ShardCache.remove, [(s[2], (c,)) for s, c in zip(shards, caches)])
    inter = sum(c[0] for c in counts)
    above = sum(c[1] for c in counts)
    union = above[:, None] + mask_counts[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape, np.float64), where=union > 0)
    empty = [c for c, m in zip(source.concepts, mask_counts) if m == 0]
    if empty and not skip_empty:
        raise ValueError(f"The 'concepts' parameter of dissect must give every concept some pixels. Got no pixels "
                         f"anywhere for {', '.join(map(repr, empty[:8]))}{' ...' if len(empty) > 8 else ''} instead; "
                         "pass skip_empty=True to dissect the others.")
    return Dissection(layer=layer, concepts=list(source.concepts), categories=dict(source.categories), iou=iou,
                      thresholds=thresholds, intersection=inter, union=union, mask_counts=mask_counts,
                      unit_maxima=maxima, iou_threshold=iou_threshold, quantile=quantile, empty_concepts=empty,
                      _source=source, _model=model, _options=options)
