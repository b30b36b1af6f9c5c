"""The result of a dissection: IoU table, unit labels, detector counts, report and comparisons."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._validate import check_int, param_error
from ..render import Picture, Renderable, bar_chart, grid, resize, to_rgb

__all__ = ["Dissection", "compare", "label_changes"]


@dataclass
class Dissection(Renderable):
    """IoU of every (unit, concept) pair of one layer, with the counts behind it.

    ``iou`` (U, C); ``thresholds`` (U,); ``intersection``/``union`` (U, C) integer pixel
    counts; ``mask_counts`` (C,); ``unit_maxima`` (N, U), each image's peak per unit.
    """

    layer: str
    concepts: list
    categories: dict
    iou: np.ndarray
    thresholds: np.ndarray
    intersection: np.ndarray
    union: np.ndarray
    mask_counts: np.ndarray
    unit_maxima: np.ndarray
    iou_threshold: float = 0.04
    quantile: float = 0.005
    empty_concepts: list = field(default_factory=list)
    _source: object = field(default=None, repr=False)
    _model: object = field(default=None, repr=False)
    _options: dict = field(default_factory=dict, repr=False)

    def category_of(self, concept: str) -> str:
        return next((cat for cat, names in self.categories.items() if concept in names), "")

    @property
    def best(self) -> np.ndarray:
        """Index of each unit's best concept (U,)."""
        return self.iou.argmax(axis=1)

    def table(self) -> list:
        """One row per unit, best IoU first: unit, concept, category, iou, detector."""
        rows = []
        for u, c in enumerate(self.best):
            concept = self.concepts[c]
            rows.append(dict(unit=u, concept=concept, category=self.category_of(concept), iou=float(self.iou[u, c]),
                             detector=bool(self.iou[u, c] > self.iou_threshold)))
        return sorted(rows, key=lambda r: (-r["iou"], r["unit"]))

    def detectors(self) -> list:
        """Rows of :meth:`table` for units whose best IoU exceeds ``iou_threshold``."""
        return [r for r in self.table() if r["detector"]]

    def unique_detectors(self) -> dict:
        """Per category, how many distinct concepts have at least one detector unit."""
        found = {r["concept"] for r in self.detectors()}
        return {cat: sum(c in found for c in names) for cat, names in self.categories.items()}

    def top_images(self, unit: int, k: int = 4) -> np.ndarray:
        """Indices of the ``k`` images where ``unit`` peaks highest (ties: lower index first)."""
        unit = check_int(unit, "unit", "Dissection.top_images", low=0, high=self.unit_maxima.shape[1] - 1)
        k = check_int(k, "k", "Dissection.top_images", low=1)
        values = self.unit_maxima[:, unit]
        return np.lexsort((np.arange(len(values)), -values))[:k]

    def to_rgb(self) -> np.ndarray:
        counts = self.unique_detectors()
        return bar_chart(list(counts), {self.layer: list(counts.values())},
                         title=f"unique detectors in {self.layer} (IoU > {self.iou_threshold:g})")

    # ------------------------------------------------------------------ report
    def unit_picture(self, unit: int, k: int = 4) -> np.ndarray:
        """The unit's top images, each with the region above its threshold outlined in
        yellow and the best concept's mask tinted and outlined in cyan."""
        from .._plugins import load

        if self._source is None:
            raise ValueError("This Dissection holds no data source (it was built by hand); pass one to dissect().")
        backend = load(self._model, **self._options)
        concept = int(self.best[unit])
        tiles = []
        for i in self.top_images(unit, k):
            images, masks = next(iter(self._source.batches(1, int(i), int(i) + 1)))
            act = backend.activations(images, [self.layer])[self.layer][0, unit]
            hm, wm = masks.shape[2:]
            region = resize(act, (hm, wm)) >= self.thresholds[unit]
            rgb = resize(to_rgb(images[0]).transpose(2, 0, 1), (hm, wm)).transpose(1, 2, 0)
            mask = masks[0, concept].astype(bool)
            rgb = np.where(mask[..., None], 0.6 * rgb + 0.4 * np.array([0, 1, 1], np.float32), rgb)
            rgb[_edge(mask)] = (0.0, 1.0, 1.0)  # the concept's outline in pure cyan, as the legend says
            rgb[_edge(region)] = (1.0, 0.9, 0.0)
            tiles.append(rgb)
        return grid(tiles, ncols=k)

    def add_to(self, report, *, units: int = 12, k: int = 4):
        """Add this dissection to a :class:`convscope.render.Report`: the detector chart, the
        table, and each top unit's images."""
        rows = self.table()
        report.section(f"Network Dissection of {self.layer}")
        report.text(f"Threshold: the top {self.quantile:g} of each unit's activations; a unit is a detector when "
                    f"its best IoU exceeds {self.iou_threshold:g}. {len(self.detectors())} of {len(rows)} units are detectors.")
        report.picture(self.to_rgb(), "unique detectors per category")
        report.table(rows, ["unit", "concept", "category", "iou", "detector"])
        if self._source is not None:
            for r in rows[:units]:
                report.picture(self.unit_picture(r["unit"], k), f"unit {r['unit']}: {r['concept']} (IoU {r['iou']:.3f}); "
                               "yellow: above threshold, cyan: the concept's mask", scale=2)
        return report

    def report(self, path, *, units: int = 12, k: int = 4) -> Path:
        """Write the HTML report (and a PNG of the detector chart beside it); returns the HTML path."""
        from ..render.image import save_png
        from ..render.report import Report

        path = self.add_to(Report(f"Network Dissection: {self.layer}"), units=units, k=k).write(path)
        save_png(self.to_rgb(), path.with_suffix(".png"))
        return path


def compare(dissections: dict, title: str = "unique detectors per category") -> Picture:
    """Bar chart of unique detectors per category for several layers or models (a dict
    ``{name: Dissection}``), all on the same categories."""
    if not dissections:
        raise ValueError("The 'dissections' parameter of compare must hold at least one Dissection. Got none instead.")
    bad = [name for name, d in dissections.items() if not isinstance(d, Dissection)]
    if bad:
        raise param_error("dissections", "compare", "a dict {name: Dissection}",
                          f"{type(dissections[bad[0]]).__name__} for {bad[0]!r}", TypeError)
    categories = list(next(iter(dissections.values())).categories)
    series = {name: [d.unique_detectors().get(c, 0) for c in categories] for name, d in dissections.items()}
    return Picture(bar_chart(categories, series, title=title), title)


def label_changes(before: Dissection, after: Dissection) -> list:
    """Units whose label changed between two dissections of the same layer (e.g. before and
    after fine-tuning): unit, label and IoU before and after, detector flags."""
    for param, value in (("before", before), ("after", after)):
        if not isinstance(value, Dissection):
            raise param_error(param, "label_changes", "a Dissection", type(value).__name__, TypeError)
    if before.iou.shape[0] != after.iou.shape[0]:
        raise ValueError(f"The 'after' parameter of label_changes must dissect as many units as 'before' "
                         f"({before.iou.shape[0]}). Got {after.iou.shape[0]} instead.")
    old = {r["unit"]: r for r in before.table()}
    new = {r["unit"]: r for r in after.table()}
    changes = []
    for u in sorted(old):
        a, b = old[u], new[u]
        label_a = a["concept"] if a["detector"] else None
        label_b = b["concept"] if b["detector"] else None
        if label_a != label_b:
            changes.append(dict(unit=u, before=label_a, after=label_b, iou_before=a["iou"], iou_after=b["iou"]))
    return changes


def _edge(region: np.ndarray) -> np.ndarray:
    """The pixels of a boolean region that touch its outside (4-neighbours)."""
    inner = np.roll(region, 1, 0) & np.roll(region, -1, 0) & np.roll(region, 1, 1) & np.roll(region, -1, 1)
    return region & ~inner
