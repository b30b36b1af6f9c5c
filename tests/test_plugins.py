"""Loading through pluggy: built-ins, a third-party backend, and what happens when nobody claims a model."""
import numpy as np
import pytest

import convscope
from convscope._plugins import plugin_manager
from convscope.backend import Gradients, Layer
from convscope.hookspecs import hookimpl


class LinearBackend:
    """A pure-NumPy 'model': scores = W . mean-pooled pixels. Gradient-free methods need only forward."""

    name = "numpy-linear"

    def __init__(self, weight):
        self.weight = np.asarray(weight, np.float32)

    def layers(self):
        return [Layer("pooled", "pool", shape=(self.weight.shape[1], 1, 1)), Layer("fc", "linear", shape=(len(self.weight),))]

    def _pooled(self, x):
        return x.mean(axis=(2, 3))

    def forward(self, x):
        return (self._pooled(x) @ self.weight.T).astype(np.float32)

    def activations(self, x, layers):
        acts = {"pooled": self._pooled(x)[:, :, None, None], "fc": self.forward(x), "output": self.forward(x), "input": x}
        return {n: acts[n] for n in layers}

    def gradient(self, x, seeds, *, wrt=("input",), at=None, rule="standard"):
        raise NotImplementedError("this backend is gradient-free")

    def weights(self, layer):
        return {"weight": self.weight}


class LinearPlugin:
    @hookimpl
    def convscope_make_backend(self, model, options):
        if isinstance(model, dict) and model.get("kind") == "numpy-linear":
            return LinearBackend(model["weight"])
        return None


@pytest.fixture
def linear_plugin():
    pm = plugin_manager()
    plugin = LinearPlugin()
    pm.register(plugin, name="numpy-linear")
    try:
        yield plugin
    finally:
        pm.unregister(plugin)


def test_third_party_backend_through_the_hook(linear_plugin):
    weight = np.array([[1, 0, 0], [0, 0, 2]], np.float32)
    backend = convscope.load({"kind": "numpy-linear", "weight": weight})
    assert isinstance(backend, LinearBackend) and isinstance(backend, convscope.Backend)
    assert "numpy-linear" in convscope.installed_backends()
    x = np.zeros((2, 3, 4, 4), np.float32)
    x[0, 0] = 1.0
    x[1, 2, :2] = 1.0  # half the pixels of channel 2
    np.testing.assert_allclose(backend.forward(x), [[1, 0], [0, 1]])
    # a gradient-free computation: occlusion-style score drop when one channel is blanked, by hand
    blanked = x.copy()
    blanked[:, 2] = 0
    drop = backend.forward(x) - backend.forward(blanked)
    np.testing.assert_allclose(drop, [[0, 0], [0, 1]])


def test_a_backend_is_returned_unchanged(linear_plugin):
    backend = LinearBackend(np.eye(3))
    assert convscope.load(backend) is backend


def test_unclaimed_model_names_its_type_and_the_installed_backends():
    class Mystery:
        pass

    with pytest.raises(TypeError, match=r"No convscope backend accepts a model of type .*Mystery\. Installed backends: .*torch"):
        convscope.load(Mystery())


def test_gradients_result_indexing():
    g = Gradients(grads={"input": np.ones(2)})
    assert g["input"].sum() == 2
