"""The TensorFlow/Keras backend on every kind of Keras model: Sequential, functional,
subclassed, nested, multi-output, every form of ReLU against a hand-written rule, the
user's model left alone, and keras.applications networks."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import convscope  # noqa: E402
from convscope.backends.tensorflow import KerasBackend  # noqa: E402
from convscope.testing import check_backend, relu_rule  # noqa: E402
from keras_models import (SubclassedNet, copy_weights, nested, reference_forward, relu_forms, tiny_cnn,  # noqa: E402
                          two_heads)

pytestmark = pytest.mark.backend("tensorflow")
RULES = ["standard", "guided", "deconvnet"]


def images(n=2, size=16, seed=0):
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def nhwc(x):
    return tf.constant(x.transpose(0, 2, 3, 1))


def nchw(t):
    return np.asarray(t).transpose(0, 3, 1, 2)


def rel(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


def tape_input_gradient(fn, x, seed):
    """Reference: eager GradientTape of <seed, fn(x)> at the (NCHW) input."""
    xt = nhwc(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = fn(xt)
    return nchw(tape.gradient(out, xt, tf.constant(seed))), np.asarray(out)


def explicit_rule(rule):
    """The reference ReLU: clip(z, 0, upper) with the backward rule written out by hand."""
    def relu(z, upper):
        top = np.float32(np.inf if upper is None else upper)

        @tf.custom_gradient
        def f(z):
            def grad(g):
                inside = tf.cast((z > 0) & (z < top), g.dtype)
                positive = tf.maximum(g, 0.0)
                return {"standard": g * inside, "guided": positive * inside, "deconvnet": positive}[rule]
            return tf.clip_by_value(z, 0.0, top), grad
        return f(z)
    return relu


@pytest.fixture(scope="module")
def forms():
    """relu_forms as a functional model and as a subclassed one with the same weights."""
    functional = relu_forms()
    subclassed = SubclassedNet()
    subclassed(np.zeros((1, 12, 12, 3), np.float32))
    copy_weights(functional, subclassed, ["conv_fused", "conv_b", "conv_c", "conv_d", "conv_e", "fc_fused", "fc"])
    return {"functional": functional, "subclassed": subclassed}


@pytest.mark.parametrize("form", ["functional", "subclassed"])
@pytest.mark.parametrize("rule", RULES)
def test_every_relu_form_follows_the_rule(forms, form, rule):
    x = images(2, 12) * 4 - 2
    seed = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    backend = convscope.load(forms[form])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every ReLU reached: no "does not reach" warning
        got = backend.gradient(x, {"output": seed}, wrt=["input", "conv_d"], rule=rule)
    want, out = tape_input_gradient(lambda t: reference_forward(forms["functional"], t, explicit_rule(rule)), x, seed)
    np.testing.assert_allclose(got["input"], want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    np.testing.assert_allclose(got.outputs, out, rtol=1e-5, atol=1e-6)
    if form == "functional":  # the inputs really probe every rule: ReLU6 saturates, rules differ
        assert (backend.activations(x, ["scale"])["scale"] > 6).any()
        plain, _ = tape_input_gradient(lambda t: reference_forward(forms["functional"], t, explicit_rule("standard")),
                                       x, seed)
        assert rule == "standard" or not np.allclose(plain, want, atol=1e-6 * np.abs(want).max())


def test_relu_rule_at_each_relu_record(forms):
    backend = convscope.load(forms["functional"])
    x = images(2, 12) * 4 - 2
    seed = np.random.default_rng(2).standard_normal((2, 3)).astype(np.float32)
    pairs = [("conv_b", "relu_layer", None), ("conv_c", "act_relu", None), ("scale", "relu6", 6.0), ("conv_e", "relu", None)]
    ops = {r.name: r.op for r in backend.layers()}
    assert ops["relu6"] == "ReLU6" and ops["act_relu"] == "ReLU" and ops["relu"] == "ReLU"
    for rule in RULES:
        for pre, relu, upper in pairs:
            g = backend.gradient(x, {"output": seed}, wrt=[pre, relu], rule=rule)
            np.testing.assert_allclose(g[pre], relu_rule(rule, g.activations[pre], g[relu], upper), rtol=1e-6, atol=1e-9)


def test_raw_relu_op_in_a_subclassed_call_is_reported():
    class RawOps(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = keras.layers.Conv2D(4, 3), keras.layers.Dense(2)

        def call(self, x):
            return self.fc(tf.reduce_mean(tf.nn.relu(self.conv(x)), axis=(1, 2)))

    model = RawOps()
    model(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.warns(RuntimeWarning, match="guided rule does not reach them"):
        convscope.load(model).gradient(images(1, 8), {"output": np.ones((1, 2), np.float32)}, rule="guided")


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_model_forms_agree_with_raw_keras(kind):
    model = tiny_cnn(kind)
    if kind != "functional":
        copy_weights(tiny_cnn("functional", seed=1), model, ["conv1", "bn1", "conv2", "fc"])
    backend = convscope.load(model)
    x = images(3)
    names = [r.name for r in backend.layers()]
    assert names == ["conv1", "bn1", "relu1", "pool1", "conv2", "gap", "fc"]
    seed = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    want, out = tape_input_gradient(lambda t: model(t, training=False), x, seed)
    g = backend.gradient(x, {"output": seed}, wrt=["input", "pool1"])
    assert rel(g["input"], want) < 1e-5 and rel(g.outputs, out) < 1e-5
    assert g["pool1"].shape == g.activations["pool1"].shape == (3, 8, 8, 8)
    if kind == "subclassed":
        report = check_backend(backend, x)
        assert report["relu_rule_sites"] == 1


def test_nested_model_layers_by_path():
    model, base = nested()
    backend = convscope.load(model)
    names = [r.name for r in backend.layers()]
    assert names[:5] == ["base/block1_conv1", "base/block1_conv2", "base/block1_relu", "base/block1_pool", "base"]
    records = {r.name: r for r in backend.layers()}
    assert records["base/block1_relu"].inputs == ("base/block1_conv2",) and records["head_conv"].inputs == ("base",)
    assert records["base"].kind == "block" and records["base/block1_conv2"].shape == (6, 16, 16)
    x = images(2)
    inner = keras.Model(base.inputs, base.get_layer("block1_relu").output)
    np.testing.assert_allclose(backend.activations(x, ["base/block1_relu"])["base/block1_relu"], nchw(inner(nhwc(x))),
                               rtol=1e-6)

    def rest(a):  # the model after base/block1_relu, written out
        z = model.get_layer("head_conv")(base.get_layer("block1_pool")(a))
        return model.get_layer("fc")(model.get_layer("gap")(model.get_layer("head_relu")(z)))

    seed = np.random.default_rng(5).standard_normal((2, 3)).astype(np.float32)
    a = inner(nhwc(x))
    with tf.GradientTape() as tape:
        tape.watch(a)
        out = rest(a)
    want = nchw(tape.gradient(out, a, tf.constant(seed)))
    g = backend.gradient(x, {"output": seed}, wrt=["base/block1_relu", "input"])
    assert rel(g["base/block1_relu"], want) < 1e-5
    g_seeded = backend.gradient(x, {"base/block1_relu": want}, wrt=["input"])  # the chain rule, through a seed
    assert rel(g_seeded["input"], g["input"]) < 1e-5
    gr = backend.gradient(x, {"output": seed}, wrt=["base/block1_conv2", "base/block1_relu"], rule="guided")
    np.testing.assert_allclose(gr["base/block1_conv2"], relu_rule("guided", gr.activations["base/block1_conv2"],
                                                                  gr["base/block1_relu"]), rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match=r"Got 'base/block1_conv3' instead; closest: base/block1_conv2, base/block1_conv1"):
        backend.activations(x, ["base/block1_conv3"])
    with pytest.raises(ValueError, match=r"Got 'bse/block1_conv1' instead; closest: base/block1_conv1"):
        backend.gradient(x, {"output": seed}, wrt=["bse/block1_conv1"])
    with pytest.raises(ValueError, match=r"Got 'head_conv/kernel' instead; closest: head_conv"):
        backend.activations(x, ["head_conv/kernel"])


def test_multi_output_model_needs_an_output_choice():
    model = two_heads()
    x = images(2)
    with pytest.raises(TypeError, match=r"returns 2 outputs \(logits, aux\); pass select="):
        convscope.load(model)
    outs = model(nhwc(x), training=False)
    for choice, index in [("aux", 1), (0, 0), (-1, 1)]:
        np.testing.assert_allclose(convscope.load(model, select=choice).forward(x), outs[index], rtol=1e-6)
    seed = np.random.default_rng(6).standard_normal((2, 3)).astype(np.float32)
    want, _ = tape_input_gradient(lambda t: model(t, training=False)[1], x, seed)
    assert rel(convscope.load(model, select="aux").gradient(x, {"output": seed})["input"], want) < 1e-5
    with pytest.raises(ValueError, match=r"'select' parameter of convscope.load must be a known output name\. "
                                         r"Got 'auxx' instead; closest: aux"):
        convscope.load(model, select="auxx")
    with pytest.raises(ValueError, match=r"'select' parameter of convscope.load must be <= 1\. Got 2"):
        convscope.load(model, select=2)


def snapshot(model):
    layers = model._flatten_layers()
    return dict(activation=[vars(layer).get("activation") for layer in layers],
                trainable=[layer.trainable for layer in layers], attributes=[sorted(vars(layer)) for layer in layers],
                weights=[v.numpy().copy() for v in model.weights], losses=len(model.losses))


def assert_same(before, after):
    assert before["activation"] == after["activation"] and before["trainable"] == after["trainable"]
    assert before["attributes"] == after["attributes"] and before["losses"] == after["losses"]
    for a, b in zip(before["weights"], after["weights"], strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("make", ["functional", "subclassed", "nested"])
def test_user_model_left_as_it_was_also_after_errors(forms, make):
    model = nested()[0] if make == "nested" else forms[make]
    if make == "nested":
        model.get_layer("base").trainable = False  # a frozen base must still give gradients
    backend = convscope.load(model)
    x = images(2, 12 if make != "nested" else 16)
    relu = [r.name for r in backend.layers() if r.kind == "relu"][0]
    out = np.ones((2, 3), np.float32)

    def exploding(acts):
        raise RuntimeError("boom mid-pass")

    before = snapshot(model)
    want = np.asarray(model(nhwc(x), training=False))
    calls = [  # (call, the exception it must raise, or None: it must succeed)
        (lambda: backend.forward(x), None),
        (lambda: backend.activations(x, [relu]), None),
        *[(lambda rule=rule: backend.gradient(x, {"output": out}, wrt=["input", relu], rule=rule), None) for rule in RULES],
        (lambda: backend.gradient(x, exploding, at=[relu], rule="guided"), RuntimeError),
        (lambda: backend.gradient(x, {"output": out[:, :1]}, rule="deconvnet"), ValueError),
        (lambda: backend.gradient(x, {"nope": out}), ValueError),
    ]
    for call, raises in calls:
        if raises is None:
            result = call()
            if hasattr(result, "grads"):
                assert np.abs(result["input"]).sum() > 0
        else:
            with pytest.raises(raises):
                call()
        assert_same(before, snapshot(model))
    np.testing.assert_array_equal(np.asarray(model(nhwc(x), training=False)), want)


@pytest.mark.parametrize("make, first_relu", [
    (keras.applications.MobileNetV2, ("Conv1_relu", "bn_Conv1", 6.0)),
    (keras.applications.ResNet50, ("conv1_relu", "conv1_bn", None)),
])
def test_keras_applications(make, first_relu):
    keras.utils.set_random_seed(0)
    model = make(weights=None, input_shape=(32, 32, 3), classes=5, classifier_activation=None)
    backend = convscope.load(model)
    records = {r.name: r for r in backend.layers()}
    relu, pre, upper = first_relu
    assert len(records) > 150 and records[relu].kind == "relu" and records[relu].inputs == (pre,)
    assert records[relu].op == ("ReLU6" if upper else "ReLU")
    conv = records[records[pre].inputs[0]]
    assert conv.kind == "conv" and conv.stride == (2, 2) and conv.shape[1:] == (16, 16)
    x = images(1, 32)
    seed = np.random.default_rng(7).standard_normal((1, 5)).astype(np.float32)
    want, _ = tape_input_gradient(lambda t: model(t, training=False), x, seed)
    assert rel(backend.gradient(x, {"output": seed})["input"], want) < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = backend.gradient(x, {"output": seed}, wrt=["input", pre, relu], rule="guided")
    np.testing.assert_allclose(g[pre], relu_rule("guided", g.activations[pre], g[relu], upper),
                               rtol=1e-5, atol=1e-6 * np.abs(g[pre]).max())
    assert np.isfinite(g["input"]).all() and np.abs(g["input"]).sum() > 0
