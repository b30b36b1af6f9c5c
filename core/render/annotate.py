"""Words on pictures: column headers over a grid, a caption band, a colour scale with its range,
and the integer enlargement that makes a small picture legible at 100% zoom."""
from __future__ import annotations

import numpy as np

from .._validate import check_int
from .colormaps import COLORMAPS, colormap
from .image import to_rgb

__all__ = ["font", "with_headers", "with_row_labels", "with_caption", "colour_bar", "enlarge", "legible_scale", "stack"]


def font(size: int = 13):
    """Pillow's bundled font at ``size`` pixels (a bitmap font where FreeType is missing)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType
        return ImageFont.load_default()


def _text_width(draw, text, f) -> int:
    box = draw.textbbox((0, 0), text, font=f)
    return box[2] - box[0]


def _fit_text(draw, text, f, width):
    """``text`` shortened with an ellipsis to fit ``width`` pixels."""
    if _text_width(draw, text, f) <= width:
        return text
    while len(text) > 1 and _text_width(draw, text + "…", f) > width:
        text = text[:-1]
    return text + "…"


def with_headers(rgb, names, *, cell: int, pad: int = 2, size: int = 13) -> np.ndarray:
    """Put one header per column above a grid of ``cell``-pixel-wide columns laid out by
    :func:`convscope.render.grid` with ``pad``. Long names are shortened with an ellipsis,
    or wrapped onto a second line at an underscore."""
    from PIL import Image, ImageDraw

    rgb = to_rgb(rgb)
    f = font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines = []
    for name in names:
        name = str(name)
        if _text_width(probe, name, f) > cell and (" (" in name or "_" in name):
            if " (" in name:  # "method (tone)": the note on a line of its own
                first, second = name.split(" (", 1)
                second = "(" + second
                if _text_width(probe, first, f) > cell and "_" in first:
                    cut = first.rfind("_", 0, len(first) // 2 + 3)
                    first, second = first[:cut + 1], first[cut + 1:] + " " + second
            else:
                cut = name.rfind("_", 0, max(1, len(name) // 2 + 3))
                cut = cut if cut > 0 else name.find("_")
                first, second = name[:cut + 1], name[cut + 1:]
            lines.append([_fit_text(probe, first, f, cell), _fit_text(probe, second, f, cell)])
        else:
            lines.append([_fit_text(probe, name, f, cell)])
    rows = max(len(x) for x in lines)
    band = rows * (size + 3) + 4
    img = Image.new("RGB", (rgb.shape[1], band), "white")
    draw = ImageDraw.Draw(img)
    for c, parts in enumerate(lines):
        x0 = pad + c * (cell + pad)
        for r, part in enumerate(parts):
            w = _text_width(draw, part, f)
            draw.text((x0 + max(0, (cell - w) // 2), 2 + r * (size + 3)), part, fill=(29, 36, 51), font=f)
    return np.concatenate([np.asarray(img, np.float32) / 255, rgb], axis=0)


def with_row_labels(rgb, labels, *, cell: int, pad: int = 2, width: int = 120, size: int = 12) -> np.ndarray:
    """Put a few lines of text (a list of strings per row) left of each row of a grid of
    ``cell``-pixel-high rows laid out by :func:`convscope.render.grid` with ``pad``; the
    first ``top`` pixels (headers) are left blank."""
    from PIL import Image, ImageDraw

    rgb = to_rgb(rgb)
    f = font(size)
    img = Image.new("RGB", (width, rgb.shape[0]), "white")
    draw = ImageDraw.Draw(img)
    top = rgb.shape[0] - (len(labels) * (cell + pad) + pad)  # a header band above the rows, if any
    for r, lines in enumerate(labels):
        lines = [str(x) for x in lines]
        y0 = top + pad + r * (cell + pad) + max(0, (cell - len(lines) * (size + 3)) // 2)
        for i, line in enumerate(lines):
            draw.text((4, y0 + i * (size + 3)), _fit_text(draw, line, f, width - 6), fill=(29, 36, 51), font=f)
    return np.concatenate([np.asarray(img, np.float32) / 255, rgb], axis=1)


def with_caption(rgb, lines, *, size: int = 14, above: bool = True) -> np.ndarray:
    """A white band of text lines above (or below) the picture."""
    from PIL import Image, ImageDraw

    rgb = to_rgb(rgb)
    lines = [str(x) for x in lines if str(x)]
    if not lines:
        return rgb
    f = font(size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    width = max(rgb.shape[1], 8 + max(_text_width(probe, x, f) for x in lines))
    img = Image.new("RGB", (width, len(lines) * (size + 5) + 6), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * (size + 5)), line, fill=(29, 36, 51), font=f)
    band = np.asarray(img, np.float32) / 255
    body = np.ones((rgb.shape[0], width, 3), np.float32)
    body[:, :rgb.shape[1]] = rgb
    return np.concatenate([band, body] if above else [body, band], axis=0)


def colour_bar(cmap: str = "jet", low: str = "0", high: str = "1", *, middle: str = "", label: str = "",
               width: int = 256, height: int = 12, size: int = 12) -> np.ndarray:
    """A horizontal colour scale: the colour map from left (``low``) to right (``high``),
    the two ends labelled, and ``label`` (what the values are, and their tone mapping) above."""
    from PIL import Image, ImageDraw

    if cmap not in COLORMAPS:
        raise ValueError(f"The 'cmap' parameter of colour_bar must be one of {', '.join(COLORMAPS)}. Got {cmap!r} instead.")
    width = check_int(width, "width", "colour_bar", low=16)
    table = colormap(cmap, width)
    f = font(size)
    top = size + 6 if label else 2
    f_label = _text_width(ImageDraw.Draw(Image.new("RGB", (1, 1))), label, f) + 8 if label else 0
    img = Image.new("RGB", (max(width + 8, f_label), top + height + size + 6), "white")
    draw = ImageDraw.Draw(img)
    if label:
        draw.text((4, 2), label, fill=(29, 36, 51), font=f)
    bar = Image.fromarray((np.repeat(table[None], height, 0) * 255 + 0.5).astype(np.uint8), "RGB")
    img.paste(bar, (4, top))
    draw.rectangle([3, top - 1, 4 + width, top + height], outline=(120, 120, 120))
    draw.text((4, top + height + 2), str(low), fill=(29, 36, 51), font=f)
    w = _text_width(draw, str(high), f)
    draw.text((4 + width - w, top + height + 2), str(high), fill=(29, 36, 51), font=f)
    if middle:
        w = _text_width(draw, str(middle), f)
        draw.text((4 + (width - w) // 2, top + height + 2), str(middle), fill=(29, 36, 51), font=f)
    return np.asarray(img, np.float32) / 255


def legible_scale(height: int, width: int, *, tile: int | None = None, target: int = 192, limit: int = 2400) -> int:
    """The integer enlargement that makes a ``tile``-pixel tile (default: the whole picture's
    shorter side) at least ``target`` pixels, keeping the width within ``limit``."""
    base = max(1, int(tile) if tile else min(height, width))
    scale = max(1, -(-target // base))
    return max(1, min(scale, limit // max(1, width)))


def enlarge(rgb, scale: int) -> np.ndarray:
    """Nearest-pixel enlargement by an integer factor (each value becomes a ``scale`` square)."""
    scale = check_int(scale, "scale", "enlarge", low=1)
    a = to_rgb(rgb)
    return a if scale == 1 else np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)


def stack(pictures, *, gap: int = 6) -> np.ndarray:
    """Pictures one above the other, left-aligned on white."""
    pictures = [to_rgb(p) for p in pictures]
    width = max(p.shape[1] for p in pictures)
    parts = []
    for i, p in enumerate(pictures):
        row = np.ones((p.shape[0], width, 3), np.float32)
        row[:, :p.shape[1]] = p
        parts.append(row)
        if i < len(pictures) - 1:
            parts.append(np.ones((gap, width, 3), np.float32))
    return np.concatenate(parts, axis=0)
