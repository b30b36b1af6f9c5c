"""Scoring images that each differ from one base image only inside a box, through the
backend's incremental plan when it has one (:mod:`convscope._incremental`; Nakandala, Kumar
and Papakonstantinou, SIGMOD 2019), for the sliding-window computations other than occlusion:
feature ablation over small features and the early steps of deletion and insertion curves.

A method makes one :class:`IncrementalRuns` for its call; per base image it asks
:meth:`IncrementalRuns.plan` for a plan of one box size (None: take the plain path), scores
batches of patches through :meth:`IncrementalRuns.scores`, and puts
:meth:`IncrementalRuns.info` in its result's ``info``. The boxes themselves come from
:func:`feature_boxes` (the bounding box of every label) and :func:`growing_boxes` (the box
of the top-k pixels of a ranking, for every k).
"""
from __future__ import annotations

import numpy as np

from ._incremental import NotIncremental, incremental_plan, window_region
from ._validate import describe, param_error

__all__ = ["INCREMENTAL_MODES", "MAX_BOX_SIDE", "MIN_EVALUATIONS", "check_incremental", "small_enough",
           "IncrementalRuns", "feature_boxes", "growing_boxes", "box_indices", "crop"]

#: ``incremental=``: "auto" (the plan when the model has one and the boxes are small), True
#: (the plan for every box, or an error saying why there is none), False (the plain forward).
INCREMENTAL_MODES = ("auto", True, False)

#: With ``incremental="auto"``, a box is routed through the plan when each of its sides is at
#: most this fraction of the image's side (a quarter of its area). Past it a crop's projective
#: field covers the map after the first few layers and the plan only adds its gathers.
MAX_BOX_SIDE = 0.5

#: With ``incremental="auto"``, an image gets a plan only when at least this many of its
#: evaluations fit small boxes: building a plan costs 0.4-4 forwards of the image (ResNet-18 at
#: 224, torch and ONNX Runtime, one thread); on the 64 x 64 demo model 16 windows of 16 pixels
#: an image ran 1.15-1.26x slower through the plan than plainly, 64 windows of 8 pixels 0.5-0.6x;
#: on ResNet-18 at 224, 49 windows of 32 pixels 0.80-0.86x, 196 of 16 pixels 0.43-0.65x
#: (benchmarks/incremental_windows_speed.py, a loaded machine).
MIN_EVALUATIONS = 32


def check_incremental(incremental, owner):
    """``incremental`` checked: one of :data:`INCREMENTAL_MODES` (bools and the string only)."""
    if incremental is True or incremental is False or (isinstance(incremental, str) and incremental == "auto"):
        return incremental
    raise param_error("incremental", owner, "'auto', True or False", describe(incremental),
                      ValueError if isinstance(incremental, str) else TypeError)


def small_enough(size, shape):
    """True when a box of ``size`` (h, w) is small enough on a map of ``shape`` for "auto"."""
    return size[0] <= MAX_BOX_SIDE * shape[0] and size[1] <= MAX_BOX_SIDE * shape[1]


class IncrementalRuns:
    """The incremental path of one method call: plans per base image, and what happened.

    ``mode`` is a checked ``incremental=`` value. A NotIncremental from the backend ends
    the incremental path for the call (the reason is the model's, not the image's); with
    ``mode=True`` it raises instead, naming the reason."""

    def __init__(self, backend, mode, owner):
        self.backend, self.mode, self.owner = backend, mode, owner
        self.images, self.evaluated, self.plain, self.windows, self.plan_info = 0, 0, 0, set(), None
        self.refused, self.too_large, self.too_few = None, 0, 0

    def note_too_large(self, count):
        """Note ``count`` evaluations that "auto" leaves to the plain path for their box's size."""
        self.too_large += int(count)

    def plan(self, image, window, evaluations):
        """A plan for ``image`` (1, C, H, W) and boxes of ``window`` (h, w) for ``evaluations``
        images, or None: the plain path (incremental=False, the backend has no plan, or
        "auto" and the box is too large or the evaluations too few to pay for the plan)."""
        if self.mode is False or self.refused is not None:
            return None
        if self.mode == "auto" and not small_enough(window, image.shape[2:]):
            self.too_large += evaluations
            return None
        if self.mode == "auto" and evaluations < MIN_EVALUATIONS:
            self.too_few += evaluations
            return None
        try:
            plan = incremental_plan(self.backend, image, window)
        except NotIncremental as e:
            if self.mode is True:
                raise param_error("incremental", self.owner, "'auto' or False for this model, which has no "
                                  "incremental path", f"True ({e})") from None
            self.refused = str(e)
            return None
        self.images += 1
        self.windows.add(tuple(int(v) for v in window))
        self.plan_info = getattr(plan, "info", None) or {}
        return plan

    def scores(self, plan, patches, corners):
        """(B, K) float32 outputs of the base image with ``patches`` pasted at ``corners``."""
        self.evaluated += len(patches)
        return np.asarray(plan.scores(np.ascontiguousarray(patches, np.float32), np.asarray(corners, np.int64)),
                          np.float32)

    def info(self):
        """What to merge into the result's ``info``, with the keys occlusion uses:
        ``incremental`` (True when any evaluation went through a plan), ``plan`` (the last
        plan's own info), ``incremental_why`` (why some or all went the plain path), and the
        counts ``incremental_images``, ``incremental_evaluated``, ``incremental_windows``
        (the box sizes), ``plain_evaluated``."""
        out = {"incremental": self.images > 0, "incremental_evaluated": self.evaluated,
               "plain_evaluated": self.plain}
        if self.images:
            out.update(incremental_images=self.images, incremental_windows=sorted(self.windows), plan=self.plan_info)
        why = []
        if self.mode is False:
            why.append("incremental=False was passed")
        if self.refused is not None:
            why.append(f"no incremental path: {self.refused}")
        if self.too_large:
            why.append(f"{self.too_large} evaluations had a box with a side over {MAX_BOX_SIDE:g} of the image's "
                       "(incremental='auto': the plain forward is as fast there)")
        if self.too_few:
            why.append(f"{self.too_few} evaluations were on images with fewer than {MIN_EVALUATIONS} small boxes "
                       "(incremental='auto': too few to pay for a plan)")
        if why and self.plain:
            out["incremental_why"] = "; ".join(why)
        return out


def feature_boxes(labels, count):
    """(count, 4) int64 bounding boxes ``(top, left, bottom, right)`` (bottom and right
    exclusive) of labels 0..count-1 in ``labels`` (H, W); an absent label gets an empty box."""
    h, w = labels.shape
    rows = np.zeros((count, h), bool)
    cols = np.zeros((count, w), bool)
    rows[labels, np.arange(h)[:, None]] = True
    cols[labels, np.arange(w)[None, :]] = True
    present = rows.any(axis=1)
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    bottom, right = h - rows[:, ::-1].argmax(axis=1), w - cols[:, ::-1].argmax(axis=1)
    boxes = np.stack([top, left, bottom, right], axis=1)
    boxes[~present] = 0
    return boxes.astype(np.int64)


def growing_boxes(order, width):
    """(P, 4) boxes ``(top, left, bottom, right)`` of the first k+1 pixels of ``order`` (flat
    pixel indices, most important first) for k = 0..P-1, on rows of ``width`` pixels."""
    r, c = np.divmod(np.asarray(order, np.int64), width)
    return np.stack([np.minimum.accumulate(r), np.minimum.accumulate(c),
                     np.maximum.accumulate(r) + 1, np.maximum.accumulate(c) + 1], axis=1)


def box_indices(corners, window, shape):
    """Pixel indices ``rows`` (B, h, 1) and ``cols`` (B, 1, w) of the boxes of ``window`` at
    ``corners`` (B, 2), moved inside a map of ``shape`` (the same size for all), and their starts."""
    region = window_region(corners, window, shape)
    h, w = region.size
    rows = (region.starts[:, 0, None] + np.arange(h))[:, :, None]
    cols = (region.starts[:, 1, None] + np.arange(w))[:, None, :]
    return rows, cols, region.starts


def crop(image, rows, cols):
    """(B, C, h, w) crops of ``image`` (C, H, W) at ``rows`` (B, h, 1), ``cols`` (B, 1, w)."""
    return image[:, rows, cols].transpose(1, 0, 2, 3)
