"""What the command line writes, chosen by the output's extension, and never half of it.

``.png`` / ``.jpg``: the picture, enlarged to be legible (nearest pixels, so maps stay maps),
with a caption band saying what was predicted and explained. ``.html``: one self-contained
page with the picture and the numbers. ``.npy``: the raw array (the maps); ``.npz``: the raw
arrays and the numbers (predicted and explained classes, scores, class names).

Everything is written into a temporary folder beside the destination and moved into place at
the end (:func:`staged`); on an error nothing is left behind.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .inputs import UsageError

__all__ = ["OUTPUT_KINDS", "check_output", "staged", "write_result", "picture_of"]

OUTPUT_KINDS = (".png", ".jpg", ".jpeg", ".html", ".npy", ".npz")


def check_output(path, *, folder: bool = False, kinds=OUTPUT_KINDS) -> Path:
    """Check that an output file (or folder) can be written before any work starts."""
    path = Path(path)
    if not folder and kinds and path.suffix.lower() not in kinds:
        raise UsageError(f"cannot write {path}: the output's extension chooses what is written; use one of "
                         + ", ".join(kinds))
    target = path if folder else path.parent
    probe = target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UsageError(f"cannot write the output {path}: {probe} is not a writable folder")
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"cannot write the output folder {path}: a file of that name exists")
    if not folder and path.is_dir():
        raise UsageError(f"cannot write the output {path}: it is a folder")
    return path


@contextlib.contextmanager
def staged(*targets):
    """Yield one temporary path per target (a file or a folder), in a hidden folder beside
    the first target; on success each is moved onto its target (a folder's entries replace
    those of the same name), on an error everything written is removed."""
    targets = [Path(t) for t in targets]
    parent = targets[0].parent
    made = []
    probe = parent
    while not probe.exists():
        made.append(probe)
        probe = probe.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convscope-", dir=parent))
    paths = [tmp / t.name for t in targets]
    try:
        yield paths if len(paths) > 1 else paths[0]
        for src, dst in zip(paths, targets):
            if not src.exists():
                continue
            if src.is_dir() and dst.is_dir():
                for entry in src.iterdir():
                    _replace(entry, dst / entry.name)
            else:
                _replace(src, dst)
    except BaseException:
        for folder in made:  # folders this call created for the output
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace(src: Path, dst: Path):
    if dst.is_dir() and not dst.is_symlink():
        shutil.rmtree(dst)
    os.replace(src, dst)


# --------------------------------------------------------------------------- pictures
def picture_of(result, *, tile: int | None = None, caption=()):
    """The legible picture of a result: enlarged by an integer factor (one image tile at
    least 192 pixels), with the caption lines above."""
    from ..render.annotate import enlarge, legible_scale, with_caption

    if hasattr(result, "overlays") and hasattr(result, "maps"):  # attribution maps: headed columns, colour scale
        return with_caption(_attribution_picture(result, tile), caption)
    rgb = result.to_rgb() if hasattr(result, "to_rgb") else np.asarray(result, np.float32)
    rgb = enlarge(rgb, legible_scale(rgb.shape[0], rgb.shape[1], tile=tile))
    return with_caption(rgb, caption)


def _attribution_picture(result, tile=None):
    """Image, heat map and overlay per row, headed, with the colour scale and its tone mapping."""
    from ..render.annotate import colour_bar, enlarge, legible_scale, stack, with_headers
    from ..render.image import grid, to_rgb
    from .report_parts import readable, scale_labels

    drawn, tone = readable(result)
    h, w = result.images.shape[2:]
    scale = legible_scale(h, w, tile=tile or h)
    tiles = []
    for img, heat, over in zip(drawn.images[:16], drawn.heatmaps()[:16], drawn.overlays()[:16]):
        tiles += [to_rgb(img), heat, over]
    body = enlarge(grid(tiles, ncols=3, pad=1), scale)
    low, mid, high = scale_labels(tone, drawn.signed)
    bar = colour_bar(drawn._cmap(), low, high, middle=mid, label=f"{drawn._cmap()}, tone '{tone}', per map",
                     width=min(256, body.shape[1] - 8))
    headed = with_headers(body, ["image", f"{result.method}", "overlay"], cell=w * scale, pad=scale)
    return stack([headed, bar])


def raw_arrays(result) -> dict:
    """The raw arrays of a result, for .npy/.npz: maps for attribution, images for synthesis."""
    arrays = {}
    for name in ("maps", "attributions", "adversarial", "perturbation", "image", "images", "points", "weights",
                 "activations", "reconstructions", "probabilities"):
        value = getattr(result, name, None)
        if isinstance(value, np.ndarray) and value.size:
            arrays[name] = value
    if not arrays:
        arrays["picture"] = result.to_rgb() if hasattr(result, "to_rgb") else np.asarray(result)
    return arrays


def write_result(result, path, *, rows=(), caption=(), tile=None, title="", extra=None) -> Path:
    """Write ``result`` to ``path`` as its extension says; ``rows`` are the numbers (one dict
    per image: file, predicted class and score, explained class), ``caption`` the lines drawn
    above the picture, ``extra`` more arrays for .npz."""
    from ..render.image import png_bytes
    from ..render.report import Report

    path = Path(path)
    kind = path.suffix.lower()
    with staged(path) as tmp:
        if kind in (".png", ".jpg", ".jpeg"):
            rgb = picture_of(result, tile=tile, caption=caption)
            if kind == ".png":
                tmp.write_bytes(png_bytes(rgb))
            else:
                from PIL import Image

                Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)).save(tmp, format="JPEG", quality=92)
        elif kind == ".html":
            report = Report(title or "convscope", "; ".join(caption))
            report.section("Picture")
            report.picture(picture_of(result, tile=tile), title)
            if rows:
                report.section("Numbers")
                report.table(list(rows))
            report.write(tmp)
        elif kind == ".npy":
            arrays = raw_arrays(result)
            np.save(tmp, next(iter(arrays.values())))
        elif kind == ".npz":
            arrays = dict(raw_arrays(result), **(extra or {}))
            np.savez_compressed(tmp, **arrays)
        else:  # check_output refused it before the work
            raise UsageError(f"cannot write {path}: unknown extension")
    return path
