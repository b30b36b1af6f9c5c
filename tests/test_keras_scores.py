"""What the Keras backend explains: the scores before a final softmax by default, the
probabilities with ``output="probabilities"``, one output of several with ``select=``.

References are computed here: the pre-softmax scores from the layer's weights with
``keras.ops``, gradients with a ``tf.GradientTape`` written out in the test; the model is
checked to be left exactly as it was."""
import os
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import convscope  # noqa: E402
from keras_models import assert_unchanged as _assert_unchanged, snapshot  # noqa: E402
import convscope._renamed  # noqa: E402
from convscope.backends.tensorflow import KerasBackend  # noqa: E402

pytestmark = pytest.mark.backend("tensorflow")
L = keras.layers
SOFTMAX_NOTE = ("the softmax of the final layer {!r} is left out: methods explain the scores before it; "
                "load(model, output='probabilities') keeps it")


def images(n=2, size=8, seed=0):
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


def nhwc(x):
    return tf.constant(x.transpose(0, 2, 3, 1))


def trunk(inp):
    x = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
    return L.GlobalAveragePooling2D(name="gap")(x)


def features(model, x):
    """The input of the classifier, from a sub-model of the user's layers."""
    return keras.Model(model.inputs[0], model.get_layer("gap").output)(nhwc(x))


def dense_scores(model, x, name="predictions"):
    kernel, bias = model.get_layer(name).get_weights()
    return keras.ops.matmul(features(model, x), kernel) + bias


def fused():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    return keras.Model(inp, L.Dense(5, activation="softmax", name="predictions")(trunk(inp)))


def separate(kind):
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    z = L.Dense(5, name="predictions")(trunk(inp))
    last = {"activation": L.Activation("softmax", name="probs"), "layer": L.Softmax(name="probs"),
            "log": L.Activation("log_softmax", name="probs")}.get(kind)
    return keras.Model(inp, last(z) if last is not None else keras.ops.softmax(z))


def assert_unchanged(model, before):
    _assert_unchanged(model, before)
    assert model.get_layer("predictions").activation in (keras.activations.softmax, keras.activations.linear)


def tape_gradient(fn, x, seed):
    t = nhwc(x)
    with tf.GradientTape() as tape:
        tape.watch(t)
        out = fn(t)
    return np.asarray(tape.gradient(out, t, tf.constant(seed))).transpose(0, 3, 1, 2)


def rel(got, want):
    return float(np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want))


def test_a_fused_softmax_is_left_out_of_the_scores_and_the_model_is_untouched():
    model = fused()
    before = snapshot(model)
    x = images()
    backend = convscope.load(model)
    assert backend.output == "scores"
    want = np.asarray(dense_scores(model, x))
    np.testing.assert_allclose(backend.forward(x), want, rtol=1e-5, atol=1e-6)
    assert backend.choices == {"output": SOFTMAX_NOTE.format("predictions")}
    seed = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    expect = tape_gradient(lambda t: keras.ops.matmul(keras.Model(model.inputs[0], model.get_layer("gap").output)(t),
                                                      model.get_layer("predictions").kernel), x, seed)
    g = backend.gradient(x, {"output": seed}, wrt=["input", "predictions"])
    assert rel(g["input"], expect) < 1e-5
    np.testing.assert_allclose(g.outputs, want, rtol=1e-5, atol=1e-6)
    probs = np.asarray(model(nhwc(x), training=False))
    np.testing.assert_allclose(g.activations["predictions"], probs, rtol=1e-5)  # the layer itself: its softmax
    for rule in ("guided", "deconvnet"):
        assert np.isfinite(backend.gradient(x, {"output": seed}, rule=rule)["input"]).all()
    assert_unchanged(model, before)
    np.testing.assert_array_equal(np.asarray(model(nhwc(x), training=False)), probs)


def test_probabilities_keep_the_softmax():
    model = fused()
    x = images()
    backend = convscope.load(model, output="probabilities")
    probs = np.asarray(model(nhwc(x), training=False))
    np.testing.assert_allclose(backend.forward(x), probs, rtol=1e-6)
    assert backend.output == "probabilities" and backend.choices == {}
    seed = np.random.default_rng(2).standard_normal((2, 5)).astype(np.float32)
    assert rel(backend.gradient(x, {"output": seed})["input"], tape_gradient(model, x, seed)) < 1e-5


@pytest.mark.parametrize("kind", ["activation", "layer", "ops", "log"])
def test_a_final_softmax_layer_or_op_is_left_out(kind):
    model = separate(kind)
    x = images()
    backend = convscope.load(model)
    np.testing.assert_allclose(backend.forward(x), np.asarray(dense_scores(model, x)), rtol=1e-5, atol=1e-6)
    name = next(r.name for r in backend.layers() if r.inputs == ("predictions",))
    assert backend.choices == {"output": SOFTMAX_NOTE.format(name)}
    np.testing.assert_allclose(convscope.load(model, output="probabilities").forward(x),
                               np.asarray(model(nhwc(x), training=False)), rtol=1e-5, atol=1e-7)


def test_a_softmax_that_is_not_last_stays():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    z = L.Dense(5, activation="softmax", name="attention")(trunk(inp))
    model = keras.Model(inp, L.Dense(3, name="fc")(z))
    x = images()
    backend = convscope.load(model)
    np.testing.assert_allclose(backend.forward(x), np.asarray(model(nhwc(x), training=False)), rtol=1e-6)
    assert backend.choices == {}


class Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = L.Conv2D(4, 3, activation="relu", name="conv")
        self.gap = L.GlobalAveragePooling2D(name="gap")
        self.predictions = L.Dense(5, activation="softmax", name="predictions")

    def call(self, x):
        return self.predictions(self.gap(self.conv(x)))


@pytest.mark.parametrize("form", ["subclassed", "sequential", "nested"])
def test_every_model_form_gives_the_scores(form):
    keras.utils.set_random_seed(0)
    if form == "subclassed":
        model = Subclassed()
        model(np.zeros((1, 8, 8, 3), np.float32))
    elif form == "sequential":
        model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, activation="relu", name="conv"),
                                  L.GlobalAveragePooling2D(name="gap"), L.Dense(5, activation="softmax",
                                                                                name="predictions")])
    else:
        model = keras.Sequential([keras.Input((8, 8, 3)), fused()])
    x = images()
    inner = model.layers[-1] if form == "nested" else model
    kernel, bias = inner.get_layer("predictions").get_weights()
    h = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(nhwc(x), *inner.get_layer("conv").get_weights()[:1], 1, "VALID")
                                  + inner.get_layer("conv").get_weights()[1]), axis=(1, 2))
    want = np.asarray(keras.ops.matmul(h, kernel) + bias)
    backend = convscope.load(model)
    np.testing.assert_allclose(backend.forward(x), want, rtol=1e-5, atol=1e-6)
    name = "predictions" if form != "nested" else f"{inner.name}/predictions"
    assert backend.choices == {"output": SOFTMAX_NOTE.format(name)}
    assert inner.get_layer("predictions").activation is keras.activations.softmax


def two_heads():
    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    h = trunk(inp)
    return keras.Model(inp, [L.Dense(3, name="logits")(h), L.Dense(5, activation="softmax", name="predictions")(h)])


def test_select_picks_an_output_and_output_keeps_its_meaning():
    model = two_heads()
    x = images()
    probs = np.asarray(model(nhwc(x), training=False)[1])
    np.testing.assert_allclose(convscope.load(model, select="predictions").forward(x),
                               np.asarray(dense_scores(model, x)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(convscope.load(model, select=1, output="probabilities").forward(x), probs, rtol=1e-6)
    assert convscope.load(model, select=0).choices == {}
    with pytest.raises(TypeError, match=r"returns 2 outputs \(logits, predictions\); pass select="):
        convscope.load(model)


def test_output_as_an_index_or_name_is_the_deprecated_select(monkeypatch):
    monkeypatch.setattr(convscope._renamed, "_warned", set())  # the deprecation warns once per process
    model = two_heads()
    x = images()
    with pytest.warns(DeprecationWarning, match=r"output='logits'.*deprecated; pass select='logits'"):
        backend = KerasBackend(model, output="logits")
    assert (backend.output, backend.select) == ("scores", "logits")
    np.testing.assert_allclose(backend.forward(x), np.asarray(model(nhwc(x), training=False)[0]), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once
        assert KerasBackend(model, output=1).select == 1
    with pytest.raises(ValueError, match=r"The 'select' parameter of convscope.load must be a known output name\. "
                                         r"Got 'logit' instead; closest: logits"):
        KerasBackend(model, output="logit")
    with pytest.raises(ValueError, match=r"The 'output' parameter of convscope.load must be one of 'scores', "
                                         r"'probabilities'\. Got 'probability' instead; closest: probabilities\."):
        KerasBackend(fused(), output="probability")
    with pytest.raises(TypeError, match=r"The 'output' parameter of convscope.load must be one of 'scores', "
                                        r"'probabilities'\. Got 1.5 instead"):
        KerasBackend(model, output=1.5)
    with pytest.raises(TypeError, match=r"pass only select="):
        KerasBackend(model, output=0, select=1)
