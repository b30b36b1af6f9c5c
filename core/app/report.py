"""The microscope: one self-contained HTML report of everything convscope shows about a model.

:func:`demo_report` runs it on the demo model and generated shapes (with ground-truth
masks, so saliency can be scored); :func:`model_report` on a user's model and images. Each
picture is also written as a PNG beside the report (``images/``), and the numbers of the
methods table and the section timings as ``numbers.json``: the docs take theirs from there
(``docs/demo_pictures.py``). Everything is staged and moved into place at the end.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from .. import attribution, features, metrics, synthesis
from .._layers import spatial_layers
from ..backend import OUTPUT
from ..dissection import dissect
from ..render.image import grid
from ..render.report import Report
from .outputs import staged
from .inputs import required_arguments
from .report_parts import Run, dissection_section, method_grid

__all__ = ["demo_report", "model_report", "SALIENCY", "CAMS", "MORE_CAMS", "RULES", "PERTURBATION", "FAMILIES",
           "demo_settings"]

SALIENCY = ("saliency", "smoothgrad", "integrated_gradients", "input_x_gradient", "guided_backprop", "deconvnet", "occlusion")
CAMS = ("cam", "grad_cam", "grad_cam_pp", "score_cam", "layer_cam", "eigen_cam", "guided_grad_cam")
MORE_CAMS = ("hires_cam", "xgrad_cam", "eigen_grad_cam", "ablation_cam", "full_grad")
RULES = ("lrp", "deeplift", "deeplift_shap", "gradient_shap")
PERTURBATION = ("rise", "feature_ablation", "kernel_shap", "lime")
#: the report's families: (methods, title); the perturbation family is left out of ``--quick``
FAMILIES = ((SALIENCY, "Saliency family"), (CAMS, "CAM family"), (MORE_CAMS, "More CAMs"),
            (RULES, "Rule-based family (LRP, DeepLift)"), (PERTURBATION, "Perturbation family"))


class _EachClass(synthesis.Objective):
    """Image ``n`` of the batch maximises the score of class ``classes[n]``."""

    tensors = (OUTPUT,)
    linear = True

    def __init__(self, classes):
        self.classes = np.asarray(classes, np.int64)

    def compute(self, acts):
        z = acts[OUTPUT]
        n = np.arange(len(z))
        c = np.resize(self.classes, len(z))
        seeds = np.zeros_like(z)
        seeds[n, c] = 1
        return z[n, c].copy(), {OUTPUT: seeds}


#: Score-CAM weighs channels by the softmax probability of the masked image, as its authors
#: do: with raw scores (the library default) a channel's weight may be negative and, on a
#: confident model, the whole map vanish (2 of 6 demo images)
_SCORE_CAM = {"score_cam": {"output": "probability"}}


#: the perturbation family, sized for a report (the library's defaults are for one image at a time);
#: RISE on probabilities as its authors; the superpixel methods replace a superpixel by the image's
#: mean colour (see :func:`_options`)
_PERTURBATION = {"rise": {"masks": 250, "output": "probability"}, "kernel_shap": {"samples": 100},
                 "lime": {"samples": 100}}


def _options(settings, name, images) -> dict:
    """A method's settings in the report. A superpixel removed to black (the library's baseline 0)
    leaves a dark blob that a shape classifier reads as a shape (on the demo model the pointing game
    falls from 1.0 to 0.19 for feature ablation): the report removes it to the image's mean colour,
    as deletion does."""
    options = dict(settings["options"].get(name, _PERTURBATION.get(name, {})))
    if name in ("feature_ablation", "kernel_shap", "lime", "shapley_sampling"):
        options.setdefault("baseline", images.mean(axis=(2, 3), keepdims=True))
    return options


def demo_settings(quick: bool = False) -> dict:
    """Sizes of the demo run: images shown, images scored, optimisation steps, concept images."""
    if quick:
        return dict(quick=True, images=48, scored=12, steps=16, dream_steps=3, concepts=200, patches=6, tsne_iter=400,
                    deletion_steps=8, options={"smoothgrad": {"samples": 8}, "integrated_gradients": {"steps": 16},
                                               "occlusion": {"window": 8, "stride": 8}, **_SCORE_CAM})
    return dict(images=200, scored=64, steps=96, dream_steps=10, concepts=600, patches=6, tsne_iter=750,
                deletion_steps=12, options={"smoothgrad": {"samples": 16}, "integrated_gradients": {"steps": 24},
                                            "occlusion": {"window": 8, "stride": 8}, **_SCORE_CAM})


def _row_labels(names, labels, scores, classes):
    prob = np.exp(scores - scores.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    out = []
    for i in range(len(scores)):
        k = int(scores[i].argmax())
        true = "?" if labels is None else names(int(labels[i]))
        out.append([f"true: {true}", f"predicted: {names(k)}", f"score {scores[i, k]:.2f}", f"softmax {prob[i, k]:.2f}"])
    return out


def _attribution(run, backend, images, labels, truth, masks, methods, title, names, scores, settings):
    """Run every method (timed after a warm-up), score it, and show the first six images."""
    run.section(title, f"{len(methods)} methods on {len(images)} images")
    results, rows, failed = {}, [], []
    for name in methods:
        method = getattr(attribution, name)
        start = time.perf_counter()
        try:
            target = None if name == "eigen_cam" else labels  # class-agnostic: it takes no target
            results[name] = method(backend, images, target, **_options(settings, name, images),
                                   **required_arguments(backend, images, name))
        except (ValueError, TypeError, ImportError) as err:  # cam without a GAP + linear head; an extra missing
            failed.append(f"{name}: {str(err).splitlines()[0]}")
            continue
        row = {"method": name, "seconds": time.perf_counter() - start}
        if masks is not None:  # Zhang et al.'s 15-pixel tolerance on 224-pixel images, scaled
            tolerance = int(round(15 * images.shape[2] / 224))
            row["pointing game"] = float(metrics.pointing_game(results[name], masks, tolerance=tolerance))
        start = time.perf_counter()
        curve = metrics.deletion(backend, images, results[name], labels, steps=settings["deletion_steps"],
                                 output="probability")
        row["deletion AUC (lower is better)"] = float(curve.auc.mean())
        row["deletion seconds"] = time.perf_counter() - start
        rows.append(row)
    shown = slice(0, 6)
    picture, tones = method_grid({k: v[shown] for k, v in results.items()}, images[shown],
                                 None if masks is None else masks[shown],
                                 _row_labels(names, None if truth is None else truth[shown], scores[shown], None))
    faint = [n for n, t in tones.items() if t == "percentile"]
    run.add(title.split()[0].lower(), picture, f"{title}: one row per image (true class, predicted class, its score); "
            "one column per method, heat maps over the image. " + (
                f"{', '.join(faint)}: tone mapping 'percentile' (clipped at the 99th percentile of |m|), because the "
                "default leaves them nearly invisible. " if faint else "") + "Colour scales below the grid.")
    for line in failed:
        run.report.text(line)
    return rows


def _warm_up(backend, images, layer):
    """One forward and one backward pass before anything is timed (graphs traced, caches filled)."""
    k = backend.forward(images[:2]).shape[1]
    backend.gradient(images[:2], {"output": np.eye(k, dtype=np.float32)[[0, 1 % k]]}, wrt=["input", layer])


def _build(run, backend, images, labels, masks, *, settings, concepts=None, classes=None):
    def name(k):
        return classes[k] if classes and 0 <= k < len(classes) else str(k)

    spatial = spatial_layers(backend, kinds=("relu", "conv", "block"))
    first, last = spatial[0], spatial[-1]
    middle = spatial[len(spatial) // 2]
    _warm_up(backend, images, last)
    scores = backend.forward(images)
    run.section("Layers", f"{len(backend.layers())} layers")
    run.report.table([dict(name=r.name, kind=r.kind, shape=r.shape, kernel=r.kernel or "", stride=r.stride or "")
                      for r in backend.layers()])

    run.section("Filters and activation maps")
    run.add("filters", features.filters(backend, tile=64), "first-layer filters (each scaled on its own)")
    run.add("activation_maps", features.activation_maps(backend, images[0], first),
            f"activations of {first} for the first image", scale=2)

    k_patches = min(settings["patches"], len(images))
    run.section("Top activating patches", f"{len(images)} images through {middle}")
    run.add("top_patches", features.top_patches(backend, images, middle, list(range(6)), k=k_patches, progress=False),
            f"the {k_patches} images whose strongest unit in channels 0-5 of {middle} responds most, cropped to its "
            "receptive field", scale=2)

    run.section("Embedding", f"t-SNE of {last} on {len(images)} images")
    feats = features.layer_features(backend, images, last, progress=False)
    try:
        with np.errstate(invalid="ignore", divide="ignore"):
            emb = features.embed(feats, method="tsne", perplexity=min(30.0, (len(images) - 1) / 3), labels=labels,
                                 images=images, classes=classes, max_iter=settings["tsne_iter"])
            picture = emb.image_grid(tile=48)
        run.add("tsne_grid", picture, f"images placed by a 2-D t-SNE embedding of {last} (optimal grid assignment)")
    except (ValueError, FloatingPointError) as err:  # e.g. identical images: no distances to embed
        run.report.text(f"No embedding: t-SNE of {last} failed on these images ({str(err).splitlines()[0]}).")

    n = min(settings["scored"], len(images))
    masks_n = None if masks is None else masks[:n]
    explained = labels[:n] if masks is not None else scores[:n].argmax(1)  # user data: the predicted class
    truth = None if labels is None else labels[:n]
    rows = []
    for methods, title in FAMILIES:
        if methods is PERTURBATION and settings.get("quick"):
            continue
        rows += _attribution(run, backend, images[:n], explained, truth, masks_n, methods, title, name, scores[:n],
                             settings)
    run.section("Methods compared")
    key = "pointing game" if masks is not None else "deletion AUC (lower is better)"
    rows = sorted(rows, key=lambda r: -r[key] if key == "pointing game" else r[key])
    run.report.text(f"On {n} images; deletion: {settings['deletion_steps']} steps, the explained class's softmax "
                    "probability as the top pixels are replaced by the mean colour" + (f", pointing game within {int(round(15 * images.shape[2] / 224))} px of the "
                                        "ground-truth mask" if masks is not None else "")
                    + ". Seconds: each method's own time after a warm-up pass, and its deletion curve's.")
    run.report.table(rows)

    steps = settings["steps"]
    k = scores.shape[1]
    shown = range(min(k, 4))
    run.section("Activation maximisation", f"{len(shown)} classes, {steps} steps each")
    size = tuple(images.shape[2:])  # what the model sees, not a larger canvas
    vis = synthesis.visualize(backend, _EachClass(list(shown)), steps=steps, batch=len(shown), size=size,
                              progress=False).pictures()  # one batched pass per step for all the classes
    run.add("classes", grid(vis, ncols=len(vis)), "images that maximise each class score ("
            + ", ".join(name(c) for c in shown) + "): FFT parameterisation, decorrelated colour, jitter", scale=2)

    run.section("DeepDream, inversion, texture, style, fooling", f"{steps} steps each")
    image = images[:1]
    run.add("deepdream", synthesis.deepdream(backend, image, middle, steps=settings["dream_steps"], progress=False),
            f"DeepDream of {middle}", scale=2)
    run.add("inversion", synthesis.invert(backend, image, [first, middle, last], steps=steps, progress=False),
            f"the image reconstructed from its features at {first}, {middle} and {last}", scale=2)
    run.add("texture", synthesis.texture(backend, images[1:2], steps=steps, progress=False),
            "Gram-matrix texture synthesis: exemplar, result", scale=2)
    run.add("style", synthesis.style_transfer(backend, images[:1], images[2:3], steps=steps, progress=False),
            "style transfer: content (the first image), style (the third), result", scale=2)
    target = (int(scores[0].argmax()) + 1) % k
    fooled = synthesis.fool(backend, image, target=target, progress=False)
    reached = int(fooled.predictions[0])
    run.add("fooling", fooled, f"an adversarial example towards {name(target)}: original, perturbation, result; "
            f"the model now says {name(reached)} (softmax {fooled.probabilities[0, reached]:.2f})", scale=2)

    if concepts is not None:
        run.section("Network Dissection", f"{first} and {last} on {len(concepts)} concept images")
        results = {layer: dissect(backend, layer, concepts, progress=False) for layer in (first, last)}
        dissection_section(run, results, last)
    return rows


def _timing(run, rows):
    seconds = run.finish()
    run.report.section("Timing")
    run.report.table([{"section": s, "seconds": t, "CPU seconds": run.cpu.get(s, 0.0)} for s, t in seconds.items()]
                     + [{"section": "total", "seconds": sum(seconds.values()), "CPU seconds": sum(run.cpu.values())}],
                     digits=1)
    load = _load()
    run.report.text("Wall-clock and process CPU seconds (all threads) per section"
                    + (f"; load average {load[0]:.1f} at the end" if load else "") + ". Method seconds in the methods "
                    "table exclude the warm-up pass (model tracing, first calls).")
    return seconds


def _load():
    try:
        return list(os.getloadavg())
    except (OSError, AttributeError):  # not on this platform
        return None


def _framework(asked):
    from .._plugins import _missing_module, install_hint

    if asked:
        return asked
    for framework, module in (("torch", "torch"), ("onnx", "onnxruntime"), ("keras", "keras")):
        if _missing_module(module) is None:
            return framework
    raise ImportError(f"the demo needs one framework: {install_hint('torch')} (or convscope[onnx], convscope[tensorflow])")


def demo_report(out, *, quick: bool = False, framework: str | None = None, log=None) -> Path:
    """Write ``out/report.html`` (and ``out/images/``, ``out/numbers.json``) for the demo model
    on generated shapes; returns the page's path. ``log`` gets one line per section."""
    import convscope
    from ..data import DEMO_CLASSES, demo_model, demo_path, shapes

    out = Path(out)
    framework = _framework(framework)
    settings = demo_settings(quick)
    data = shapes(settings["images"], seed=21)
    concepts = shapes(settings["concepts"], seed=22)
    model = demo_model(framework)
    report = Report("convscope microscope: the demo model",
                    f"a small CNN trained on generated shapes ({demo_path(framework).name}, {framework}); ground-truth "
                    "masks make every picture checkable")
    with staged(out) as tmp:
        run = Run(report, tmp / "images", log)
        rows = _build(run, convscope.load(model), data.images, data.labels, data.object_masks, settings=settings,
                      concepts=concepts, classes=list(DEMO_CLASSES))
        seconds = _timing(run, rows)
        numbers = {"settings": settings, "framework": framework, "methods": rows, "sections": seconds,
                   "cpu seconds": run.cpu, "load average": _load()}
        (tmp / "numbers.json").write_text(json.dumps(numbers, indent=1))
        report.write(tmp / "report.html")
    return out / "report.html"


def model_report(model, data, out, *, n: int = 200, quick: bool = False, classes=None, name: str | None = None,
                 k: int | None = None, log=None) -> Path:
    """Write the report of ``model`` on the first ``n`` images of ``data`` to ``out`` (and
    ``OUT_images/`` beside it). ``classes`` names the classes; ``k`` the top patches per
    channel (default 6, at most the number of images)."""
    import convscope
    from ..data.datasets import as_dataset

    dataset = as_dataset(data, owner="model_report")
    images = np.concatenate([b.images for b in dataset.batches(64, 0, n, owner="model_report")])
    labels = getattr(dataset, "labels", None)
    labels = None if labels is None else np.asarray(labels)[:len(images)]
    if len(images) < 3:
        raise ValueError(f"The 'data' parameter of model_report must hold at least 3 images (the embedding and the "
                         f"style transfer need them). Got {len(images)} instead.")
    settings = demo_settings(quick) | {"scored": len(images), "patches": min(k or 6, len(images))}
    if k is not None and k > len(images):
        raise ValueError(f"--k {k} is more than the {len(images)} images; lower --k")
    out = Path(out)
    backend = convscope.load(model)
    what = name or getattr(model, "__name__", None) or (Path(model).name if isinstance(model, (str, Path)) else
                                                        type(getattr(backend, "model", model)).__name__)
    report = Report("convscope microscope", f"{what} on {len(images)} images")
    with staged(out, out.parent / f"{out.stem}_images") as (page, folder):
        run = Run(report, folder, log)
        _build(run, backend, images, labels, None, settings=settings, classes=classes)
        _timing(run, [])
        report.write(page)
    return out
