"""The feature tools give the same answers on the ONNX and Keras copies of the demo model."""
import numpy as np
import pytest

import convscope
from convscope.data import demo_model, shapes
from convscope.features import filters, receptive_field, top_patches

FRAMEWORKS = {"onnx": "onnxruntime", "keras": "tensorflow"}


@pytest.fixture(scope="module")
def data():
    return shapes(24, seed=21)


@pytest.fixture(scope="module")
def torch_result(data):
    pytest.importorskip("torch")
    return top_patches(demo_model("torch"), data, "relu3", [0, 1, 2, 3], k=3, guided=True, progress=False)


def backend_of(framework):
    pytest.importorskip(FRAMEWORKS[framework])
    return convscope.load(demo_model(framework))


@pytest.mark.parametrize("framework", [pytest.param(f, marks=pytest.mark.backend(b)) for f, b in FRAMEWORKS.items()])
def test_top_patches_and_fields_agree_with_torch(framework, data, torch_result):
    backend = backend_of(framework)
    got = top_patches(backend, data, "relu3", [0, 1, 2, 3], k=3, guided=True, progress=False)
    assert np.array_equal(got.indices, torch_result.indices)
    assert np.array_equal(got.locations, torch_result.locations)
    assert np.array_equal(got.patches, torch_result.patches)
    assert np.allclose(got.values, torch_result.values, rtol=1e-4, atol=1e-5)
    scale = np.abs(torch_result.guided).max()
    assert np.allclose(got.guided, torch_result.guided, atol=1e-4 * scale)
    rf = receptive_field(backend, "relu4", 2, 5, image_size=(64, 64))
    assert rf.box == (-15 + 16, -15 + 40, -15 + 16 + 38, -15 + 40 + 38)


@pytest.mark.parametrize("framework", [pytest.param(f, marks=pytest.mark.backend(b)) for f, b in FRAMEWORKS.items()])
def test_filters_agree_with_torch(framework):
    torch = pytest.importorskip("torch")  # noqa: F841
    backend = backend_of(framework)
    want = filters(demo_model("torch"), "conv2", scale="symmetric")
    got = filters(backend, "conv2", scale="symmetric")
    assert np.allclose(got.weights, want.weights, atol=1e-6)
    assert np.allclose(got.to_rgb(), want.to_rgb(), atol=1e-5)
