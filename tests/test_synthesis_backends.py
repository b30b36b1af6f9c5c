"""Synthesis on the ONNX and Keras demo models: the same NumPy objectives through each
backend's gradient give the same images as on torch (same weights, same seed)."""
import numpy as np
import pytest

from test_synthesis import Counting


def _backend(framework, module_name):
    pytest.importorskip(module_name)
    import convscope
    from convscope.data import demo_model

    return convscope.load(demo_model(framework))


@pytest.fixture(scope="module")
def torch_backend():
    pytest.importorskip("torch")
    import convscope
    from convscope.data import demo_model

    return convscope.load(demo_model("torch"))


@pytest.mark.parametrize("framework, module_name", [
    pytest.param("onnx", "onnxruntime", marks=pytest.mark.backend("onnxruntime")),
    pytest.param("keras", "tensorflow", marks=pytest.mark.backend("tensorflow")),
])
def test_visualize_runs_on_the_backend_and_matches_torch(framework, module_name, torch_backend):
    from convscope.synthesis import channel, class_logit, evaluate, visualize

    backend = _backend(framework, module_name)
    counting = Counting(backend)
    obj = channel("relu3", 5) + 0.05 * class_logit(1)
    res = visualize(counting, obj, steps=6, seed=2, progress=False)  # the size comes from the model file
    assert counting.calls["gradient"] == 6 and counting.calls["forward"] == counting.calls["activations"] == 0
    assert res.images.shape == (1, 3, 64, 64)
    ref = visualize(torch_backend, obj, steps=6, size=64, seed=2, progress=False)
    np.testing.assert_allclose(res.images, ref.images, atol=2e-3)
    np.testing.assert_allclose(res.history, ref.history, rtol=1e-3, atol=1e-4)
    grey = np.full((1, 3, 64, 64), 0.5, np.float32)
    assert evaluate(backend, obj, res.images)[0] > evaluate(backend, obj, grey)[0]
    with pytest.raises(ValueError, match=r"'size' parameter of visualize must be \(64, 64\) for this fixed-size"):
        visualize(backend, obj, steps=1, size=96, progress=False)
