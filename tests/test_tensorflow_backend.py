"""The TensorFlow/Keras backend on the demo model: conformance, agreement with the torch
(and ONNX) backends on the same weights, callable seeds, repeated use, loading, bad input."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import importlib.util  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import convscope  # noqa: E402
from convscope.backends.tensorflow import KerasBackend, convscope_make_backend  # noqa: E402
from convscope.data import demo_path  # noqa: E402
from convscope.testing import check_backend  # noqa: E402
from keras_models import tiny_cnn  # noqa: E402

pytestmark = pytest.mark.backend("tensorflow")

DEMO_LAYERS = [f"{kind}{i}" for i in range(1, 5) for kind in ("conv", "bn", "relu", "pool") if (kind, i) != ("pool", 4)]
DEMO_LAYERS += ["gap", "flatten", "fc"]


def rel(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.fixture(scope="module")
def keras_demo():
    return convscope.load(str(demo_path("keras")))


@pytest.fixture(scope="module")
def torch_demo():
    pytest.importorskip("torch")
    return convscope.load(convscope.data.demo_model("torch"), input_shape=(3, 64, 64))


@pytest.fixture(scope="module")
def x():
    return convscope.data.shapes(3, seed=11).images


def test_shipped_demo_passes_the_conformance_kit(keras_demo, torch_demo):
    assert isinstance(keras_demo, KerasBackend) and keras_demo.name == "tensorflow"
    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)
    report = check_backend(keras_demo, x)
    assert report["relu_rule_sites"] == 3 and report["batch_invariance"] < 1e-5
    # the layer records (channels-first shapes, geometry) are those of the torch model
    theirs = {r.name: r for r in torch_demo.layers()}
    for r in keras_demo.layers():
        t = theirs[r.name]
        assert (r.kind, r.shape, r.kernel, r.stride, r.padding, r.dilation) == \
            (t.kind, t.shape, t.kernel, t.stride, t.padding, t.dilation), r.name
    assert keras_demo.fixed_size == (64, 64) and keras_demo.input_shape == (3, 64, 64)


def other_backends(torch_demo):
    """The torch backend, and the ONNX one where it and the demo file are there."""
    others = {"torch": torch_demo}
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("convscope.backends.onnxruntime"):
        try:
            others["onnx"] = convscope.load(str(demo_path("onnx")))
        except FileNotFoundError:
            pass
    return others


def test_forward_and_activations_agree_with_torch(keras_demo, torch_demo, x):
    for name, other in other_backends(torch_demo).items():
        assert rel(keras_demo.forward(x), other.forward(x)) < 1e-4, name
        ours, theirs = keras_demo.activations(x, DEMO_LAYERS), other.activations(x, DEMO_LAYERS)
        for layer in DEMO_LAYERS:
            assert ours[layer].shape == theirs[layer].shape and ours[layer].dtype == np.float32
            assert rel(ours[layer], theirs[layer]) < 1e-4, (name, layer)


@pytest.mark.parametrize("rule", ["standard", "guided", "deconvnet"])
def test_every_gradient_kind_agrees_with_torch(keras_demo, torch_demo, x, rule):
    rng = np.random.default_rng(3)
    relu2 = rng.standard_normal((3, 32, 32, 32)).astype(np.float32)
    cases = [  # (seeds, wrt): seeds at the output, at inner layers, at both; gradients at the input and inside
        ({"output": rng.standard_normal((3, 4)).astype(np.float32)}, ["input", "conv1", "relu2", "pool3", "gap"]),
        ({"relu2": relu2}, ["input", "conv1", "bn1"]),
        ({"output": np.eye(4, dtype=np.float32)[[0, 1, 2]], "conv3": np.ones((3, 64, 16, 16), np.float32)},
         ["input", "relu1"]),
    ]
    for name, other in other_backends(torch_demo).items():
        for seeds, wrt in cases:
            ours = keras_demo.gradient(x, seeds, wrt=wrt, rule=rule)
            theirs = other.gradient(x, seeds, wrt=wrt, rule=rule)
            for n in wrt:
                assert ours[n].shape == theirs[n].shape and ours[n].dtype == np.float32
                assert rel(ours[n], theirs[n]) < 1e-4, (name, rule, list(seeds), n)
            for n in ours.activations:
                assert rel(ours.activations[n], theirs.activations[n]) < 1e-4
            assert rel(ours.outputs, theirs.outputs) < 1e-4


def test_callable_seeds_see_the_pass_and_match_torch(keras_demo, torch_demo, x):
    def dream(acts):  # DeepDream's objective 1/2 ||a||^2 at relu3: the seed is the activation
        return {"relu3": acts["relu3"]}

    ours = keras_demo.gradient(x, dream, at=["relu3"], wrt=["input", "pool1"], rule="guided")
    theirs = torch_demo.gradient(x, dream, at=["relu3"], wrt=["input", "pool1"], rule="guided")
    assert rel(ours["input"], theirs["input"]) < 1e-4 and rel(ours["pool1"], theirs["pool1"]) < 1e-4
    acts = keras_demo.activations(x, ["relu3"])["relu3"]
    explicit = keras_demo.gradient(x, {"relu3": acts}, wrt=["input"], rule="guided")["input"]
    np.testing.assert_allclose(ours["input"], explicit, rtol=1e-5, atol=1e-8)
    np.testing.assert_array_equal(ours.activations["relu3"], acts)


def test_callable_seed_errors_come_back_unchanged(keras_demo, x):
    class Boom(Exception):
        pass

    def exploding(acts):
        raise Boom("mid-pass")

    with pytest.raises(Boom, match="mid-pass"):
        keras_demo.gradient(x, exploding, at=["relu2"])
    with pytest.raises(ValueError, match=r"'seeds' parameter of gradient names 'relu3', which is not in at=\['relu2'\]"):
        keras_demo.gradient(x, lambda acts: {"relu3": acts["relu2"]}, at=["relu2"])
    with pytest.raises(ValueError, match=r"'seeds' parameter of gradient must be shaped like 'relu2', \(3, 32, 32, 32\)"):
        keras_demo.gradient(x, lambda acts: {"relu2": acts["relu2"][:, :3]}, at=["relu2"])
    with pytest.raises(RuntimeError, match="cannot call the backend"):  # re-entry fails instead of deadlocking
        keras_demo.gradient(x, lambda acts: {"output": keras_demo.forward(x)})
    g = keras_demo.gradient(x, lambda acts: {"output": np.ones_like(acts["output"])})  # still usable afterwards
    assert np.abs(g["input"]).sum() > 0


def test_threads_share_one_backend(keras_demo, x):
    seeds = {"output": np.ones((3, 4), np.float32)}
    want = keras_demo.gradient(x, seeds, rule="guided")["input"]
    results, errors = [], []

    def work():
        try:
            for _ in range(4):
                results.append(keras_demo.gradient(x, seeds, rule="guided")["input"])
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 12
    for got in results:
        np.testing.assert_array_equal(got, want)


def test_thousand_gradient_calls_keep_memory_and_time_flat():
    psutil = pytest.importorskip("psutil")
    backend = KerasBackend(tiny_cnn("functional", size=16))
    x = np.random.default_rng(0).random((1, 3, 16, 16), dtype=np.float32)
    seeds = np.random.default_rng(1).standard_normal((1000, 1, 4)).astype(np.float32)
    process = psutil.Process()
    for i in range(1000):
        if i == 100:
            rss_start = process.memory_info().rss
        backend.gradient(x, {"output": seeds[i]}, wrt=["input", "relu1"], rule="guided")
    growth = (process.memory_info().rss - rss_start) / 2**20
    # stated bounds: < 16 MiB more after calls 100..1000, and one trace in all (no retracing per
    # call, which is what would make later calls slower; no timed assertion, as everywhere)
    assert growth < 16, f"RSS grew by {growth:.1f} MiB"
    assert backend._traces == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras's own HDF5 writer
def test_loading_paths_and_options(tmp_path, keras_demo, x):
    model = convscope.data.demo_model("keras")
    h5 = tmp_path / "demo.h5"
    model.save(h5)
    for source in (demo_path("keras"), h5, model):
        backend = convscope.load(source)
        assert isinstance(backend, KerasBackend)
        np.testing.assert_allclose(backend.forward(x), keras_demo.forward(x), rtol=1e-6)
    eager = convscope.load(model, compile=False)
    g = eager.gradient(x, {"output": np.ones((3, 4), np.float32)}, wrt=["input", "relu2"], rule="deconvnet")
    want = keras_demo.gradient(x, {"output": np.ones((3, 4), np.float32)}, wrt=["input", "relu2"], rule="deconvnet")
    assert rel(g["input"], want["input"]) < 1e-5 and rel(g["relu2"], want["relu2"]) < 1e-5
    assert convscope_make_backend("model.onnx", {}) is None and convscope_make_backend(object(), {}) is None
    with pytest.raises(FileNotFoundError, match="no Keras model file"):
        convscope.load(str(tmp_path / "missing.keras"))
    with pytest.raises(ValueError, match=r"'input_shape' parameter of convscope.load must be \(C, H, W\)"):
        convscope.load(model, input_shape=(3, 64))


@pytest.mark.parametrize("bad, error, match", [
    (np.zeros((3, 64, 64), np.float32), ValueError, r"'x' parameter of forward must be a 4-d array .* Got shape \(3, 64, 64\)"),
    (np.zeros((1, 1, 64, 64), np.float32), ValueError, "must be an array with 3 channels"),
    (np.zeros((1, 64, 64, 3), np.float32), ValueError, "channels last"),
    (np.zeros((1, 3, 64, 64), np.uint8), TypeError, "floating-point .* Got dtype uint8"),
    (np.full((1, 3, 64, 64), np.nan, np.float32), ValueError, "finite .* Got 12288 non-finite"),
    (np.zeros((1, 3, 32, 32), np.float32), ValueError, r"images of size \(64, 64\) for this fixed-size model"),
])
def test_bad_input(keras_demo, bad, error, match):
    with pytest.raises(error, match=match):
        keras_demo.forward(bad)


def test_bad_names_seeds_and_weights(keras_demo, torch_demo, x):
    with pytest.raises(ValueError, match=r"'layers' parameter of activations must be a known layer name\. "
                                         r"Got 'relu5' instead; closest: relu4, relu3, relu2, relu1"):
        keras_demo.activations(x, ["relu5"])
    with pytest.raises(ValueError, match=r"'wrt' parameter of gradient must be a known layer name\. Got 'conv_1'"):
        keras_demo.gradient(x, {"output": np.ones((3, 4), np.float32)}, wrt=["conv_1"])
    with pytest.raises(ValueError, match=r"'rule' parameter of gradient must be one of 'standard', 'guided', 'deconvnet'"):
        keras_demo.gradient(x, {"output": np.ones((3, 4), np.float32)}, rule="Guided")
    with pytest.raises(ValueError, match=r"'seeds' parameter of gradient must be shaped like 'relu2', \(3, 32, 32, 32\)"):
        keras_demo.gradient(x, {"relu2": np.ones((3, 32, 32, 16), np.float32)})
    with pytest.raises(ValueError, match=r"'seeds' parameter of gradient names 'relu2', which is not in at=\['output'\]"):
        keras_demo.gradient(x, {"relu2": np.ones((3, 32, 32, 32), np.float32)}, at=["output"])
    with pytest.raises(ValueError, match="known layer name"):
        keras_demo.weights("fc2")
    theirs = {k: v.detach().numpy() for k, v in convscope.data.demo_model("torch").state_dict().items()}
    for layer in ("conv1", "bn2", "fc"):
        for name, value in keras_demo.weights(layer).items():
            np.testing.assert_array_equal(value, theirs[f"{layer}.{name}"])
