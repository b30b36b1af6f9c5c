"""Pieces of the microscope report: the method grids (column headers, row captions, colour
scales, readable tone mapping), the timed sections, and the Network Dissection section."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..render.annotate import colour_bar, enlarge, stack, with_headers, with_row_labels
from ..render.image import grid, save_png, to_rgb

__all__ = ["Run", "readable", "outlined", "scale_labels", "method_grid", "dissection_section"]

#: How much larger than the data's 64-pixel images the grids are drawn (nearest pixels).
GRID_SCALE = 2


class Run:
    """The report being built: sections timed and logged as they start, pictures saved as
    ``images/NAME.png`` beside the page, and the seconds each section took."""

    def __init__(self, report, folder: Path, log=None):
        self.report, self.folder, self.log = report, Path(folder), log or (lambda text: None)
        self.start = self._last = time.perf_counter()
        self._cpu = time.process_time()
        self.current = None
        self.seconds: dict = {}
        self.cpu: dict = {}  # process CPU seconds per section (all threads): the work, whatever the load

    def section(self, heading: str, what: str = ""):
        self._close()
        self.current = heading
        self.report.section(heading)
        self.log(f"[{time.perf_counter() - self.start:6.1f} s] {heading}" + (f": {what}" if what else ""))

    def _close(self):
        now, cpu = time.perf_counter(), time.process_time()
        if self.current is not None:
            self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self._last
            self.cpu[self.current] = self.cpu.get(self.current, 0.0) + cpu - self._cpu
        self._last, self._cpu = now, cpu

    def finish(self) -> dict:
        self._close()
        self.current = None
        return dict(self.seconds)

    def add(self, name, picture, caption, scale=1):
        rgb = picture.to_rgb() if hasattr(picture, "to_rgb") else np.asarray(picture)
        save_png(rgb, self.folder / f"{name}.png", scale=scale)
        self.report.picture(rgb, caption, scale=scale)


def readable(result):
    """``(result, tone)``: the result drawn with its default tone mapping, or with
    ``"percentile"`` (clipped at the 99th percentile of |m|) when the default leaves most
    of the map near the colour of zero, as for integrated gradients, whose few strong
    pixels set the scale."""
    default = result.tone or ("symmetric" if result.signed else "minmax")
    values = result.normalized(default)
    if result.signed:  # faint: 99% of the pixels within 60% of zero's colour
        faint = float(np.percentile(np.abs(values - 0.5), 99)) < 0.3
    else:  # faint: 95% of the pixels in the bottom fifth of the colour map
        faint = float(np.percentile(values, 95)) < 0.2
    if faint:
        return result.styled(tone="percentile", percentile=99.0), "percentile"
    return result, default


def scale_labels(tone: str, signed: bool) -> tuple:
    """(low, middle, high) labels of the colour scale of maps drawn with ``tone``."""
    if tone == "percentile":
        return ("-p99 of |m|", "0", "+p99 of |m| (clipped)") if signed else ("0", "", "p99 of |m| (clipped)")
    if tone in ("symmetric", "symmetric-batch"):
        return "-max|m|", "0", "+max|m|"
    return "min", "", "max"


def outlined(image, mask, colour=(1.0, 0.9, 0.0)):
    """The image with the boundary of a boolean mask drawn in ``colour`` (yellow)."""
    rgb = to_rgb(image).copy()
    m = np.asarray(mask, bool)
    inner = m & np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1)
    rgb[m & ~inner] = colour
    return rgb


def method_grid(results: dict, images, masks=None, row_labels=None):
    """Rows: images; columns: the image, its mask (if any), one overlay per method, each column
    headed by its method (and the tone mapping where it is not the default); colour scales for
    each colour map and tone mapping used underneath. Returns (picture, tones)."""
    drawn, tones = {}, {}
    for name, r in results.items():
        drawn[name], tones[name] = readable(r)
    heads = ["image" + (", mask outlined" if masks is not None else "")]
    heads += [n + (" (percentile)" if tones[n] == "percentile" else "") for n in results]
    overlays = [r.overlays() for r in drawn.values()]
    tiles = []
    for i in range(len(images)):
        tiles.append(to_rgb(images[i]) if masks is None else outlined(images[i], masks[i]))
        tiles += [o[i] for o in overlays]
    pad = 2
    body = enlarge(grid(tiles, ncols=len(heads), pad=1), GRID_SCALE)
    picture = with_headers(body, heads, cell=images.shape[-1] * GRID_SCALE, pad=pad)
    if row_labels is not None:
        picture = with_row_labels(picture, row_labels, cell=images.shape[-2] * GRID_SCALE, pad=pad, width=112)
    bars = []
    for key in sorted({(r._cmap(), tones[n]) for n, r in drawn.items()}):
        cmap, tone = key
        users = [n for n, r in drawn.items() if (r._cmap(), tones[n]) == key]
        low, mid, high = scale_labels(tone, drawn[users[0]].signed)
        bars.append(colour_bar(cmap, low, high, middle=mid, label=f"{cmap}, tone '{tone}', each map on its own "
                               "scale: " + ", ".join(users), width=300))
    return stack([picture] + bars), tones


def dissection_section(run, results: dict, last: str, *, units: int = 4, k: int = 4):
    """One section: the detector chart for every layer, the table and top units of ``last``."""
    from ..dissection import compare

    d = results[last]
    rows = d.table()
    run.add("dissection", compare(results), "unique detectors per category, " + " and ".join(results))
    run.report.text(f"{last}: threshold at the top {d.quantile:g} of each unit's activations; a unit is a detector "
                    f"when its best IoU exceeds {d.iou_threshold:g}. {len(d.detectors())} of {len(rows)} units are "
                    "detectors.")
    run.report.table(rows[:12], ["unit", "concept", "category", "iou", "detector"])
    for r in rows[:units]:
        run.report.picture(d.unit_picture(r["unit"], k), f"{last} unit {r['unit']}: {r['concept']} (IoU {r['iou']:.3f}); "
                           "yellow outline: where the unit fires above its threshold; blue-green tint: the "
                           "concept's mask", scale=2)
