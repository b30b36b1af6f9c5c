"""Top activating patches: for each channel, the k image regions that excite it most.

A unit's response to an image is its largest value over the map,
``v(n, c) = max_{y, x} A[n, c, y, x]`` (first maximum in row-major order), and the patch
shown is the receptive field of that maximising unit. The scan streams the dataset and
keeps, per channel, the k best (value, image index, location, patch) under a total order
(value descending, then image index ascending), so the result is the same however the
data is batched or sharded across Dask workers.
"""
from __future__ import annotations

import warnings

import numpy as np

from .._plugins import load
from .._validate import check_choice, check_int, param_error
from ..data.datasets import as_dataset
from .._batching import batch_size_for
from ..backend import RELU_RULES
from .._renamed import renamed
from .._scan import ActivationStep, TopK, scan
from ..render import Renderable, grid, normalize, to_rgb
from ._common import caption, channel_list, layer_record, zoom, zoom_factor
from .receptive_field import unit_boxes

__all__ = ["top_patches", "TopPatches"]


def _crop(image: np.ndarray, box, fill: float = 0.0) -> np.ndarray:
    """(C, bottom - top, right - left) crop of a (C, H, W) image; outside the image ``fill``."""
    t, l, b, r = (int(v) for v in box)
    c, h, w = image.shape
    out = np.full((c, b - t, r - l), fill, image.dtype)
    ct, cl, cb, cr = max(t, 0), max(l, 0), min(b, h), min(r, w)
    if cb > ct and cr > cl:
        out[:, ct - t:cb - t, cl - l:cr - l] = image[:, ct:cb, cl:cr]
    return out


class _UnitMaxima:
    """Scan step reduction: per image and channel, the maximum and where it is; the patch
    under that unit is cropped only for entries that enter the top k."""

    def __init__(self, layer, channels, field):
        self.layer, self.channels, self.field = layer, np.asarray(channels), field

    def __call__(self, batch, acts):
        a = acts[self.layer]
        if len(self.channels) != a.shape[1] or (self.channels != np.arange(a.shape[1])).any():
            a = a[:, self.channels]
        n, c, h, w = a.shape
        flat = a.reshape(n, c, h * w)
        pos = flat.argmax(axis=2)
        values = np.take_along_axis(flat, pos[..., None], axis=2)[..., 0]
        (sy, ay, by), (sx, ax, bx) = self.field
        images = batch.images

        def payload(rows, chans):
            ys, xs = np.divmod(pos[rows, chans], w)
            patches = np.stack([_crop(images[r], (sy * y + ay, sx * x + ax, sy * y + by + 1, sx * x + bx + 1))
                                for r, y, x in zip(rows, ys, xs)])
            return {"patch": patches, "location": np.stack([ys, xs], axis=1).astype(np.int64)}

        return values, batch.indices, payload


class TopPatches(Renderable):
    """The result of :func:`top_patches`.

    For the i-th chosen channel ``channels[i]`` and rank j: ``values[i, j]`` the unit's
    activation, ``indices[i, j]`` the image index in the dataset, ``locations[i, j]`` the
    unit (y, x) on the layer's map, ``boxes[i, j]`` its receptive field (top, left,
    bottom, right) in input pixels (half-open, may reach into the padding),
    ``patches[i, j]`` the image under that box (C, h, w), zero outside the image, and
    ``gradients[i, j]`` the unit's gradient over the same box under the backward ``rule``
    ("guided" for guided backprop; None when no rule was asked).
    """

    def __init__(self, layer, channels, values, indices, locations, boxes, patches, gradients=None, rule=None):
        self.layer, self.channels = layer, list(channels)
        self.values, self.indices, self.locations, self.boxes = values, indices, locations, boxes
        self.patches, self.gradients, self.rule = patches, gradients, rule

    @property
    def guided(self):
        """The gradients when they were computed with the guided rule (the former name)."""
        return self.gradients if self.rule == "guided" else None

    @property
    def k(self) -> int:
        return self.values.shape[1]

    def __repr__(self):
        return (f"TopPatches(layer={self.layer!r}, channels={len(self.channels)}, k={self.k}, "
                f"patch={self.patches.shape[-2]}x{self.patches.shape[-1]}, rule={self.rule!r})")

    def _tiles(self, i: int, tile: int) -> list:
        f = zoom_factor(max(self.patches.shape[-2:]), tile)
        gvis = None if self.gradients is None else normalize(self.gradients[i], "symmetric")
        tiles = []
        for j in range(self.k):
            t = zoom(to_rgb(self.patches[i, j], channels_first=True, vmin=0, vmax=1), f)
            if gvis is not None:
                g = zoom(to_rgb(gvis[j], channels_first=True, vmin=0, vmax=1), f)
                t = np.concatenate([t, np.ones((t.shape[0], 2, 3), np.float32), g], axis=1)
            tiles.append(t)
        return tiles

    def channel(self, i: int, *, tile: int = 48):
        """The picture of the i-th chosen channel: its k patches in a grid, best first."""
        from ..render import Picture

        i = check_int(i, "i", "TopPatches.channel", low=0, high=len(self.channels) - 1)
        return Picture(self._grid(i, tile), f"{self.layer} channel {self.channels[i]}")

    def _grid(self, i, tile):
        per_row = int(np.ceil(np.sqrt(self.k)))
        return caption(grid(self._tiles(i, tile), ncols=per_row, pad=1), f"{self.layer}:{self.channels[i]}")

    def to_rgb(self, *, tile: int = 48, ncols: int | None = None) -> np.ndarray:
        """Every chosen channel's grid, laid out in rows (``ncols`` channels per row)."""
        grids = [self._grid(i, tile) for i in range(len(self.channels))]
        return grid(grids, ncols=ncols or int(np.ceil(np.sqrt(len(grids)))), pad=6)


@renamed(guided=("rule", lambda guided: "guided" if guided else None))
def top_patches(model, data, layer: str, channels=None, k: int = 9, *, rule: str | None = None,
                batch_size: int | None = None, client=None, progress: bool | None = None) -> TopPatches:
    """Stream ``data`` through ``model`` and keep, per channel of ``layer``, the ``k`` images
    whose strongest unit responds most, with that unit's receptive-field patch.

    Parameters
    ----------
    model : anything :func:`convscope.load` takes.
    data : an array (N, C, H, W), ``(images, labels)``, a folder path, ``shapes(n)`` or an
        iterable of batches (see :func:`convscope.data.datasets.as_dataset`).
    layer : a layer with a spatial (C, H, W) output.
    channels : None (all), an int or a sequence of channel indices.
    k : how many patches per channel; at most the number of images.
    rule : also compute each unit's gradient over its patch with this backward rule
        (``"guided"`` for guided backprop, ``"deconvnet"``, ``"standard"``; None: none), one
        ``backend.gradient(..., rule=rule)`` with a one-hot seed at the unit. It is
        computed on the patch pasted into an empty canvas at its place: a unit depends on
        its receptive field only, so this equals the gradient on the full image for
        convolutional networks (a warning says when the unit's value differs).
    batch_size, progress : scan batching (None: as the image size suggests) and the bar.
    The former ``guided=True`` still works and means ``rule="guided"``.
    client : a ``dask.distributed.Client`` to run the scan one shard per worker; the model
        must then be picklable (pass the model, not a Backend).

    Memory holds one batch plus ``k`` patches per channel, whatever the dataset's size.
    """
    owner = "top_patches"
    backend = load(model)
    dataset = as_dataset(data, owner=owner)
    k = check_int(k, "k", owner, low=1)
    if rule is not None:
        check_choice(rule, RELU_RULES, "rule", owner)
    if dataset.n is not None and k > dataset.n:
        raise param_error("k", owner, f"<= the number of images in the dataset ({dataset.n})", str(k))
    probe = dataset.peek(owner)
    layer_record(backend, layer, owner)
    first = backend.activations(probe, [layer])[layer]  # also sizes the backend's records to the data
    if first.ndim != 4:
        raise param_error("layer", owner, "a layer with a spatial (C, H, W) output",
                          f"{layer!r} of shape {first.shape[1:]}")
    chosen = channel_list(channels, first.shape[1], owner)
    field = _field_of(backend, layer, owner)
    step = ActivationStep(model if client is not None else backend, [layer], _UnitMaxima(layer, chosen, field),
                          backend=backend)
    summary = scan(dataset, step, lambda: TopK(k, len(chosen)), batch_size=batch_size, client=client,
                   progress=progress, owner=owner, desc=f"top patches {layer}")
    if summary.seen < k:
        raise param_error("k", owner, f"<= the number of images in the dataset ({summary.seen})", str(k))
    locations = summary.payload["location"]
    (sy, ay, by), (sx, ax, bx) = field
    ys, xs = locations[..., 0], locations[..., 1]
    boxes = np.stack([sy * ys + ay, sx * xs + ax, sy * ys + by + 1, sx * xs + bx + 1], axis=-1)
    result = TopPatches(layer, chosen, summary.values, summary.keys, locations, boxes, summary.payload["patch"])
    if rule is not None:
        result.gradients = _unit_gradients(backend, layer, chosen, result, probe.shape[1:], first.shape[1:],
                                           batch_size_for(batch_size, dataset.image_size, owner), rule)
        result.rule = rule
    return result


def _field_of(backend, layer, owner):
    """((S, a, b) rows, (S, a, b) columns): unit y covers rows S y + a .. S y + b."""
    (t0, l0, b0, r0), (sy, sx) = unit_boxes(backend, layer, 0, 0, owner=owner)
    return (int(sy), int(t0), int(b0) - 1), (int(sx), int(l0), int(r0) - 1)


def _unit_gradients(backend, layer, chosen, result, image_shape, layer_shape, batch_size, rule):
    """The gradient of every kept unit under ``rule``, cropped to its box."""
    entries = [(i, j) for i in range(len(chosen)) for j in range(result.k)]
    out = np.zeros_like(result.patches)
    worst = 0.0
    for s in range(0, len(entries), batch_size):
        part = entries[s:s + batch_size]
        canvas = np.zeros((len(part), *image_shape), np.float32)
        seeds = np.zeros((len(part), *layer_shape), np.float32)
        for n, (i, j) in enumerate(part):
            t, l, b, r = result.boxes[i, j]
            ct, cl, cb, cr = max(t, 0), max(l, 0), min(b, image_shape[1]), min(r, image_shape[2])
            canvas[n, :, ct:cb, cl:cr] = result.patches[i, j][:, ct - t:cb - t, cl - l:cr - l]
            y, x = result.locations[i, j]
            seeds[n, chosen[i], y, x] = 1.0
        g = backend.gradient(canvas, {layer: seeds}, wrt=["input"], rule=rule)
        acts = g.activations[layer]
        for n, (i, j) in enumerate(part):
            y, x = result.locations[i, j]
            got, want = acts[n, chosen[i], y, x], result.values[i, j]
            worst = max(worst, abs(float(got) - float(want)) / max(abs(float(want)), 1e-6))
            out[i, j] = _crop(g.grads["input"][n], result.boxes[i, j])
    if worst > 1e-3:
        warnings.warn(f"Units of {layer!r} changed value by up to {worst:.1%} when their patch was shown alone: the "
                      "model looks beyond the geometric receptive field (global pooling or attention before this "
                      "layer?), so the gradient pictures are approximate.", stacklevel=3)
    return out
