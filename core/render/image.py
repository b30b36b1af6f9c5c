"""Pictures: images to RGB, heat-map overlays, grids, resizing and PNG files."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

from .._validate import check_choice, check_int, check_number, param_error
from .colormaps import COLORMAPS, apply_colormap

__all__ = ["to_rgb", "overlay", "heatmap", "grid", "resize", "save_png", "png_bytes", "atomic_write"]


def to_rgb(image: np.ndarray, *, channels_first: bool | None = None, vmin=None, vmax=None) -> np.ndarray:
    """Any image to (H, W, 3) float32 RGB in [0, 1].

    Accepts (H, W), (C, H, W) or (H, W, C); ``channels_first`` says which when it is
    ambiguous (default: channels last only if the last axis has 1 or 3 entries and the
    first has neither 1 nor 3). One channel becomes grey; three are RGB (in that order); two or more
    than four are averaged to grey; four drop the alpha. Values outside [0, 1] are mapped
    by ``vmin``/``vmax`` (default: the image's own range when it leaves [0, 1]).
    """
    a = np.asarray(image, dtype=np.float32)
    if a.ndim == 2:
        a = a[None]
        channels_first = True
    if a.ndim != 3:
        raise param_error("image", "to_rgb", "a 2-d or 3-d array", f"shape {a.shape}")
    if channels_first is None:  # NCHW is the convention; channels last only when unambiguous
        channels_first = not (a.shape[-1] in (1, 3) and a.shape[0] not in (1, 3))
    if channels_first:
        a = a.transpose(1, 2, 0)
    c = a.shape[-1]
    if c == 4:
        a = a[..., :3]
    elif c != 3:
        a = np.repeat(a.mean(axis=-1, keepdims=True), 3, axis=-1)
    lo = a.min() if vmin is None else vmin
    hi = a.max() if vmax is None else vmax
    if vmin is None and vmax is None and lo >= 0 and hi <= 1:
        return a
    return np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)


def resize(array: np.ndarray, size: tuple, *, order: int = 1) -> np.ndarray:
    """Resize the last two axes of ``array`` to ``size`` (h, w): bilinear (``order=1``,
    align-corners False, as torch's ``interpolate``) or nearest (``order=0``)."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim < 2:
        raise param_error("array", "resize", "an array of at least 2 dimensions (..., H, W)", f"shape {a.shape}")
    if not (isinstance(size, (tuple, list, np.ndarray)) and len(size) == 2):
        raise param_error("size", "resize", "a pair (H, W)", repr(size), TypeError)
    H, W = (check_int(s, "size", "resize", low=1) for s in size)
    check_int(order, "order", "resize", low=0, high=1)
    h, w = a.shape[-2:]
    if (h, w) == (H, W):
        return a.copy()
    if order == 0:
        ys = np.minimum((np.arange(H) * h / H).astype(int), h - 1)
        xs = np.minimum((np.arange(W) * w / W).astype(int), w - 1)
        return a[..., ys[:, None], xs[None, :]]

    def axis(n_in, n_out):
        pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, fy = axis(h, H)
    x0, x1, fx = axis(w, W)
    # a + f (b - a), rows first: exact where neighbours are equal (a flat region keeps its value
    # to the last bit), and the order convscope.dissection.iou repeats to count exactly the same pixels
    top = a[..., y0, :]
    rows = top + fy[:, None] * (a[..., y1, :] - top)
    left = rows[..., x0]
    return left + fx * (rows[..., x1] - left)


def heatmap(values: np.ndarray, cmap: str = "jet") -> np.ndarray:
    """(H, W) values in [0, 1] to an (H, W, 3) colour picture."""
    check_choice(cmap, COLORMAPS, "cmap", "heatmap")
    return apply_colormap(values, cmap)


def overlay(image: np.ndarray, heat: np.ndarray, *, cmap: str = "jet", alpha: float = 0.5) -> np.ndarray:
    """Blend a heat map (H', W') with values in [0, 1] over ``image``: ``(1 - alpha) image + alpha colour``.

    The heat map is resized (bilinear) to the image when their sizes differ.
    """
    check_choice(cmap, COLORMAPS, "cmap", "overlay")
    alpha = check_number(alpha, "alpha", "overlay", low=0)
    if alpha > 1:
        raise param_error("alpha", "overlay", "<= 1", str(alpha))
    rgb = to_rgb(image)
    heat = np.asarray(heat, np.float32)
    if heat.ndim != 2:
        raise param_error("heat", "overlay", "a 2-d map (H, W)", f"shape {heat.shape}")
    if heat.shape != rgb.shape[:2]:
        heat = resize(heat, rgb.shape[:2])
    return (1 - alpha) * rgb + alpha * apply_colormap(heat, cmap)


def grid(tiles, *, ncols: int | None = None, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Lay out (H, W, 3) tiles (or anything :func:`to_rgb` takes) in rows; returns (H', W', 3).

    Tiles of different sizes are centred in cells of the largest size.
    """
    tiles = [to_rgb(t) for t in tiles]
    if not tiles:
        raise ValueError("The 'tiles' parameter of grid must hold at least one image. Got an empty sequence instead.")
    n = len(tiles)
    ncols = int(np.ceil(np.sqrt(n))) if ncols is None else check_int(ncols, "ncols", "grid", low=1)
    pad = check_int(pad, "pad", "grid", low=0)
    nrows = int(np.ceil(n / ncols))
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    out = np.full((nrows * th + (nrows + 1) * pad, ncols * tw + (ncols + 1) * pad, 3), pad_value, np.float32)
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncols)
        y = pad + r * (th + pad) + (th - t.shape[0]) // 2
        x = pad + c * (tw + pad) + (tw - t.shape[1]) // 2
        out[y:y + t.shape[0], x:x + t.shape[1]] = t
    return out


def _to_pil(rgb: np.ndarray, scale: int = 1):
    from PIL import Image

    a = to_rgb(rgb)
    img = Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB")
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def png_bytes(rgb: np.ndarray, *, scale: int = 1) -> bytes:
    """PNG-encode an (H, W, 3) picture in [0, 1]; ``scale`` enlarges it with nearest pixels."""
    scale = check_int(scale, "scale", "png_bytes", low=1)
    buffer = io.BytesIO()
    _to_pil(rgb, scale).save(buffer, format="PNG")
    return buffer.getvalue()


def atomic_write(path, data) -> Path:
    """Write ``data`` (bytes, str, or a callable that writes to a path) to ``path`` via a
    temporary file in the same folder, then rename: a reader never sees half a file, and an
    error leaves nothing behind. The file gets the usual permissions (umask), not 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, str):
                f.write(data.encode("utf-8"))
            elif isinstance(data, (bytes, bytearray)):
                f.write(data)
        if callable(data):
            data(tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_png(rgb: np.ndarray, path, *, scale: int = 1) -> Path:
    """Write a PNG atomically (see :func:`atomic_write`)."""
    check_int(scale, "scale", "save_png", low=1)
    return atomic_write(path, png_bytes(rgb, scale=scale))
