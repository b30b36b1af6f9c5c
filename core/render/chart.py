"""Bar charts drawn with Pillow (no matplotlib needed): labels, values, a title."""
from __future__ import annotations

import numpy as np

__all__ = ["bar_chart"]

PALETTE = [(0.27, 0.47, 0.71), (0.93, 0.52, 0.18), (0.33, 0.66, 0.41), (0.77, 0.31, 0.32), (0.51, 0.45, 0.70),
           (0.58, 0.42, 0.30), (0.85, 0.52, 0.76), (0.55, 0.55, 0.55)]


def bar_chart(labels, series: dict, *, title: str = "", width: int = 640, bar_height: int = 18,
              value_format: str = "{:g}") -> np.ndarray:
    """Horizontal grouped bars: one group per label, one bar per series name.

    ``series`` maps a series name (a model, a layer) to one value per label. Returns an
    (H, W, 3) RGB picture in [0, 1].
    """
    from PIL import Image, ImageDraw

    from .._validate import param_error
    from .annotate import font as load_font

    labels = [str(x) for x in labels]
    names = list(series)
    for n in names:
        if np.shape(series[n]) != (len(labels),):
            raise param_error("series", "bar_chart", f"one value per label ({len(labels)}) in each series",
                              f"shape {np.shape(series[n])} for {n!r}")
    values = np.array([np.asarray(series[n], np.float64) for n in names]).reshape(len(names), len(labels))
    font = load_font(13)
    left = 12 + 8 * max([len(x) for x in labels] + [4])
    top = 30 if title else 8
    legend = 18 if len(names) > 1 else 0
    group = bar_height * len(names) + 8
    height = top + legend + group * len(labels) + 10
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((10, 8), title, fill="black", font=load_font(15))
    for k, name in enumerate(names if len(names) > 1 else []):
        x = left + k * 120
        draw.rectangle([x, top, x + 10, top + 10], fill=tuple(int(255 * c) for c in PALETTE[k % len(PALETTE)]))
        draw.text((x + 14, top), name[:16], fill="black", font=font)
    peak = max(values.max(), 1e-12)
    span = width - left - 70
    for i, label in enumerate(labels):
        y = top + legend + i * group
        draw.text((8, y + (group - 12) // 2), label, fill="black", font=font)
        for k in range(len(names)):
            yb = y + k * bar_height
            length = int(span * max(values[k, i], 0) / peak)
            colour = tuple(int(255 * c) for c in PALETTE[k % len(PALETTE)])
            draw.rectangle([left, yb + 2, left + max(length, 1), yb + bar_height - 2], fill=colour)
            draw.text((left + length + 4, yb + 3), value_format.format(values[k, i]), fill="black", font=font)
    return np.asarray(img, np.float32) / 255
