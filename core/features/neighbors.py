"""Features of a whole dataset, and nearest neighbours in feature space beside pixel space.

Krizhevsky et al. (2012, fig. 4) showed that images close in a deep layer's feature space
can be far apart in pixels: the side-by-side rows make that visible. Distances:
``"l2"``: ``||f_q - f_i||_2``; ``"cosine"``: ``1 - <f_q, f_i> / (||f_q|| ||f_i||)``.
The search uses scikit-learn's ``NearestNeighbors`` (exact).
"""
from __future__ import annotations

import numpy as np

from .._plugins import load
from .._validate import as_images, check_choice, check_int, describe, param_error
from ..data.datasets import as_dataset
from .._scan import ActivationStep, Collect, scan
from ..render import Renderable, grid, resize, to_rgb
from ._common import caption, layer_record, side_by_side, zoom, zoom_factor

__all__ = ["layer_features", "Features", "nearest_neighbors", "Neighbors", "POOLS", "METRICS"]

POOLS = ("mean", "max", "none")
METRICS = ("l2", "cosine")


def pool_features(a: np.ndarray, pool: str) -> np.ndarray:
    """(N, C, H, W) activations to (N, D) features: ``"mean"``/``"max"`` over H and W
    (D = C), ``"none"`` flattened (D = C H W). Non-spatial activations are flattened."""
    a = np.asarray(a, np.float32)
    if a.ndim == 4 and pool == "mean":
        return a.mean(axis=(2, 3))
    if a.ndim == 4 and pool == "max":
        return a.max(axis=(2, 3))
    return a.reshape(len(a), -1)


def thumbnails(images: np.ndarray, size: int | None) -> np.ndarray:
    """Images resized (bilinear) to ``size`` x ``size``; unchanged when ``size`` is None."""
    return images if size is None else resize(images, (size, size))


class _FeatureRows:
    """Scan step reduction: pooled features (and optional thumbnails, labels) per image."""

    def __init__(self, layer, pool, pixel_size):
        self.layer, self.pool, self.pixel_size = layer, pool, pixel_size

    def __call__(self, batch, acts):
        out = {"index": batch.indices, "features": pool_features(acts[self.layer], self.pool)}
        if self.pixel_size is not False:
            out["pixels"] = thumbnails(batch.images, self.pixel_size).astype(np.float32)
        if batch.labels is not None:
            out["labels"] = batch.labels
        return out


class Features:
    """Features (N, D) of a dataset at one layer, with ``labels`` (N,) or None and the global
    image ``indices`` (N,); ``pixels`` holds thumbnails (N, C, s, s) when asked for."""

    def __init__(self, layer, features, labels, indices, pixels=None):
        self.layer, self.features, self.labels, self.indices, self.pixels = layer, features, labels, indices, pixels

    def __len__(self):
        return len(self.features)

    def __repr__(self):
        return f"Features(layer={self.layer!r}, {self.features.shape[0]} x {self.features.shape[1]})"


def _collect(backend, model, data, layer, pool, pixel_size, batch_size, client, progress, owner):
    check_choice(pool, POOLS, "pool", owner)
    layer_record(backend, layer, owner)
    step = ActivationStep(model if client is not None else backend, [layer], _FeatureRows(layer, pool, pixel_size),
                          backend=backend)
    rows = scan(data, step, Collect, batch_size=batch_size, client=client, progress=progress, owner=owner,
                desc=f"features {layer}").result()
    return Features(layer, rows["features"], rows.get("labels"), rows["index"], rows.get("pixels"))


def layer_features(model, data, layer: str, *, pool: str = "mean", batch_size: int | None = None, client=None,
                   progress: bool | None = None) -> Features:
    """Stream ``data`` and keep each image's features at ``layer``, pooled by ``pool``
    (``"mean"``, ``"max"`` over the map, or ``"none"``: flattened), for :func:`embed` or
    a search. Memory grows as N x D, so pool spatial layers of large datasets."""
    backend = load(model)
    return _collect(backend, model, data, layer, pool, False, batch_size, client, progress, "layer_features")


class Neighbors(Renderable):
    """The result of :func:`nearest_neighbors`, for Q queries and k neighbours.

    ``feature_indices``/``feature_distances`` (Q, k) rank the dataset by distance in the
    layer's feature space, ``pixel_indices``/``pixel_distances`` by distance between
    thumbnails; ``queries`` (Q, C, H, W) are the query images, ``feature_images`` and
    ``pixel_images`` (Q, k, C, h, w) the neighbours drawn.
    """

    def __init__(self, layer, metric, queries, feature_indices, feature_distances, pixel_indices, pixel_distances,
                 feature_images, pixel_images, pixel_size):
        self.layer, self.metric, self.queries = layer, metric, queries
        self.feature_indices, self.feature_distances = feature_indices, feature_distances
        self.pixel_indices, self.pixel_distances = pixel_indices, pixel_distances
        self.feature_images, self.pixel_images, self.pixel_size = feature_images, pixel_images, pixel_size

    def __repr__(self):
        q, k = self.feature_indices.shape
        return f"Neighbors(layer={self.layer!r}, queries={q}, k={k}, metric={self.metric!r})"

    def _panel(self, neighbours, title, tile):
        size = max(self.queries.shape[-2:])
        f = zoom_factor(size, tile)
        tiles = []
        for q in range(len(self.queries)):
            row = [self.queries[q]] + list(neighbours[q])
            for image in row:
                rgb = to_rgb(image, channels_first=True, vmin=0, vmax=1)
                if rgb.shape[0] != size:
                    rgb = resize(rgb.transpose(2, 0, 1), (size, size), order=0).transpose(1, 2, 0)
                tiles.append(zoom(rgb, f))
        return caption(grid(tiles, ncols=neighbours.shape[1] + 1, pad=2), title)

    def to_rgb(self, *, tile: int = 48) -> np.ndarray:
        pixels = "full size" if self.pixel_size is None else f"{self.pixel_size}x{self.pixel_size}"
        return side_by_side([self._panel(self.feature_images, f"feature space: {self.layer} ({self.metric})", tile),
                             self._panel(self.pixel_images, f"pixel space: {pixels} ({self.metric})", tile)], pad=16)


def _search(base, queries, k, metric, exclude):
    try:
        from sklearn.neighbors import NearestNeighbors
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("nearest_neighbors needs scikit-learn: pip install 'convscope[features]'") from err
    extra = 1 if exclude is not None else 0
    index = NearestNeighbors(n_neighbors=k + extra, metric="euclidean" if metric == "l2" else "cosine",
                             algorithm="auto" if metric == "l2" else "brute")
    index.fit(base.reshape(len(base), -1))
    dist, idx = index.kneighbors(queries.reshape(len(queries), -1))
    if exclude is None:
        return idx, dist.astype(np.float32)
    keep = [np.flatnonzero(row != e)[:k] if (row == e).any() else np.arange(k) for row, e in zip(idx, exclude)]
    idx = np.stack([row[s] for row, s in zip(idx, keep)])
    return idx, np.stack([row[s] for row, s in zip(dist, keep)]).astype(np.float32)


def nearest_neighbors(model, data, queries, layer: str, k: int = 5, *, metric: str = "l2", pool: str = "mean",
                      pixel_size: int | None = 32, batch_size: int | None = None, client=None,
                      progress: bool | None = None) -> Neighbors:
    """The ``k`` images of ``data`` closest to each query in ``layer``'s feature space and,
    beside them, in pixel space.

    ``queries`` are images (Q, C, H, W) or indices into ``data`` (each query then
    excludes itself). ``metric`` is ``"l2"`` or ``"cosine"``; ``pool`` reduces spatial
    activations (``"mean"``, ``"max"``, ``"none"``); pixel distances compare thumbnails of
    ``pixel_size`` x ``pixel_size`` (None: full size), so the index stays small.
    """
    owner = "nearest_neighbors"
    backend = load(model)
    check_choice(metric, METRICS, "metric", owner)
    k = check_int(k, "k", owner, low=1)
    if pixel_size is not None:
        pixel_size = check_int(pixel_size, "pixel_size", owner, low=1)
    dataset = as_dataset(data, owner=owner)
    by_index = np.ndim(queries) == 1 and np.asarray(queries).dtype.kind in "iu"
    if not by_index:
        q = np.asarray(queries) if not isinstance(queries, np.ndarray) else queries
        if q.ndim == 3:
            q = q[None]
        q = as_images(q, param="queries", owner=owner)
    elif len(queries) == 0:
        raise param_error("queries", owner, "images (Q, C, H, W) or a non-empty sequence of indices", describe(queries))
    limit = None if dataset.n is None else dataset.n - (1 if by_index else 0)
    if limit is not None and k > limit:
        raise param_error("k", owner, f"<= the number of images in the dataset{' minus the query' if by_index else ''} "
                          f"({limit})", str(k))
    table = _collect(backend, model, dataset, layer, pool, pixel_size, batch_size, client, progress, owner)
    n = len(table)
    if k > n - (1 if by_index else 0):
        raise param_error("k", owner, f"<= the number of images in the dataset ({n})", str(k))
    row_of = {int(g): r for r, g in enumerate(table.indices)}
    if by_index:
        rows = [row_of.get(int(i)) for i in queries]
        if any(r is None for r in rows):
            bad = next(int(i) for i, r in zip(queries, rows) if r is None)
            raise param_error("queries", owner, f"indices of images in the dataset (0 to {n - 1})", str(bad))
        rows = np.asarray(rows)
        q_features, q_pixels, exclude = table.features[rows], table.pixels[rows], rows
        q_images = _images(dataset, table, table.indices[rows])
    else:
        q_features = pool_features(backend.activations(q, [layer])[layer], pool)
        q_pixels, exclude, q_images = thumbnails(q, pixel_size), None, q
        if q_pixels.shape[1:] != table.pixels.shape[1:]:
            raise param_error("queries", owner, f"images shaped like the dataset's, {table.pixels.shape[1:]} after "
                              "resizing", f"shape {q.shape}")
    f_idx, f_dist = _search(table.features, q_features, k, metric, exclude)
    p_idx, p_dist = _search(table.pixels, q_pixels, k, metric, exclude)
    return Neighbors(layer, metric, q_images, table.indices[f_idx], f_dist, table.indices[p_idx], p_dist,
                     _images(dataset, table, table.indices[f_idx]), _images(dataset, table, table.indices[p_idx]),
                     pixel_size)


def _images(dataset, table, indices):
    """Images at global ``indices`` (any shape): from the dataset when it has random access,
    else the thumbnails kept by the scan."""
    flat = np.asarray(indices).reshape(-1)
    if dataset.random_access:
        images = dataset.fetch(flat)
    else:
        row_of = {int(g): r for r, g in enumerate(table.indices)}
        images = table.pixels[[row_of[int(i)] for i in flat]]
    return images.reshape(*np.shape(indices), *images.shape[1:])
