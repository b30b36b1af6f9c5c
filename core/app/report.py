"""The microscope: one self-contained HTML report of everything convscope shows about a model.

:func:`demo_report` runs it on the demo model and generated shapes (with ground-truth
masks, so saliency can be scored); :func:`model_report` on a user's model and images.
Each picture is also written as a PNG beside the report (``images/``), which is where the
docs take theirs from.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .. import attribution, features, metrics, synthesis
from .._layers import spatial_layers
from ..dissection import compare, dissect
from ..render.image import grid, save_png, to_rgb
from ..render.report import Report

__all__ = ["demo_report", "model_report"]

SALIENCY = ("saliency", "smoothgrad", "integrated_gradients", "input_x_gradient", "guided_backprop", "deconvnet", "occlusion")
CAMS = ("cam", "grad_cam", "grad_cam_pp", "score_cam", "layer_cam", "eigen_cam", "guided_grad_cam")


class _Pictures:
    """Adds a picture to the report and saves it as ``images/NAME.png``."""

    def __init__(self, report: Report, folder: Path):
        self.report, self.folder = report, folder

    def __call__(self, name, picture, caption, scale=1):
        rgb = picture.to_rgb() if hasattr(picture, "to_rgb") else np.asarray(picture)
        save_png(rgb, self.folder / f"{name}.png", scale=scale)
        self.report.picture(rgb, caption, scale=scale)


def _method_grid(results, images, masks=None):
    """Rows: images; columns: the image, its mask (if any), then one overlay per method."""
    rows = []
    for i in range(len(images)):
        row = [to_rgb(images[i])]
        if masks is not None:
            row.append(np.repeat(masks[i][..., None].astype(np.float32), 3, axis=2))
        row += [r.overlays()[i] for r in results.values()]
        rows += row
    return grid(rows, ncols=len(rows) // len(images), pad=2)


def _attribution(add, report, model, images, labels, masks, names, title):

    results, rows, failed = {}, [], []
    for name in names:
        start = time.perf_counter()
        try:
            results[name] = getattr(attribution, name)(model, images, labels)
        except (ValueError, TypeError) as err:  # e.g. cam on a model without a GAP + linear head
            failed.append(f"{name}: {str(err).splitlines()[0]}")
            continue
        row = {"method": name, "seconds": time.perf_counter() - start}
        if masks is not None:  # Zhang et al.'s 15-pixel tolerance on 224-pixel images, scaled
            tolerance = int(round(15 * images.shape[2] / 224))
            row["pointing game"] = float(metrics.pointing_game(results[name], masks, tolerance=tolerance))
        row["deletion AUC (lower is better)"] = float(metrics.deletion(model, images, results[name], labels).auc.mean())
        rows.append(row)
    report.section(title)
    shown = slice(0, 6)
    add(title.split()[0].lower(), _method_grid({k: v[shown] for k, v in results.items()}, images[shown],
                                               None if masks is None else masks[shown]),
        "columns: image" + (", ground-truth mask" if masks is not None else "") + ", " + ", ".join(results))
    for line in failed:
        report.text(line)
    return rows


def _build(report, add, model, images, labels, masks, *, concepts=None, quick=False, classes=None):
    import convscope

    backend = convscope.load(model)
    backend.forward(images[:1])
    spatial = spatial_layers(backend, kinds=("relu", "conv", "block"))
    first, last = spatial[0], spatial[-1]
    middle = spatial[len(spatial) // 2]
    report.section("Layers")
    report.table([dict(name=r.name, kind=r.kind, shape=r.shape, kernel=r.kernel or "", stride=r.stride or "")
                  for r in backend.layers()])

    report.section("Filters and activation maps")
    add("filters", features.filters(model), "first-layer filters (each scaled on its own)", scale=4)
    add("activation_maps", features.activation_maps(model, images[0], first), f"activations of {first} for the first image")

    report.section("Top activating patches")
    add("top_patches", features.top_patches(model, images, middle, list(range(6)), k=6, progress=False),
        f"the six images whose strongest unit in channels 0-5 of {middle} responds most, cropped to its receptive field")

    report.section("Embedding")
    feats = features.layer_features(model, images, last, progress=False)
    emb = features.embed(feats, method="tsne", perplexity=min(30.0, (len(images) - 1) / 3), labels=labels,
                         images=images, classes=classes)
    add("tsne_grid", emb.image_grid(tile=24), f"images placed by a 2-D embedding of {last} (optimal grid assignment)")

    n = 24 if quick else 100  # attribution and its metrics: the slowest part of the report
    masks_n = None if masks is None else masks[:n]
    rows = _attribution(add, report, model, images[:n], labels[:n], masks_n, SALIENCY, "Saliency family")
    rows += _attribution(add, report, model, images[:n], labels[:n], masks_n, CAMS, "CAM family")
    report.section("Methods compared")
    key = "pointing game" if masks is not None else "deletion AUC (lower is better)"
    report.table(sorted(rows, key=lambda r: -r[key] if key == "pointing game" else r[key]))

    steps = 48 if quick else 160
    k = backend.forward(images[:1]).shape[1]
    report.section("Activation maximisation")
    shown = range(min(k, 4))
    vis = [synthesis.visualize(model, synthesis.class_logit(c), steps=steps, progress=False).pictures()[0] for c in shown]
    add("classes", grid(vis, ncols=len(vis)), "images that maximise each class score ("
        + ", ".join(classes[c] if classes else str(c) for c in shown) + "): FFT parameterisation, decorrelated colour, jitter",
        scale=2)

    report.section("DeepDream, inversion, texture, style, fooling")
    image = images[:1]
    add("deepdream", synthesis.deepdream(model, image, middle, steps=6 if quick else 12, progress=False),
        f"DeepDream of {middle}", scale=2)
    add("inversion", synthesis.invert(model, image, [first, middle, last], steps=steps, progress=False),
        f"the image reconstructed from its features at {first}, {middle} and {last}", scale=2)
    add("texture", synthesis.texture(model, images[1:2], steps=steps, progress=False), "Gram-matrix texture synthesis", scale=2)
    add("style", synthesis.style_transfer(model, images[:1], images[2:3], steps=steps, progress=False),
        "style transfer: content of the first image, style of the third", scale=2)
    add("fooling", synthesis.fool(model, image, target=(int(labels[0]) + 1) % k, progress=False),
        "an adversarial example: original, perturbation, result", scale=2)

    if concepts is not None:

        results = {name: dissect(model, name, concepts, progress=False) for name in (first, last)}
        report.section("Network Dissection")
        add("dissection", compare(results), "unique detectors per category")
        results[last].add_to(report, units=4, k=4)


def demo_report(out, *, quick: bool = False) -> Path:
    """Write ``out/report.html`` for the demo model on generated shapes; returns its path."""
    from ..data import DEMO_CLASSES, demo_model, shapes

    out = Path(out)
    start = time.perf_counter()
    data = shapes(60 if quick else 200, seed=21)
    report = Report("convscope microscope: the demo model",
                    "a small CNN trained on generated shapes; ground-truth masks make every picture checkable")
    _build(report, _Pictures(report, out / "images"), demo_model("torch"), data.images, data.labels,
           data.object_masks, concepts=shapes(300 if quick else 1000, seed=22), quick=quick, classes=list(DEMO_CLASSES))
    report.text(f"Made in {time.perf_counter() - start:.0f} s.", heading="Timing")
    return report.write(out / "report.html")


def model_report(model, data, out, *, n: int = 200, quick: bool = False) -> Path:
    """Write the report of ``model`` on the first ``n`` images of ``data`` to ``out``."""
    from ..data.datasets import as_dataset

    dataset = as_dataset(data, owner="model_report")
    images = np.concatenate([b.images for b in dataset.batches(64, 0, n, owner="model_report")])
    labels = None
    out = Path(out)
    report = Report("convscope microscope", f"{type(model).__name__} on {len(images)} images")
    import convscope

    labels = convscope.load(model).forward(images).argmax(axis=1)
    _build(report, _Pictures(report, out.parent / f"{out.stem}_images"), model, images, labels, None, quick=quick)
    return report.write(out)
