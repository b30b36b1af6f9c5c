"""Two charts drawn with Pillow (no matplotlib needed): a labelled matrix of coloured cells
(methods x metrics) and line charts (deletion and insertion curves)."""
from __future__ import annotations

import numpy as np

from .annotate import _fit_text, _text_width, font
from .chart import PALETTE
from .colormaps import apply_colormap

__all__ = ["score_matrix", "line_chart"]

_INK = (29, 36, 51)


def score_matrix(row_labels, column_labels, colour_values, texts, *, title: str = "", cmap: str = "viridis",
                 cell: tuple = (118, 30), note: str = "") -> np.ndarray:
    """A matrix of cells, each filled by ``colour_values[i, j]`` in [0, 1] through ``cmap``
    (NaN: a grey cell) and labelled with ``texts[i][j]``; rows and columns named. Returns an
    (H, W, 3) RGB picture in [0, 1]."""
    from PIL import Image, ImageDraw

    values = np.asarray(colour_values, np.float64).reshape(len(row_labels), len(column_labels))
    f, f_title = font(13), font(15)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = 12 + min(320, max([_text_width(probe, str(r), f) for r in row_labels] + [40]))
    cw, ch = cell
    top = (28 if title else 6) + 22
    width = left + cw * len(column_labels) + 12
    height = top + ch * len(row_labels) + (24 if note else 8)
    img = Image.new("RGB", (max(width, 8 + _text_width(probe, title, f_title)), height), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((10, 6), title, fill=_INK, font=f_title)
    for j, name in enumerate(column_labels):
        text = _fit_text(draw, str(name), f, cw - 6)
        draw.text((left + j * cw + (cw - _text_width(draw, text, f)) // 2, top - 20), text, fill=_INK, font=f)
    colours = apply_colormap(np.nan_to_num(values, nan=0.0), cmap)
    for i, name in enumerate(row_labels):
        y = top + i * ch
        draw.text((8, y + (ch - 13) // 2), _fit_text(draw, str(name), f, left - 12), fill=_INK, font=f)
        for j in range(len(column_labels)):
            x = left + j * cw
            known = np.isfinite(values[i, j])
            fill = tuple(int(255 * c) for c in colours[i, j]) if known else (215, 215, 215)
            draw.rectangle([x + 1, y + 1, x + cw - 1, y + ch - 1], fill=fill)
            light = known and float(np.dot(colours[i, j], (0.299, 0.587, 0.114))) < 0.5
            text = _fit_text(draw, str(texts[i][j]), f, cw - 6)
            draw.text((x + (cw - _text_width(draw, text, f)) // 2, y + (ch - 13) // 2), text,
                      fill="white" if light else _INK, font=f)
    if note:
        draw.text((8, height - 20), note, fill=(90, 90, 90), font=font(12))
    return np.asarray(img, np.float32) / 255


def line_chart(x, series: dict, *, title: str = "", xlabel: str = "", ylabel: str = "", width: int = 520,
               height: int = 300) -> np.ndarray:
    """Lines ``series[name]`` (one y per ``x``) on shared axes, with a legend. Returns an
    (H, W, 3) RGB picture in [0, 1]."""
    from PIL import Image, ImageDraw

    x = np.asarray(x, np.float64)
    names = list(series)
    ys = np.array([np.asarray(series[n], np.float64) for n in names]).reshape(len(names), len(x))
    f = font(12)
    legend = 16 * len(names)
    img = Image.new("RGB", (width, height + legend), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 56, width - 24, 30 if title else 10, height - 36
    if title:
        draw.text((10, 6), title, fill=_INK, font=font(14))
    finite = ys[np.isfinite(ys)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1 = (float(x.min()), float(x.max())) if len(x) > 1 and x.max() > x.min() else (0.0, 1.0)

    def px(xv, yv):
        return left + (xv - x0) / (x1 - x0) * (right - left), bottom - (yv - lo) / (hi - lo) * (bottom - top)

    draw.rectangle([left, top, right, bottom], outline=(150, 150, 150))
    for t in np.linspace(0, 1, 5):
        yv = lo + t * (hi - lo)
        _, yp = px(x0, yv)
        draw.line([left - 4, yp, left, yp], fill=(150, 150, 150))
        draw.text((4, yp - 7), f"{yv:.3g}", fill=_INK, font=f)
        xv = x0 + t * (x1 - x0)
        xp, _ = px(xv, lo)
        draw.line([xp, bottom, xp, bottom + 4], fill=(150, 150, 150))
        label = f"{xv:.2g}"
        draw.text((xp - _text_width(draw, label, f) / 2, bottom + 6), label, fill=_INK, font=f)
    if xlabel:
        draw.text(((left + right - _text_width(draw, xlabel, f)) / 2, bottom + 20), xlabel, fill=_INK, font=f)
    if ylabel:
        draw.text((left + 4, top + 2), ylabel, fill=(90, 90, 90), font=f)
    for k, name in enumerate(names):
        colour = tuple(int(255 * c) for c in PALETTE[k % len(PALETTE)])
        points = [px(a, b) for a, b in zip(x, ys[k]) if np.isfinite(b)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        y = height + 16 * k
        draw.rectangle([left, y + 3, left + 14, y + 11], fill=colour)
        draw.text((left + 20, y), _fit_text(draw, str(name), f, width - left - 30), fill=_INK, font=f)
    return np.asarray(img, np.float32) / 255
