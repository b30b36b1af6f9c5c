"""The demo model's weights in torch, Keras and ONNX: every method on the three backends, and
the largest difference between them.

    python -m benchmarks.crossframework [--quick]

Each method runs with the same arguments on the same generated images on the three backends.
For every pair of backends, arrays are compared by the largest absolute difference divided
by the largest magnitude on torch (``max |a - b| / max |a_torch|``) and by the relative L2
error (``||a - b|| / ||a_torch||``); the table keeps the worst pair. Integer results
(indices, boxes) are compared for equality. Differences come from float32 rounding in
different operation orders, and from where that rounding moves a max-pool tie or a ReLU
kink: the generated images have flat colour regions, where pooled values tie exactly and
each framework routes the gradient to a different one of the tied inputs.
"""
from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

FRAMEWORKS = ("torch", "onnx", "keras")


def _difference(arrays: dict) -> tuple:
    """(max-abs relative, relative L2, worst pair) over the pairs of backends."""
    ref = np.asarray(arrays["torch"], np.float64)
    scale, norm = max(np.abs(ref).max(), 1e-12), max(np.linalg.norm(ref), 1e-12)
    worst = (0.0, 0.0, "")
    for a, b in itertools.combinations(arrays, 2):
        d = np.asarray(arrays[a], np.float64) - np.asarray(arrays[b], np.float64)
        row = (float(np.abs(d).max()) / scale, float(np.linalg.norm(d)) / norm, f"{a} / {b}")
        worst = max(worst, row)
    return worst


def _equal(arrays: dict) -> tuple:
    first = next(iter(arrays.values()))
    same = all(np.array_equal(first, a) for a in arrays.values())
    return (0.0 if same else float("nan"), 0.0 if same else float("nan"), "identical" if same else "DIFFERENT")


def shapes_masks(x):
    """The object masks of the images :func:`compare` explains (they are generated, so known)."""
    from convscope.data import shapes

    return shapes(len(x), seed=7).object_masks


def _cases(quick: bool) -> list:
    """(family, method, what, fn(backend, x, labels, data) -> array, exact) for every method."""
    from convscope import attribution as A
    from convscope import dissection, features, metrics, synthesis

    steps = 8 if quick else 16
    cases = [
        ("backend", "forward", "scores", lambda b, x, y, d: b.forward(x), False),
        ("backend", "activations", "every layer", lambda b, x, y, d: np.concatenate(
            [a.reshape(len(x), -1) for a in b.activations(x, [r.name for r in b.layers()]).values()], axis=1), False),
        ("backend", "gradient", "input, seed at the scores",
         lambda b, x, y, d: b.gradient(x, {"output": np.eye(4, dtype=np.float32)[y]})["input"], False),
        ("backend", "gradient (guided)", "input",
         lambda b, x, y, d: b.gradient(x, {"output": np.eye(4, dtype=np.float32)[y]}, rule="guided")["input"], False),
        ("backend", "gradient (deconvnet)", "input",
         lambda b, x, y, d: b.gradient(x, {"output": np.eye(4, dtype=np.float32)[y]}, rule="deconvnet")["input"], False),
    ]
    for name in ("saliency", "input_x_gradient", "deconvnet", "guided_backprop", "cam", "grad_cam", "grad_cam_pp",
                 "score_cam", "layer_cam", "eigen_cam", "guided_grad_cam"):
        cases.append(("attribution", name, "maps", lambda b, x, y, d, f=getattr(A, name), name=name:
                      f(b, x, None if name == "eigen_cam" else y).maps, False))
    cases += [
        ("attribution", "smoothgrad", "maps, 8 samples", lambda b, x, y, d: A.smoothgrad(b, x, y, samples=8).maps, False),
        ("attribution", "integrated_gradients", f"maps, {steps} steps",
         lambda b, x, y, d: A.integrated_gradients(b, x, y, steps=steps).maps, False),
        ("attribution", "occlusion", "maps, window 16, stride 8",
         lambda b, x, y, d: A.occlusion(b, x, y, window=16, stride=8).maps, False),
        ("features", "filters", "conv1 weights", lambda b, x, y, d: features.filters(b, "conv1").weights, False),
        ("features", "activation_maps", "relu2 maps", lambda b, x, y, d: features.activation_maps(b, x, "relu2").maps,
         False),
        ("features", "receptive_field", "relu4 unit (3, 5) box",
         lambda b, x, y, d: np.array(features.receptive_field(b, "relu4", 3, 5).box), True),
        ("features", "top_patches", "relu3, 8 channels, k=4: values",
         lambda b, x, y, d: features.top_patches(b, d, "relu3", list(range(8)), k=4, progress=False).values, False),
        ("features", "top_patches", "image indices",
         lambda b, x, y, d: features.top_patches(b, d, "relu3", list(range(8)), k=4, progress=False).indices, True),
        ("features", "layer_features", "relu4, mean-pooled",
         lambda b, x, y, d: features.layer_features(b, d, "relu4", progress=False).features, False),
        ("features", "nearest_neighbors", "relu4, k=3: indices",
         lambda b, x, y, d: features.nearest_neighbors(b, d, [0, 1, 2], "relu4", k=3, progress=False).feature_indices,
         True),
        ("features", "embed (PCA)", "relu4 features",
         lambda b, x, y, d: features.embed(features.layer_features(b, d, "relu4", progress=False), "pca").points, False),
        ("synthesis", "visualize", "class_logit(1), 3 steps",
         lambda b, x, y, d: synthesis.visualize(b, synthesis.class_logit(1), steps=3, size=64, progress=False).images,
         False),
        ("synthesis", "deepdream", "relu3, 1 octave, 2 steps",
         lambda b, x, y, d: synthesis.deepdream(b, x[:1], "relu3", octaves=1, steps=2, progress=False).image, False),
        ("synthesis", "invert", "relu2, 3 steps",
         lambda b, x, y, d: synthesis.invert(b, x[:1], ["relu2"], steps=3, progress=False).reconstructions, False),
        ("synthesis", "fool", "FGSM",
         lambda b, x, y, d: synthesis.fool(b, x, (y + 1) % 4, method="fgsm", progress=False).adversarial, False),
        ("synthesis", "style_loss", "relu1, relu2",
         lambda b, x, y, d: synthesis.style_loss(b, x, x[:1], ["relu1", "relu2"]), False),
        ("dissection", "dissect", "relu3 thresholds",
         lambda b, x, y, d: dissection.dissect(b, "relu3", d, progress=False, skip_empty=True).thresholds, False),
        ("dissection", "dissect", "relu3 IoU",
         lambda b, x, y, d: dissection.dissect(b, "relu3", d, progress=False, skip_empty=True).iou, False),
        ("metrics", "deletion", "grad_cam maps, AUC",
         lambda b, x, y, d: metrics.deletion(b, x, A.grad_cam(b, x, y).maps, y, steps=8).auc, False),
        ("metrics", "insertion", "grad_cam maps, AUC",
         lambda b, x, y, d: metrics.insertion(b, x, A.grad_cam(b, x, y).maps, y, steps=8).auc, False),
        ("metrics", "pointing_game", "grad_cam maps, hits",
         lambda b, x, y, d: metrics.pointing_game(A.grad_cam(b, x, y), shapes_masks(x), per_sample=True), True),
    ]
    return cases


def compare(quick: bool = False, n: int = 8, data_n: int = 64) -> list:
    """Rows (family, method, what, max-abs relative, relative L2, worst pair, seconds on the three)."""
    import convscope
    from convscope.data import demo_model, shapes

    backends = {}
    for fw in FRAMEWORKS:
        try:
            backends[fw] = convscope.load(demo_model(fw))
        except (ImportError, FileNotFoundError) as err:
            print(f"(cross-framework: {fw} skipped: {err})")
    data = shapes(data_n // 2 if quick else data_n, seed=11)
    x, y = shapes(n, seed=7).images, shapes(n, seed=7).labels
    rows = []
    for family, method, what, fn, exact in _cases(quick):
        start = time.perf_counter()
        arrays = {fw: np.asarray(fn(b, x, y, data)) for fw, b in backends.items()}
        seconds = time.perf_counter() - start
        diff = _equal(arrays) if exact else _difference(arrays)
        rows.append((family, method, what, *diff, seconds))
    return rows


def table(rows) -> str:
    lines = ["| family | method | compared | max abs diff / max abs | rel. L2 diff | worst pair |",
             "|---|---|---|---:|---:|---|"]
    for family, method, what, max_rel, l2, pair, _ in rows:
        if pair in ("identical", "DIFFERENT"):
            lines.append(f"| {family} | {method} | {what} | exact | exact | {pair} |")
        else:
            lines.append(f"| {family} | {method} | {what} | {max_rel:.1e} | {l2:.1e} | {pair} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(table(compare(args.quick)))


if __name__ == "__main__":
    main()
