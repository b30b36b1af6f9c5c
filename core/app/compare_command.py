"""``convscope compare MODEL [MODEL ...] IMAGES_DIR``: every model x method x metric in one table.

The photos of IMAGES_DIR are fitted to the model's size as ``explain`` fits them; a mask folder
(``--masks``) holds one mask image per photo with the same stem (any image format; nonzero is
the object), fitted with the photo's geometry (nearest pixels). Writes ``table.csv``,
``heatmap.png``, ``curves.png`` (when a metric draws curves) and ``compare.html`` (one
self-contained page) into ``--out``, and prints the ranked table.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import numpy as np

from .inputs import (DEVICE_HELP, MODEL_FORMATS, UsageError, _open, class_index, class_names, device_options, load_model,
                     preprocessing, read_images, resize_mode, target_size)
from .outputs import check_output, staged

__all__ = ["add_compare_command", "cmd_compare", "fit_mask", "match_masks"]

HELP = "score attribution methods on metrics for one or more models: a ranked table, plots and a page"


def add_compare_command(subparsers, formatter, preprocess_options):
    """Register ``convscope compare`` on the command's subparsers."""
    from ..attribution import __all__ as methods

    p = subparsers.add_parser("compare", help=HELP, description=HELP + ".", formatter_class=formatter)
    p.add_argument("models", nargs="+", metavar="MODEL", help=f"one or more models: {MODEL_FORMATS}")
    p.add_argument("images", metavar="IMAGES_DIR", help="a folder of photos (PNG, JPEG, ...; any size)")
    p.add_argument("--masks", metavar="DIR", help="a folder of object masks, one per photo with the same file stem "
                   "(nonzero = object); metrics that need masks are skipped without it")
    p.add_argument("--methods", nargs="+", default=["grad_cam", "saliency"],
                   help="attribution methods: " + ", ".join(m for m in methods if m != "AttributionMaps"))
    p.add_argument("--metrics", nargs="+", default=["all"], help="metric names, family names or 'all' "
                   "(see convscope.metrics.METRICS)")
    p.add_argument("--option", action="append", default=[], metavar="METRIC.NAME=VALUE",
                   help="an option of one metric, e.g. deletion.steps=16 (repeatable)")
    p.add_argument("--target", help="class explained, a name or an index (default: each model's predicted class)")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="fit images to H x W (default: the first "
                   "model's input size, else the first image's)")
    p.add_argument("--device", metavar="DEVICE", help=DEVICE_HELP)
    p.add_argument("--batch-size", type=int, help="images per batch (default: sized to the images)")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals over images")
    p.add_argument("--out", required=True, help="output folder")
    preprocess_options(p)
    p.set_defaults(fn=cmd_compare)
    return p


def _options(texts) -> dict:
    options = {}
    for text in texts:
        key, eq, value = text.partition("=")
        metric, dot, name = key.partition(".")
        if not eq or not dot or not metric or not name:
            raise UsageError(f"--option {text!r} must read METRIC.NAME=VALUE, e.g. deletion.steps=16")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        options.setdefault(metric, {})[name] = parsed
    return options


def _photos(folder) -> list:
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"image folder not found: {folder}")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    photos = []
    for p in files:
        try:
            _open(p).close()
            photos.append(p)
        except UsageError:
            print(f"convscope compare: note: skipped {p.name} (not an image)", file=sys.stderr)
    if not photos:
        raise UsageError(f"no images in {folder}")
    return photos


def match_masks(photos, folder) -> list:
    """The mask file of each photo (same stem), or a UsageError naming what is missing or extra."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"mask folder not found: {folder}")
    masks = {}
    for p in sorted(q for q in root.iterdir() if q.is_file() and not q.name.startswith(".")):
        if p.stem in masks:
            raise UsageError(f"two masks for the photo stem {p.stem!r} in {folder}: {masks[p.stem].name}, {p.name}")
        masks[p.stem] = p
    stems = [p.stem for p in photos]
    missing = [s for s in stems if s not in masks]
    extra = sorted(set(masks) - set(stems))
    if missing or extra:
        parts = [f"{len(masks)} masks for {len(photos)} photos"]
        if missing:
            parts.append("no mask for " + ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else ""))
        if extra:
            parts.append("no photo for " + ", ".join(masks[s].name for s in extra[:5]) + (", ..." if len(extra) > 5
                                                                                        else ""))
        raise UsageError(f"--masks {folder} must hold one mask per photo, with the photo's file stem: "
                         + "; ".join(parts))
    return [masks[s] for s in stems]


def fit_mask(img, size, mode: str) -> np.ndarray:
    """(H, W) bool: a mask image (nonzero = object) fitted to ``size`` with the geometry
    :func:`convscope.preprocess.fit_image` gives its photo, nearest pixels, padding empty."""
    from PIL import Image

    from ..preprocess import fit_geometry

    out = fit_geometry(img.convert("L"), size, mode, Image.NEAREST, 0)
    return np.asarray(out) > 0


def _read_masks(photos, folder, size, mode):
    masks = []
    for photo, path in zip(photos, match_masks(photos, folder)):
        with _open(photo) as p, _open(path) as m:
            if m.size != p.size:
                raise UsageError(f"the mask {path.name} is {m.size[0]}x{m.size[1]} but its photo {photo.name} is "
                                 f"{p.size[0]}x{p.size[1]} (WxH); a mask must have its photo's size")
            masks.append(fit_mask(m, size, mode))
    return np.stack(masks)


def cmd_compare(args):
    import convscope
    from ..metrics import compare
    from ..metrics.compare import metric_options, metric_specs, named_methods

    out = check_output(args.out, folder=True)
    specs, folder = args.models, args.images
    photos = _photos(folder)
    if args.masks:
        match_masks(photos, args.masks)  # a missing mask is told before any model is loaded
    options = _options(args.option)
    metric_options(options, metric_specs(list(args.metrics)))  # names checked before any model is loaded
    named_methods(list(args.methods))
    spec = preprocessing(args)
    models, names = {}, []
    for text in specs:
        model = load_model(text)
        name = text if text not in models else f"{text}#{len(names) + 1}"
        placed = device_options(model, args.device)
        models[name] = convscope.load(model, **placed, **({} if spec is None else {"preprocess": spec}))
        if not names:
            args.model, args.model_object = text, model
        names.append(name)
    first = models[names[0]]
    size = target_size(args, first, photos[0])
    mode = resize_mode(args, first)
    x, notes = read_images(photos, size, mode)  # said once the work is done
    masks = _read_masks(photos, args.masks, size, mode) if args.masks else None
    target = None
    if args.target is not None:
        args.n_classes = int(first.forward(x[:1]).shape[1])
        target = class_index(args.target, class_names(args, first), args.n_classes)
    result = compare(models, list(args.methods), list(args.metrics), x, target=target, masks=masks,
                     batch_size=args.batch_size, level=args.level, options=options or None)
    for text in notes:
        print(f"convscope compare: note: {text}", file=sys.stderr)
    print(result.table(), end="")
    for key, value in result.info.items():
        if key == "reference":
            print(f"convscope compare: note: reference for max_map_difference: {value}", file=sys.stderr)
    written = ["table.csv", "heatmap.png", "compare.html"]
    with staged(out) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        result.to_csv(tmp / "table.csv")
        result.save(tmp / "heatmap.png")
        curves = result.curves()
        if curves is not None:
            curves.save(tmp / "curves.png")
            written.insert(2, "curves.png")
        result.save(tmp / "compare.html")
    print(f"wrote {out} ({', '.join(written)})")
