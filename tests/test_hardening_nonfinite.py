"""NaN or Inf made inside a model (from finite input) is reported as FloatingPointError by the
backend, on forward, activations and gradients, and so by the methods: never handed on to be
drawn as a blank picture.

The same tiny model in each framework: conv -> z = (conv * 1e30) * 1e30, which overflows to
+-Inf (or stays 0), -> z - z, which is NaN wherever z is infinite -> global average pool.
"""
import numpy as np
import pytest

import convscope

SCALE = np.float32(1e30)


def torch_model():
    torch = pytest.importorskip("torch")

    class Overflow(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.relu = torch.nn.ReLU()
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.flatten = torch.nn.Flatten()

        def forward(self, x):
            z = self.relu(self.conv(x)) * SCALE * SCALE
            return self.flatten(self.pool(z - z))

    return Overflow().eval()


def keras_model():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    z = keras.layers.ReLU(name="relu")(keras.layers.Conv2D(4, 3, padding="same", name="conv")(x))
    z = keras.layers.Rescaling(float(SCALE), name="big")(z)
    z = keras.layers.Rescaling(float(SCALE), name="bigger")(z)
    z = keras.layers.Subtract(name="nan")([z, z])
    return keras.Model(x, keras.layers.GlobalAveragePooling2D(name="pool")(z))


def onnx_model():
    pytest.importorskip("onnxruntime")
    from onnx_models import Graph

    g = Graph(seed=0)
    h = g.op("Relu", [g.conv("x", c_in=3, c_out=4)], ["relu"])
    big = g.op("Mul", [g.op("Mul", [h, g.const(np.float32(SCALE))]), g.const(np.float32(SCALE))], ["big"])
    nan = g.op("Sub", [big, big], ["nan"])
    return g.model(g.op("GlobalAveragePool", [nan], ["pool"]), shape=(3, 8, 8))


MODELS = {"torch": torch_model, "tensorflow": keras_model, "onnxruntime": onnx_model}


def _params():
    return [pytest.param(name, marks=[pytest.mark.backend(name)])
            for name in MODELS]


@pytest.fixture
def x():
    return np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32) + 0.5


def _backend(name):
    return convscope.load(MODELS[name]())


@pytest.mark.parametrize("name", _params())
def test_forward_reports_values_the_model_made_non_finite(name, x):
    backend = _backend(name)
    with pytest.raises(FloatingPointError, match="forward: the model produced .* non-finite values"):
        backend.forward(x)


@pytest.mark.parametrize("name", _params())
def test_activations_report_the_non_finite_layer(name, x):
    backend = _backend(name)
    layer = {"torch": None, "tensorflow": "nan", "onnxruntime": "nan"}[name]
    if layer is None:  # torch: z - z is a functional op; the pooled output is NaN
        layer = "pool"
    with pytest.raises(FloatingPointError, match=f"activations: .* non-finite values in '{layer}'"):
        backend.activations(x, [layer])
    finite = backend.activations(x, ["relu"])["relu"]  # the layers before it are fine, and still returned
    assert np.isfinite(finite).all()


@pytest.mark.parametrize("name", _params())
@pytest.mark.parametrize("seeds", ["fixed", "callable"])
def test_gradients_report_instead_of_returning_nan(name, seeds, x):
    backend = _backend(name)
    fixed = {"output": np.ones((2, 4), np.float32)}
    called = []

    def from_pass(acts):
        called.append(acts)
        return fixed

    with pytest.raises(FloatingPointError, match="gradient: the model produced"):
        backend.gradient(x, fixed if seeds == "fixed" else from_pass, at=["output"])
    assert not called  # a seeds callable never sees NaN activations


@pytest.mark.parametrize("name", _params())
@pytest.mark.parametrize("method", ["saliency", "grad_cam", "occlusion"])
def test_methods_fail_loudly_rather_than_draw_a_blank_picture(name, method, x):
    backend = _backend(name)
    fn = getattr(convscope.attribution, method)
    kwargs = {"layer": "relu"} if method == "grad_cam" else {"window": 4} if method == "occlusion" else {}
    with pytest.raises(FloatingPointError, match="non-finite"):
        fn(backend, x, 0, **kwargs)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.backend(n)) for n in MODELS])
def test_finite_input_and_layers_before_the_overflow_still_work(name, x):
    backend = _backend(name)
    g = backend.gradient(x, {"relu": np.ones_like(backend.activations(x, ["relu"])["relu"])}, wrt=["input"])
    assert np.isfinite(g["input"]).all() and np.abs(g["input"]).sum() > 0
