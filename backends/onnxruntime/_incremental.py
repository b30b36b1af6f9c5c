"""Exact incremental occlusion on ONNX Runtime (Nakandala, Kumar and Papakonstantinou, SIGMOD
2019, "Incremental and Approximate Inference for Faster Occlusion-based Deep CNN Explanations").

:func:`incremental_plan` is the backend's ``_incremental_plan`` (the contract is in
:mod:`convscope._incremental`). Per input size, window size and threshold it builds, once,
the crop-wise graph of :mod:`._incremental_graph` and the boxes of every tensor for every
window position (a table per axis: the rows of a window decide its boxes' rows, its columns
their columns). Per image it runs the model once for the original activations the crops are
pasted into, padded and flattened for the graph's gathers. Per batch of patches it looks the
boxes up, computes the gathers' int64 indices in NumPy, and makes one session call (one
session per window size and batch size, cached with the backend's other sessions; a model
whose file fixes the batch runs the batch in pieces of that size). On a GPU provider the
originals are copied to the device once per image and bound there (I/O binding); each batch
sends its patches and indices and brings back only the scores.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from convscope._incremental import NotIncremental, window_region
from convscope._validate import check_finite, describe, param_error

from ._geometry import Folder
from ._incremental_graph import PATCHES, CropGraph, crop_graph
from ._shapes import FLOAT

__all__ = ["incremental_plan", "IncrementalPlan"]

_INT64 = 7  # onnx.TensorProto.INT64
#: a plan whose crop-wise part saves less than this share of the multiply-adds is refused when an
#: operator, not the receptive field, ends it (attention, an SE gate in the first block)
_MIN_SAVING = 0.1
_OWNER = "the incremental plan"


@dataclass
class _Structure:
    graph: CropGraph
    size: tuple
    shape: tuple
    key: tuple
    info: dict


def _structure(backend, chw, window, threshold):
    key = ("incremental", chw, window, threshold)
    cache = backend.__dict__.setdefault("_incremental_structures", {})
    with backend._lock:
        if key in cache:
            return cache[key]
        graph = backend.graph
        shapes = backend._shapes_for(chw)[0]
        height, width = chw[1:]
        size = (min(window[0], height), min(window[1], width))
        t = np.arange(max(height - size[0], width - size[1]) + 1)
        corners = np.stack([np.minimum(t, height - size[0]), np.minimum(t, width - size[1])], axis=1)
        region = window_region(corners, size, (height, width))
        folder = Folder(graph, backend._dependent, shapes)
        walked = crop_graph(graph, shapes, folder, backend._dependent, region, threshold)
        if not walked.cropped or walked.work >= 1 - 1e-9:  # no multiply-add saved
            stop = walked.full_from or "the window covering the whole image"
            raise NotIncremental(f"the ONNX model has no incremental path for a {size[0]}x{size[1]} window: "
                                 f"no conv works on crops, {stop} needs whole maps; plain occlusion is as fast")
        if walked.forced and walked.work > 1 - _MIN_SAVING:
            raise NotIncremental(f"the ONNX model's {walked.full_from} needs whole maps early: a patch would "
                                 f"still cost {walked.work:.0%} of the forward's multiply-adds")
        # the keys of the torch backend's plan, and what is the ONNX graph's own
        info = {"method": "incremental (Krypton: a crop-wise ONNX graph recomputes each window's projective field)",
                "approximate": threshold, "conv_work": round(walked.work, 4), "full_maps_from": walked.full_from,
                "backend": "onnxruntime", "cropped_nodes": walked.cropped}
        cache[key] = _Structure(walked, size, (height, width), key, info)
        return cache[key]


def _padded(value, pads, fill):
    return np.pad(value, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])), constant_values=fill)


def _originals(backend, walked, image):
    """The graph's padded originals, channels last ({input name: (Hp Wp, C or 1) float32}) for ``image``."""
    graph = backend.graph
    wanted = sorted({src for kind, src, *_ in walked.originals.values() if kind == "activation" and src != graph.image})
    with backend._lock:
        values = dict(zip(wanted, backend._runner.forward(image, wanted))) if wanted else {}
    values[graph.image] = image
    feeds = {}
    for name, (kind, src, pads, fill, inner) in walked.originals.items():
        if kind == "activation":
            value = check_finite(values[src][:1], repr(src), "occlusion")[0]
            feeds[name] = np.ascontiguousarray(_padded(value, pads, fill).transpose(1, 2, 0).reshape(-1, len(value)),
                                               np.float32)
        else:
            h, w = backend._shapes_for(tuple(image.shape[1:]))[0][src][2:]
            mask = np.zeros((1, h + pads[0] + pads[2], w + pads[1] + pads[3]), np.float32)
            top, left = pads[0] - inner[0], pads[1] - inner[1]
            mask[:, top:pads[0] + h + inner[2], left:pads[1] + w + inner[3]] = fill
            mask[:, pads[0]:pads[0] + h, pads[1]:pads[1] + w] = 1
            feeds[name] = mask.reshape(-1, 1)
    return feeds


def _lookup(region, corners):
    """The batch's box starts (B, 2) on ``region``'s map for windows at ``corners`` (B, 2)."""
    return np.stack([region.starts[corners[:, 0], 0], region.starts[corners[:, 1], 1]], axis=1)


def _indices(gather, corners):
    """(B, ih, iw) int64 rows of the gather's box in [original (Hp Wp) | crops (B h w)]."""
    q = _lookup(gather.box, corners)
    ih, iw = gather.box.size
    hp, wp = gather.box.shape
    rows = q[:, 0, None] + np.arange(ih)
    cols = q[:, 1, None] + np.arange(iw)
    flat = rows[:, :, None] * wp + cols[:, None, :]
    if gather.crop is None:
        return flat
    s = _lookup(gather.crop_region, corners)
    h, w = gather.crop_region.size
    ry = rows - gather.pads[0] - s[:, 0, None]
    rx = cols - gather.pads[1] - s[:, 1, None]
    inside = ((ry >= 0) & (ry < h))[:, :, None] & ((rx >= 0) & (rx < w))[:, None, :]
    pasted = hp * wp + np.arange(len(q))[:, None, None] * (h * w) + ry[:, :, None] * w + rx[:, None, :]
    return np.where(inside, pasted, flat)


class IncrementalPlan:
    """Scores of one image with patches pasted in, through the crop-wise graph (see the module)."""

    def __init__(self, backend, structure, feeds):
        self._backend, self._structure = backend, structure
        #: (device, id) of a GPU provider's sessions: the originals go there once, per image
        self._device = getattr(backend._sessions, "device", None)
        if self._device is not None:
            feeds = {name: backend._runner._on_device(value, self._device) for name, value in feeds.items()}
        self._feeds = feeds
        self.info = dict(structure.info)

    def _session(self, batch):
        backend, walked = self._backend, self._structure.graph
        scores = backend.graph.scores
        inputs = {PATCHES: FLOAT, **{name: FLOAT for name in walked.originals},
                  **{g.index: _INT64 for g in walked.gathers}}
        return backend._sessions.session((*self._structure.key, batch), lambda: backend._sessions.model(
            walked.nodes, inputs, [scores], walked.initializers, {scores: FLOAT}))

    def _check(self, patches, corners):
        c = self._backend.channels
        size, (height, width) = self._structure.size, self._structure.shape
        patches = np.asarray(patches)
        if patches.ndim != 4 or patches.shape[2:] != size or (c and patches.shape[1] != c) or not len(patches):
            raise param_error("patches", _OWNER, f"(B, {c}, {size[0]}, {size[1]}) float32", describe(patches))
        corners = np.asarray(corners)
        if corners.shape != (len(patches), 2) or corners.dtype.kind not in "iu":
            raise param_error("corners", _OWNER, f"({len(patches)}, 2) ints", describe(corners))
        if (corners < 0).any() or (corners[:, 0] > height - size[0]).any() or (corners[:, 1] > width - size[1]).any():
            raise param_error("corners", _OWNER, f"tops in [0, {height - size[0]}] and lefts in [0, {width - size[1]}]",
                              f"{corners.min(axis=0).tolist()} to {corners.max(axis=0).tolist()}")
        return np.ascontiguousarray(patches, np.float32), corners.astype(np.int64)

    def scores(self, patches, corners):
        """(B, K) float32 scores of the image with ``patches[b]`` pasted at ``corners[b]``."""
        patches, corners = self._check(patches, corners)
        backend, walked = self._backend, self._structure.graph
        n = len(patches)
        step = backend.graph.fixed_batch or n
        parts = []
        for start in range(0, n, step):
            stop = min(start + step, n)
            take = np.concatenate([np.arange(start, stop), np.full(step - (stop - start), start)])
            feeds = {PATCHES: patches[take], **self._feeds}
            feeds.update({g.index: _indices(g, corners[take]) for g in walked.gathers})
            scores = backend.graph.scores
            with backend._lock:
                session = self._session(step)
                if self._device is None:
                    out = backend._runner._call(session, [scores], feeds, patches.shape)[0]
                else:  # patches and indices copied in, the originals bound where they are, scores to the host
                    out = backend._runner._bound(session, [scores], {scores}, self._device, feeds,
                                                 patches.shape)[0].numpy()
            parts.append(out[:stop - start])
        return check_finite(np.concatenate(parts) if len(parts) > 1 else parts[0], "the output", "occlusion")


def incremental_plan(backend, image, window, threshold=None):
    """``OnnxBackend._incremental_plan``: see :mod:`convscope._incremental`."""
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number))
                                  or not 0 < threshold <= 1):
        raise param_error("threshold", _OWNER, "None (exact) or a number in (0, 1]", describe(threshold))
    image = np.ascontiguousarray(image, np.float32)
    window = tuple(int(v) for v in window)
    structure = _structure(backend, tuple(int(d) for d in image.shape[1:]), window,
                           None if threshold is None else float(threshold))
    return IncrementalPlan(backend, structure, _originals(backend, structure.graph, image))
