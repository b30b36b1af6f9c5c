"""Every attribution method gives the same maps on the torch, ONNX Runtime and TensorFlow
backends for the demo model (the same weights in three files): 1e-4 relative (max error
over the batch, against the largest value).

Integrated gradients differentiates at darkened copies of the image, where two values of a
2x2 max-pool window can be equal in one framework and one float32 ulp apart in another (each
framework's convolution rounds in its own order). The frameworks then send that window's
gradient to different elements, both valid subgradients. So IG is checked to the same 1e-4
everywhere except inside the receptive fields of the windows whose argmax differs between
the two frameworks at some path point, found from the frameworks' own activations (1-7% of
the pixels; measured: 1e-7 outside them, up to 3e-2 inside).
"""

import numpy as np
import pytest

pytest.importorskip("torch")

import convscope
from convscope import attribution as A
from convscope.features.receptive_field import unit_boxes

BACKENDS = {"onnxruntime": ("onnx", "onnxruntime"), "tensorflow": ("keras", "tensorflow")}

METHODS = {
    "saliency": dict(),
    "smoothgrad": dict(samples=3, noise=0.1),
    "integrated_gradients": dict(steps=8),
    "input_x_gradient": dict(),
    "guided_backprop": dict(),
    "deconvnet": dict(variant="raw"),
    "occlusion": dict(window=16, stride=16),
    "cam": dict(),
    "grad_cam": dict(),
    "grad_cam_pp": dict(),
    "layer_cam": dict(layer="conv3"),
    "score_cam": dict(),
    "eigen_cam": dict(),
    "guided_grad_cam": dict(),
}


def _load(name):
    framework, module = BACKENDS[name]
    pytest.importorskip(module)
    return convscope.load(convscope.data.demo_model(framework))


@pytest.fixture(scope="module")
def batch():
    data = convscope.data.shapes(3, seed=31)
    return data.images, data.labels


@pytest.fixture(scope="module")
def torch_results(batch, torch_model):
    return {name: getattr(A, name)(torch_model, batch[0], batch[1], **kw) for name, kw in METHODS.items()}


def pool_tie_pixels(reference, other, x, steps):
    """(N, H, W) bool: pixels inside the receptive field of a 2x2 max-pool window whose argmax
    differs between the two backends at one of the midpoint-rule path points ``alpha x``
    (the points integrated_gradients differentiates at, in one batch as it runs them)."""
    alphas = ((np.arange(steps) + 0.5) / steps).astype(np.float32)
    points, sample = np.concatenate([a * x for a in alphas]), np.tile(np.arange(len(x)), steps)
    mask = np.zeros((len(x), *x.shape[2:]), bool)
    for relu, pool in [("relu1", "pool1"), ("relu2", "pool2"), ("relu3", "pool3")]:
        def windows(v):
            n, c, h, w = v.shape
            return v.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, h // 2, w // 2, 4)

        a, b = (windows(m.activations(points, [relu])[relu]) for m in (reference, other))
        image, _, ys, xs = np.nonzero((a.argmax(-1) != b.argmax(-1)) & (a.max(-1) > 0))
        (top, left, bottom, right), _ = unit_boxes(reference, pool, ys, xs)
        for s, t, l, bt, r in zip(sample[image], top, left, bottom, right):
            mask[s, max(t, 0):bt, max(l, 0):r] = True
    return mask


@pytest.fixture(scope="module")
def torch_model():
    return convscope.load(convscope.data.demo_model("torch"), input_shape=(3, 64, 64))


@pytest.mark.parametrize("backend_name", [pytest.param(n, marks=pytest.mark.backend(n)) for n in BACKENDS])
def test_every_method_agrees_with_torch(backend_name, batch, torch_results, torch_model):
    model = _load(backend_name)
    failures = []
    for name, kw in METHODS.items():
        got = getattr(A, name)(model, batch[0], batch[1], **kw)
        want = torch_results[name]
        outside_ties = True
        if name == "integrated_gradients":  # see the module docstring
            outside_ties = ~pool_tie_pixels(torch_model, model, batch[0], METHODS[name]["steps"])
            assert outside_ties.mean() > 0.85, f"{backend_name}: ties cover {1 - outside_ties.mean():.0%} of the pixels"
        err = (np.abs(got.maps - want.maps) * outside_ties).max() / max(np.abs(want.maps).max(), 1e-12)
        limit = 1e-4
        if err > limit or got.info.get("layer") != want.info.get("layer"):
            failures.append(f"{name}: relative error {err:.2e} > {limit:.0e}, layer {got.info.get('layer')}")
    assert not failures, failures
