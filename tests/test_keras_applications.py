"""Every keras.applications family (``weights=None``, small inputs) through the Keras backend.

For each architecture, built once: the layer records carry layouts and a data flow that
reaches the input; a receptive field follows from them for every spatial map (an
independent walk written here, with squeeze-excitation gates ignored, agreeing with
convscope's where convscope derives one); the scores are the final layer before its softmax
(computed from the layer's weights with ``keras.ops``); the input gradient agrees with a
``tf.GradientTape`` of that pre-softmax score; saliency and Grad-CAM run; the model is left
as it was. The larger members of a family (ResNet101/152, VGG19, DenseNet169/201,
EfficientNetB1-B7, EfficientNetV2S/M/L, NASNetLarge, ConvNeXtSmall and up) repeat the blocks
of the one tested."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import convscope  # noqa: E402
from keras_models import assert_unchanged, snapshot  # noqa: E402
from convscope.features.receptive_field import field_geometry  # noqa: E402

pytestmark = [pytest.mark.backend("tensorflow"), pytest.mark.slow]

# name, input size (the smallest each architecture takes, or 64)
ARCHITECTURES = [
    ("ResNet50", 64), ("ResNet50V2", 64), ("VGG16", 32), ("InceptionV3", 75), ("InceptionResNetV2", 75),
    ("Xception", 71), ("MobileNet", 64), ("MobileNetV2", 64), ("MobileNetV3Small", 64), ("MobileNetV3Large", 64),
    ("EfficientNetB0", 64), ("EfficientNetV2B0", 64), ("DenseNet121", 64), ("NASNetMobile", 64),
    ("ConvNeXtTiny", 32),
]
CLASSES = 7


def pre_softmax(model):
    """``f(t)`` -> the scores before the model's final softmax, from the user's layers and weights."""
    last = model.layers[-1]
    body = keras.Model(model.inputs[0], last.input)
    if isinstance(last, keras.layers.Activation):  # MobileNetV3: logits conv, flatten, Activation(softmax)
        assert last.activation is keras.activations.softmax
        return body
    assert isinstance(last, keras.layers.Dense) and last.activation is keras.activations.softmax
    return lambda t: keras.ops.matmul(body(t), last.kernel) + last.bias


def walk_fields(records):
    """{name: ((S, a, b) rows, (S, a, b) cols)} for every (C, H, W) record, "whole" for other
    shapes: kernel/stride/padding/dilation compose as S' = S s, a' = a - S p, b' = b + S (d (k-1) - p);
    pointwise layers take the union of their inputs; an input of shape (C, 1, 1) into a larger
    map is a gate and is left out. Raises AssertionError naming the layer where it cannot go on."""
    by_name = {r.name: r for r in records}
    fields = {"input": ((1, 0, 0), (1, 0, 0))}
    for i, r in enumerate(records):
        if r.kind == "block":
            child = next(c.name for c in reversed(records[:i]) if c.name.startswith(r.name + "/"))
            fields[r.name] = fields[child]
            continue
        assert r.inputs, f"{r.name} ({r.op}) reports no inputs"
        if r.shape is None or len(r.shape) != 3:
            fields[r.name] = "whole"
            continue
        assert r.layout == "chw", (r.name, r.layout)
        size = r.shape[1] * r.shape[2]

        def gate(p):
            s = by_name[p].shape if p in by_name else None
            return s is not None and len(s) == 3 and s[1:] == (1, 1) and size > 1
        parents = [fields[p] for p in r.inputs if not gate(p)] or [fields[p] for p in r.inputs]
        if any(f == "whole" for f in parents):
            fields[r.name] = "whole"  # (C, 1, 1) made from a vector: a squeeze-excitation branch
            continue
        assert len({(f[0][0], f[1][0]) for f in parents}) == 1, f"{r.name} ({r.op}) merges different strides"
        field = tuple((f[0][0][0] if axis == 0 else f[0][1][0],
                       min(p[axis][1] for p in parents), max(p[axis][2] for p in parents))
                      for axis, f in ((0, parents), (1, parents)))
        if r.kernel is not None:
            k, s, d, pad = r.kernel, r.stride, r.dilation, r.padding
            field = tuple((S * s[i], a - S * pad[i], b + S * (d[i] * (k[i] - 1) - pad[i]))
                          for i, (S, a, b) in enumerate(field))
        else:
            assert r.stride is None, f"{r.name} ({r.op}): an upsampling; not in keras.applications"
            main = by_name[next(p for p in r.inputs if not gate(p))] if r.inputs[0] != "input" else None
            if main is not None:
                assert main.shape[1:] == r.shape[1:], f"{r.name} ({r.op}) changes the grid without geometry"
        fields[r.name] = field
    return fields


@pytest.fixture(params=ARCHITECTURES, ids=[a for a, _ in ARCHITECTURES])
def application(request):
    name, size = request.param
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=CLASSES)
    yield name, size, model
    keras.backend.clear_session()


def test_keras_application(application):
    name, size, model = application
    before = snapshot(model)
    backend = convscope.load(model)
    records = backend.layers()
    assert len({r.name for r in records}) == len(records)

    # receptive fields: the independent walk reaches every spatial map; convscope agrees where it derives one
    fields = walk_fields(records)
    core = field_geometry(records)
    spatial = [r for r in records if r.shape is not None and len(r.shape) == 3 and r.shape[1] * r.shape[2] > 1]
    assert spatial and all(isinstance(fields[r.name], tuple) for r in spatial)
    for r in spatial:
        if isinstance(core.get(r.name), tuple):
            assert core[r.name] == fields[r.name], r.name
    assert fields[spatial[-1].name][0][0] > 1  # the last map is strided

    # the scores before the softmax and the gradient of one of them, against one eager tape; the
    # backend's gradient is asked with a callable seed, as saliency asks it, so both share one trace
    x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    t = tf.constant(x.transpose(0, 2, 3, 1))
    scores = pre_softmax(model)
    with tf.GradientTape() as tape:
        tape.watch(t)
        out = scores(t)
        target = int(np.argmax(out[0]))
        top = out[:, target]
    want, expect = np.asarray(out), np.asarray(tape.gradient(top, t)).transpose(0, 3, 1, 2)
    g = backend.gradient(x, lambda acts: {"output": np.eye(CLASSES, dtype=np.float32)[[target]]}, at=["output"])
    assert g.outputs.shape == (1, CLASSES)
    np.testing.assert_allclose(g.outputs, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert np.linalg.norm(g["input"] - expect) / np.linalg.norm(expect) < 1e-4
    assert "final layer" in backend.choices["output"]

    # the methods
    sal = convscope.saliency(model, x, target)
    assert np.linalg.norm(sal.attributions - np.abs(expect)) / np.linalg.norm(expect) < 1e-4
    cam = convscope.grad_cam(model, x, target)
    assert cam.maps.shape == (1, size, size) and np.isfinite(cam.maps).all()
    assert_unchanged(model, before)
