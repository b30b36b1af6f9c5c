"""One shard's pass over the data: activations and mask codes cached in RAM or on disk.

NetDissect's layout: the model runs once; the dissected layer's activations, each map's
maximum and the concept masks (as per-pixel codes, :func:`.iou.pixel_codes`) are cached, so
the threshold selection and the IoU counts read the cache instead of running the model
again. A shard whose cache fits in ``ram_bytes`` keeps it in this process's memory (held in
a registry by key, so on Dask it stays on its worker and only the key travels); a larger
one goes to memory-mapped files in a temporary folder, and RAM then holds one batch or
chunk at a time however large the dataset. Size per image: U x h x w x 4 bytes of
activations, U x 4 of maxima, ceil(C / 8) x Hm x Wm of mask codes. The cache is removed
when the dissection ends.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass

import numpy as np

from .._validate import param_error
from .iou import mask_pixel_counts, pixel_codes
from .threshold import TopDigitCounts

__all__ = ["ShardCache", "fill_cache", "RAM_BYTES"]

RAM_BYTES = 256 * 2 ** 20  # default cache size kept in memory per shard
CHUNK_BYTES = 4 * 2 ** 20  # activations read from the cache per step (temporaries stay in cache)
_IN_MEMORY: dict = {}  # key -> (acts, codes, maxima) of the in-memory caches of this process


@dataclass
class ShardCache:
    """Where a shard's cache lives (``folder`` None: in memory, under ``key``) and what it holds."""

    key: str
    folder: str | None
    start: int
    n: int
    act_shape: tuple  # (U, h, w)
    mask_shape: tuple  # (C, Hm, Wm)

    @property
    def code_shape(self) -> tuple:
        c, hm, wm = self.mask_shape
        return (c + 7) // 8, hm * wm

    @staticmethod
    def bytes_per_image(act_shape, mask_shape) -> int:
        c, hm, wm = mask_shape
        return 4 * int(np.prod(act_shape)) + 4 * act_shape[0] + (c + 7) // 8 * hm * wm

    def _files(self, mode):
        shapes = {"acts.f32": (np.float32, self.act_shape), "codes.u8": (np.uint8, self.code_shape),
                  "maxima.f32": (np.float32, self.act_shape[:1])}
        return tuple(np.memmap(os.path.join(self.folder, name), dtype, mode, shape=(self.n, *shape))
                     for name, (dtype, shape) in shapes.items())

    def arrays(self, mode="r"):
        """(acts (n, U, h, w), codes (n, planes, Hm*Wm), maxima (n, U))."""
        return _IN_MEMORY[self.key] if self.folder is None else self._files(mode)

    def chunks(self, codes: bool = False):
        """Yield (acts, codes or None, maxima) for consecutive chunks of images."""
        acts, code_array, maxima = self.arrays()
        size = max(1, CHUNK_BYTES // (4 * int(np.prod(self.act_shape))))
        for i in range(0, self.n, size):
            yield np.asarray(acts[i:i + size]), np.asarray(code_array[i:i + size]) if codes else None, \
                np.asarray(maxima[i:i + size])

    def remove(self):
        _IN_MEMORY.pop(self.key, None)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _check_batch(acts, images, masks, n_concepts, layer):
    if acts.ndim != 4 or acts.shape[2] * acts.shape[3] < 2:
        raise ValueError(f"The 'layer' parameter of dissect must name a layer with a spatial map (N, U, h, w). "
                         f"Got {layer!r} with activations of shape {acts.shape} instead.")
    if masks.ndim != 4 or masks.shape[0] != len(images) or masks.shape[1] != n_concepts:
        raise param_error("concepts", "dissect", f"masks of shape (N, {n_concepts}, H, W) for {len(images)} images",
                          f"masks of shape {masks.shape}")
    ih, iw = images.shape[2:]
    mh, mw = masks.shape[2:]
    if ih * mw != iw * mh:
        raise param_error("concepts", "dissect", f"masks with the aspect ratio of their images ({ih}x{iw})",
                          f"masks of {mh}x{mw}")


def _map_maxima(acts: np.ndarray) -> np.ndarray:
    """Each map's maximum (N, U), by halving the flattened maps while their length is even
    (long elementwise passes instead of a reduction along a short axis); NaN propagates."""
    x = acts.reshape(acts.shape[0], acts.shape[1], -1)
    while x.shape[2] > 1 and x.shape[2] % 2 == 0:
        x = np.maximum(x[:, :, :x.shape[2] // 2], x[:, :, x.shape[2] // 2:])
    return x.max(axis=2)


def _open(start, n, act_shape, mask_shape, ram_bytes, folder):
    key = uuid.uuid4().hex
    if n * ShardCache.bytes_per_image(act_shape, mask_shape) <= ram_bytes:
        cache = ShardCache(key, None, start, n, act_shape, mask_shape)
        _IN_MEMORY[key] = (np.empty((n, *act_shape), np.float32), np.empty((n, *cache.code_shape), np.uint8),
                           np.empty((n, act_shape[0]), np.float32))
        return cache
    cache = ShardCache(key, tempfile.mkdtemp(prefix="convscope-dissect-", dir=folder), start, n, act_shape, mask_shape)
    return cache


def fill_cache(backend, layer, source, start, stop, batch_size, folder=None, on_batch=None, *, quantile=0.005,
               ram_bytes=RAM_BYTES):
    """Run the model over images [start, stop) of ``source`` and cache the layer's activations.

    Returns (cache, sparse high-digit counts of the candidates for the top ``quantile``
    ``(codes, counts)`` (:class:`.threshold.TopDigitCounts`), mask pixel counts (C,),
    per-image unit maxima (n, U)). ``on_batch(n)`` is called after each batch (progress bars).
    """
    from .threshold import rank_k

    n = stop - start
    cache = top = arrays = None
    mask_counts = None
    seen = 0
    try:
        for images, masks in source.batches(batch_size, start, stop):
            masks = np.asarray(masks, bool)
            acts = np.asarray(backend.activations(images, [layer])[layer], np.float32)
            _check_batch(acts, images, masks, len(source.concepts), layer)
            if cache is None:
                cache = _open(start, n, acts.shape[1:], masks.shape[1:], ram_bytes, folder)
                arrays = cache.arrays("w+")
                top = TopDigitCounts(acts.shape[1], rank_k(source.n * acts.shape[2] * acts.shape[3], quantile))
                mask_counts = np.zeros(masks.shape[1], np.int64)
            elif acts.shape[1:] != cache.act_shape or masks.shape[1:] != cache.mask_shape:
                raise param_error("concepts", "dissect", f"images and masks of one size throughout ({cache.mask_shape})",
                                  f"masks of shape {masks.shape[1:]} at image {start + seen}")
            b = len(acts)
            if seen + b > n:
                raise ValueError(f"The concept source yielded more than {n} images for the range [{start}, {stop}).")
            acts_cache, codes_cache, maxima_cache = arrays
            acts_cache[seen:seen + b] = acts
            codes_cache[seen:seen + b] = pixel_codes(masks)
            maxima_cache[seen:seen + b] = _map_maxima(acts)
            mask_counts += mask_pixel_counts(masks)
            top.add(acts)
            seen += b
            if on_batch:
                on_batch(b)
        if cache is None:
            raise ValueError("The 'concepts' parameter of dissect must hold at least one image. Got an empty dataset instead.")
        if seen != n:
            raise ValueError(f"The concept source yielded {seen} images for the range [{start}, {stop}); expected {n}.")
        maxima = np.array(arrays[2])
        if cache.folder is not None:
            for a in arrays:
                a.flush()
        del arrays
        return cache, (top.codes, top.counts), mask_counts, maxima
    except BaseException:
        if cache is not None:
            cache.remove()
        raise
