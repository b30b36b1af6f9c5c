"""One shard's pass over the data: activations and packed masks cached on disk.

NetDissect's layout: the model runs once; its activations for the dissected layer and the
concept masks are written to memory-mapped files, so the threshold selection and the IoU
counts read the disk instead of running the model again, and RAM holds one batch or chunk
at a time however large the dataset. Disk use: N x U x h x w x 4 bytes for activations and
N x C x Hm x Wm / 8 for masks; the files are deleted when the dissection ends.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from .._validate import param_error
from .threshold import digit_histogram

__all__ = ["ShardCache", "fill_cache"]


@dataclass
class ShardCache:
    """Where a shard's cache lives and what it holds."""

    folder: str
    start: int
    n: int
    act_shape: tuple  # (U, h, w)
    mask_shape: tuple  # (C, Hm, Wm)

    def _acts(self):
        return np.memmap(os.path.join(self.folder, "acts.f32"), np.float32, "r", shape=(self.n, *self.act_shape))

    def _masks(self):
        c, hm, wm = self.mask_shape
        return np.memmap(os.path.join(self.folder, "masks.bits"), np.uint8, "r", shape=(self.n, c, (hm * wm + 7) // 8))

    def chunks(self, size: int = 256, masks: bool = False):
        """Yield (acts, masks or None) for consecutive chunks of ``size`` images."""
        acts, bits = self._acts(), self._masks() if masks else None
        c, hm, wm = self.mask_shape
        for i in range(0, self.n, size):
            a = np.array(acts[i:i + size])
            m = None
            if masks:
                m = np.unpackbits(np.asarray(bits[i:i + size]), axis=2, count=hm * wm).astype(bool).reshape(len(a), c, hm, wm)
            yield a, m

    def remove(self):
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


def fill_cache(backend, layer, source, start, stop, batch_size, folder=None, on_batch=None):
    """Run the model over images [start, stop) of ``source`` and cache the layer's activations.

    Returns (cache, high-digit histogram (U, 65536), mask pixel counts (C,), per-image unit
    maxima (n, U)). ``on_batch(n)`` is called after each batch (progress bars).
    """
    folder = tempfile.mkdtemp(prefix="convscope-dissect-", dir=folder)
    n = stop - start
    cache = hist = acts_map = bits_map = None
    mask_counts = None
    maxima = []
    seen = 0
    try:
        for images, masks in source.batches(batch_size, start, stop):
            masks = np.asarray(masks, bool)
            acts = backend.activations(images, [layer])[layer]
            _check_batch(acts, images, masks, len(source.concepts), layer)
            if cache is None:
                cache = ShardCache(folder, start, n, acts.shape[1:], masks.shape[1:])
                acts_map = np.memmap(os.path.join(folder, "acts.f32"), np.float32, "w+", shape=(n, *cache.act_shape))
                c, hm, wm = cache.mask_shape
                bits_map = np.memmap(os.path.join(folder, "masks.bits"), np.uint8, "w+", shape=(n, c, (hm * wm + 7) // 8))
                hist = np.zeros((acts.shape[1], 1 << 16), np.int64)
                mask_counts = np.zeros(c, np.int64)
            elif acts.shape[1:] != cache.act_shape or masks.shape[1:] != cache.mask_shape:
                raise param_error("concepts", "dissect", f"images and masks of one size throughout ({cache.mask_shape})",
                                  f"masks of shape {masks.shape[1:]} at image {start + seen}")
            b = len(acts)
            acts_map[seen:seen + b] = acts
            bits_map[seen:seen + b] = np.packbits(masks.reshape(b, masks.shape[1], -1), axis=2)
            hist += digit_histogram(acts)
            mask_counts += masks.sum(axis=(0, 2, 3))
            maxima.append(acts.reshape(b, acts.shape[1], -1).max(axis=2))
            seen += b
            if on_batch:
                on_batch(b)
        if cache is None:
            raise ValueError("The 'concepts' parameter of dissect must hold at least one image. Got an empty dataset instead.")
        if seen != n:
            raise ValueError(f"The concept source yielded {seen} images for the range [{start}, {stop}); expected {n}.")
        acts_map.flush()
        bits_map.flush()
        del acts_map, bits_map
        return cache, hist, mask_counts, np.concatenate(maxima)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
