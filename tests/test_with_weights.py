"""Backend.with_weights: a new backend over a copy of the model with some parameters replaced.

References: the demo model in its three formats (torch, ONNX, Keras: the same trained weights)
given the same new conv1 and fc weights must agree with each other, and with the torch module
whose parameters are set by hand; the user's model and the original backend are unchanged.
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import convscope  # noqa: E402
from convscope.data import demo_model, demo_path, shapes  # noqa: E402

X = shapes(4, seed=3).images


@pytest.fixture(scope="module")
def torch_demo():
    return demo_model("torch")


def new_weights(backend, layers=("conv1", "fc"), seed=0):
    rng = np.random.default_rng(seed)
    return {name: {k: (0.3 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in backend.weights(name).items()}
            for name in layers}


def test_torch_copy_matches_parameters_set_by_hand_and_leaves_the_module_alone(torch_demo):
    model = torch_demo
    model.train()  # an unusual state that must survive
    model.fc.weight.requires_grad_(False)
    handle = model.conv2.register_forward_hook(lambda *a: None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        backend = convscope.load(model)
        out = backend.forward(X)
        new = new_weights(backend)
        replaced = backend.with_weights(new)
        got = replaced.forward(X)
        by_hand = copy.deepcopy(model).eval()
        with torch.no_grad():
            for layer, params in new.items():
                for k, v in params.items():
                    getattr(by_hand, layer).get_parameter(k).copy_(torch.from_numpy(v))
            want = by_hand(torch.from_numpy(X)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert np.abs(got - out).max() > 1.0  # the new weights matter
        # the user's module: weights, mode, requires_grad, hooks
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert model.training and all(m.training for m in model.modules())
        assert not model.fc.weight.requires_grad and model.conv1.weight.requires_grad
        assert list(model.conv2._forward_hooks.values()) == [handle.hooks_dict_ref()[handle.id]]  # the hook is still there
        # the copy keeps the mode of the original (train here), the backend evaluates it in eval mode
        np.testing.assert_array_equal(backend.forward(X), out)
        assert replaced.module is not model and replaced.module.training
        np.testing.assert_array_equal(replaced.weights("conv1")["weight"], new["conv1"]["weight"])
    finally:
        handle.remove()
        model.eval()
        model.fc.weight.requires_grad_(True)


def test_three_frameworks_agree_on_replaced_weights(torch_demo):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("keras")
    backends = [convscope.load(torch_demo), convscope.load(demo_path("onnx")), convscope.load(demo_model("keras"))]
    trained = [b.forward(X) for b in backends]
    new = new_weights(backends[0])
    outs = [b.with_weights(new).forward(X) for b in backends]
    scale = np.abs(outs[0]).max()
    for o in outs[1:]:
        assert np.abs(o - outs[0]).max() / scale < 1e-4
    for b, t in zip(backends, trained):  # the original backends are unchanged
        np.testing.assert_array_equal(b.forward(X), t)
        np.testing.assert_array_equal(b.weights("conv1")["weight"], backends[0].weights("conv1")["weight"])


def test_preprocessed_backend_keeps_its_preprocessing(torch_demo):
    p = convscope.Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    backend = convscope.load(torch_demo, preprocess=p)
    replaced = backend.with_weights(new_weights(backend, ("fc",)))
    assert type(replaced) is type(backend) and replaced.preprocess is p
    raw = convscope.load(torch_demo).with_weights(new_weights(backend, ("fc",)))
    np.testing.assert_allclose(replaced.forward(X), raw.forward((X - 0.5) / 0.25), rtol=1e-5, atol=1e-5)


def test_onnx_shared_initializer_is_replaced_for_one_node_only():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((2, 2, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"]), helper.make_node("Conv", ["a", "w"], ["b"]),
             helper.make_node("GlobalAveragePool", ["b"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    backend = convscope.load(model.SerializeToString())
    x = np.random.default_rng(1).random((3, 2, 4, 4)).astype(np.float32)
    w2 = 2 * w
    got = backend.with_weights({"a": {"weight": w2}}).forward(x)
    mean = x.mean(axis=(2, 3))  # 1x1 convs commute with the spatial mean
    want = mean @ w2[:, :, 0, 0].T @ w[:, :, 0, 0].T
    np.testing.assert_allclose(got, want, rtol=1e-5)
    np.testing.assert_array_equal(backend.weights("b")["weight"], w)


def test_onnx_weights_in_external_data(tmp_path, torch_demo):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = onnx.load(demo_path("onnx"))
    path = tmp_path / "demo.onnx"
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
                    size_threshold=0)
    backend = convscope.load(str(path))
    new = new_weights(convscope.load(torch_demo))
    want = convscope.load(torch_demo).with_weights(new).forward(X)
    got = backend.with_weights(new).forward(X)
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


def test_onnx_computed_weight_is_refused_naming_the_layer():
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    q = np.ones((2, 2, 1, 1), np.int8)
    nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["w"]), helper.make_node("Conv", ["x", "w"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["g"]), helper.make_node("Flatten", ["g"], ["y"])]
    graph = helper.make_graph(nodes, "quantised", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                              [numpy_helper.from_array(q, "q"), numpy_helper.from_array(np.float32(0.5), "s")])
    backend = convscope.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
    with pytest.raises(ValueError, match=r"'a', whose 'weight' is computed by a DequantizeLinear node"):
        backend.with_weights({"a": {"weight": np.zeros((2, 2, 1, 1), np.float32)}})


def test_keras_model_that_cannot_be_cloned_says_what_failed():
    keras = pytest.importorskip("keras")

    class Opaque(keras.Model):  # subclassed, no get_config: clone_model cannot rebuild it
        def __init__(self):
            super().__init__()
            self.conv = keras.layers.Conv2D(2, 3, name="conv")
            self.pool = keras.layers.GlobalAveragePooling2D(name="gap")

        def call(self, x):
            return self.pool(self.conv(x))

    model = Opaque()
    model(np.zeros((1, 8, 8, 3), np.float32))
    backend = convscope.load(model)
    w = backend.weights("conv")
    with pytest.raises(NotImplementedError, match="with_weights could not clone the Keras model 'opaque' .*TypeError"):
        backend.with_weights({"conv": w})


@pytest.mark.parametrize("bad, error, match", [
    ({"conv9": {}}, ValueError, r"'weights' parameter of with_weights must be a known layer name. Got 'conv9'.*conv1"),
    ({"conv1": {"wieght": np.zeros(3)}}, ValueError, r"known parameter name. Got 'wieght' instead; closest: weight"),
    ({"conv1": {"weight": np.zeros((16, 3, 3, 2), np.float32)}}, ValueError, r"shape \(16, 3, 3, 3\).*Got shape"),
    ({"conv1": {"weight": np.zeros((16, 3, 3, 3), np.int64)}}, TypeError, r"a float array.*Got dtype int64"),
    ({"conv1": {"bias": np.full(16, np.nan, np.float32)}}, ValueError, r"finite values.*Got 16 NaN or Inf"),
    ({"relu1": {}}, ValueError, r"layers with parameters. Got 'relu1', which has none"),
    ({"conv1": np.zeros(3)}, TypeError, r"a mapping \{parameter: array\}"),
    ([("conv1", {})], TypeError, r"a mapping \{layer: \{parameter: array\}\}"),
])
def test_bad_weights_are_refused_on_every_backend(torch_demo, bad, error, match):
    backends = [convscope.load(torch_demo)]
    try:
        backends.append(convscope.load(demo_path("onnx")))
    except ImportError:
        pass
    for backend in backends:
        with pytest.raises(error, match=match):
            backend.with_weights(bad)


def test_a_backend_without_the_capability_says_so():
    from convscope.backend import BackendBase

    class Bare(BackendBase):
        name = "bare"

    with pytest.raises(NotImplementedError, match="'bare' backend .* cannot run with replaced weights"):
        Bare().with_weights({})


def test_check_backend_checks_with_weights(torch_demo):
    from convscope.testing import check_backend

    x = np.random.default_rng(0).random((3, 3, 64, 64), dtype=np.float32)  # as test_torch_backend
    report = check_backend(convscope.load(torch_demo), x)
    assert report["with_weights"] == "conv1"  # the first layer with weights was replaced, zeroed, and refused bad ones
