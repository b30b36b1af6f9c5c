"""Keras layer records against hand-computed geometry and against the ops themselves.

Each geometry record is checked twice: against numbers worked out by hand in this file, and
by recomputing the layer's output with explicit ``tf.pad`` / crop and a 'valid' op, so that
the recorded split of 'same' padding is the one TensorFlow runs (the extra pixel at the end).
Also: layouts, the data flow (``inputs``) through merges, gates, nested models and shared
layers, and the kinds of keras.ops nodes."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import convscope  # noqa: E402

pytestmark = pytest.mark.backend("tensorflow")
L = keras.layers


def geometry_net():
    """Every layer that changes the grid, on odd and even sizes (9 x 8 input)."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((9, 8, 3), name="image")
    a = L.Conv2D(4, 3, strides=2, padding="same", name="same_s2")(inp)          # 9x8 -> 5x4
    b = L.Conv2D(4, 4, padding="same", name="same_k4")(inp)                     # 9x8 -> 9x8
    c = L.Conv2D(4, 3, dilation_rate=2, padding="same", name="same_d2")(b)      # 9x8
    d = L.DepthwiseConv2D(3, strides=2, padding="same", name="dw")(c)           # 5x4
    e = L.SeparableConv2D(4, 3, padding="same", dilation_rate=(1, 2), name="sep")(d)
    f = L.Add(name="add")([a, e])
    g = L.MaxPooling2D(3, strides=2, padding="same", name="maxpool")(f)         # 5x4 -> 3x2
    h = L.AveragePooling2D(2, strides=1, name="avgpool")(f)                     # 5x4 -> 4x3
    p = L.ZeroPadding2D(((1, 2), (3, 0)), name="pad")(h)                        # 7x6
    q = L.Cropping2D(((1, 0), (2, 1)), name="crop")(p)                          # 6x3
    u = L.UpSampling2D((2, 3), name="up")(g)                                    # 6x6
    t = L.Conv2DTranspose(4, 3, strides=2, padding="same", name="deconv_same")(g)   # 3x2 -> 6x4
    v = L.Conv2DTranspose(4, 3, strides=2, output_padding=1, name="deconv_op")(g)  # 3x2 -> 8x6
    gap = L.GlobalAveragePooling2D(keepdims=True, name="gap_keep")(q)
    gate = L.Conv2D(4, 1, activation="sigmoid", name="gate")(gap)
    se = L.Multiply(name="se")([q, gate])
    cat = L.Concatenate(name="cat")([u, L.Cropping2D(((0, 0), (0, 0)), name="crop0")(u)])
    heads = [L.GlobalMaxPooling2D(name=f"gmp{i}")(x) for i, x in enumerate((se, cat, t, v))]
    return keras.Model(inp, L.Dense(2, name="fc")(L.Concatenate(name="head")(heads)), name="geometry")


@pytest.fixture(scope="module")
def net():
    model = geometry_net()
    return model, {r.name: r for r in convscope.load(model).layers()}


# name: (kind, kernel, stride, padding (top, left, bottom, right), dilation), worked out by hand:
# 'same' pads max((ceil(n / s) - 1) s + (k - 1) d + 1 - n, 0) in all, floor of half at the start.
HAND = {
    "same_s2": ("conv", (3, 3), (2, 2), (1, 0, 1, 1), (1, 1)),       # rows: (5-1)2+3-9=2; cols: (4-1)2+3-8=1 -> 0|1
    "same_k4": ("conv", (4, 4), (1, 1), (1, 1, 2, 2), (1, 1)),       # total 3 -> 1 | 2
    "same_d2": ("conv", (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),       # total (3-1)2 = 4
    "dw": ("conv", (3, 3), (2, 2), (1, 0, 1, 1), (1, 1)),          # as same_s2, on 9x8
    "sep": ("conv", (3, 3), (1, 1), (1, 2, 1, 2), (1, 2)),            # 5x4, cols d=2: total 4
    "maxpool": ("pool", (3, 3), (2, 2), (1, 0, 1, 1), (1, 1)),       # rows (3-1)2+3-5=2; cols (2-1)2+3-4=1 -> 0|1
    "avgpool": ("pool", (2, 2), (1, 1), (0, 0, 0, 0), (1, 1)),
    "pad": ("pad", (1, 1), (1, 1), (1, 3, 2, 0), (1, 1)),
    "crop": ("crop", (1, 1), (1, 1), (-1, -2, 0, -1), (1, 1)),
    "deconv_same": ("deconv", (3, 3), (2, 2), (0, 0, 1, 1), (1, 1)),  # full (3-1)2+3=7 -> 6: crop 1 at the end
    "deconv_op": ("deconv", (3, 3), (2, 2), (0, 0, -1, -1), (1, 1)),  # full 7 -> 8: one row past the end
    "gap_keep": ("pool", (6, 3), (6, 3), (0, 0, 0, 0), (1, 1)),
}
SHAPES = {"same_s2": (4, 5, 4), "same_k4": (4, 9, 8), "dw": (4, 5, 4), "maxpool": (4, 3, 2), "avgpool": (4, 4, 3),
          "pad": (4, 7, 6), "crop": (4, 6, 3), "up": (4, 6, 6), "deconv_same": (4, 6, 4), "deconv_op": (4, 8, 6),
          "gap_keep": (4, 1, 1), "se": (4, 6, 3), "cat": (8, 6, 6), "gmp0": (4,), "fc": (2,)}


@pytest.mark.parametrize("name", sorted(HAND))
def test_geometry_matches_the_hand_computed_numbers(net, name):
    r = net[1][name]
    assert (r.kind, r.kernel, r.stride, r.padding, r.dilation) == HAND[name]


def test_shapes_layouts_and_upsampling(net):
    records = net[1]
    for name, shape in SHAPES.items():
        assert records[name].shape == shape, name
    up = records["up"]
    assert up.kind == "upsample" and up.stride == (2, 3) and up.kernel is None
    assert {records[n].layout for n in ("same_s2", "pad", "crop", "up", "gap_keep", "se")} == {"chw"}
    assert records["gmp0"].layout == "vector" and records["fc"].layout == "vector"
    assert records["add"].kind == records["se"].kind == records["cat"].kind == "merge"


def test_data_flow_through_merges_and_gates(net):
    records = net[1]
    assert records["add"].inputs == ("same_s2", "sep")
    assert records["se"].inputs == ("crop", "gate") and records["gate"].shape == (4, 1, 1)
    assert records["cat"].inputs == ("up", "crop0") and records["crop0"].padding == (0, 0, 0, 0)
    assert records["head"].inputs == ("gmp0", "gmp1", "gmp2", "gmp3")
    assert records["dw"].inputs == ("same_d2",) and records["same_k4"].inputs == ("input",)


def _pads(x, padding, value=0.0):
    """Pad (positive) or crop (negative) an NHWC tensor by (top, left, bottom, right)."""
    t, left, b, r = padding
    x = tf.pad(x, [[0, 0], [max(t, 0), max(b, 0)], [max(left, 0), max(r, 0)], [0, 0]], constant_values=value)
    h, w = x.shape[1], x.shape[2]
    return x[:, max(-t, 0):h - max(-b, 0), max(-left, 0):w - max(-r, 0), :]


def _reference(model, r, x):
    """The layer's output recomputed from its recorded geometry with 'VALID' ops."""
    layer = model.get_layer(r.name)
    if r.kind in ("pad", "crop"):
        return _pads(x, r.padding)
    if r.kind == "deconv":
        kernel, bias = layer.get_weights()
        n, h, w, _ = x.shape
        full = [(i - 1) * s + d * (k - 1) + 1 for i, s, d, k in zip((h, w), r.stride, r.dilation, r.kernel)]
        y = tf.nn.conv2d_transpose(x, kernel, (n, *full, kernel.shape[2]), r.stride, "VALID")
        return _pads(y, tuple(-p for p in r.padding)) + bias  # the recorded padding cut off the full output
    z = _pads(x, r.padding, -np.inf if "Max" in r.op else 0.0)  # TF's max pool never picks its padding
    if r.kind == "pool":
        return tf.nn.pool(z, r.kernel, "MAX" if "Max" in r.op else "AVG", strides=r.stride, padding="VALID")
    if r.op == "Conv2D":
        kernel, bias = layer.get_weights()
        return tf.nn.conv2d(z, kernel, r.stride, "VALID", dilations=r.dilation) + bias
    if r.op == "DepthwiseConv2D":
        kernel, bias = layer.get_weights()
        return tf.nn.depthwise_conv2d(z, kernel, (1, *r.stride, 1), "VALID", dilations=r.dilation) + bias
    depthwise, pointwise, bias = layer.get_weights()  # SeparableConv2D
    return tf.nn.separable_conv2d(z, depthwise, pointwise, (1, *r.stride, 1), "VALID", dilations=r.dilation) + bias


@pytest.mark.parametrize("name", sorted(set(HAND) - {"gap_keep"}))
def test_recorded_geometry_recomputes_the_layer(net, name):
    model, records = net
    r = records[name]
    x = np.random.default_rng(1).standard_normal((2, 9, 8, 3)).astype(np.float32)
    parent = r.inputs[0]
    probe = keras.Model(model.inputs[0], [model.get_layer(parent).output if parent != "input" else model.inputs[0],
                                       model.get_layer(name).output])
    a, want = probe(x)
    got = _reference(model, r, a)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_resizing_by_whole_factors_is_an_upsampling_and_permute_is_not_a_map():
    inp = keras.Input((4, 6, 2))
    up = L.Resizing(8, 18, interpolation="bilinear", name="resize")(inp)
    odd = L.Resizing(5, 6, name="resize_odd")(inp)
    moved = L.Permute((3, 1, 2), name="permute")(inp)
    flat = L.Reshape((24, 2), name="tokens")(inp)
    model = keras.Model(inp, [up, odd, moved, flat])
    records = {r.name: r for r in convscope.load(model, select=0).layers()}
    assert records["resize"].kind == "other" and records["resize"].stride == (2, 3)
    assert records["resize_odd"].stride is None and records["resize_odd"].kernel is None
    assert records["permute"].layout == "other" and records["tokens"].layout == "tokens"


def test_channels_first_layers_read_their_own_layout():
    inp = keras.Input((3, 9, 8))
    x = L.Conv2D(4, 3, strides=2, padding="same", data_format="channels_first", name="conv")(inp)
    x = L.ZeroPadding2D(((0, 1), (2, 0)), data_format="channels_first", name="pad")(x)
    x = L.GlobalAveragePooling2D(data_format="channels_first", name="gap")(x)
    records = {r.name: r for r in convscope.load(keras.Model(inp, x)).layers()}
    assert records["conv"].shape == (4, 5, 4) and records["conv"].padding == (1, 0, 1, 1)
    assert records["pad"].padding == (0, 2, 1, 0) and records["gap"].kernel == (6, 6)


def test_data_flow_through_nested_models_and_shared_layers():
    keras.utils.set_random_seed(0)
    inner_in = keras.Input((8, 8, 4))
    inner = keras.Model(inner_in, L.ReLU(name="r")(L.Conv2D(4, 3, padding="same", name="c")(inner_in)), name="base")
    inp = keras.Input((8, 8, 3))
    stem = L.Conv2D(4, 1, name="stem")(inp)
    shared = L.Conv2D(4, 3, padding="same", name="shared")
    y = inner(stem)
    z = shared(shared(y))  # the same layer twice: shared, then shared#2
    seq = keras.Sequential([L.Conv2D(4, 3, strides=2, name="s_conv"), L.ReLU(name="s_relu")], name="seq")
    out = L.Add(name="sum")([z, stem])
    model = keras.Model(inp, L.GlobalAveragePooling2D(name="gap")(seq(out)))
    records = {r.name: r for r in convscope.load(model).layers()}
    assert records["base/c"].inputs == ("stem",) and records["base/r"].inputs == ("base/c",)
    assert records["base"].kind == "block" and records["base"].inputs == ("stem",)
    assert records["shared"].inputs == ("base",) and records["shared#2"].inputs == ("shared",)
    assert records["sum"].inputs == ("shared#2", "stem")
    assert records["seq/s_conv"].inputs == ("sum",) and records["seq/s_conv"].stride == (2, 2)
    assert records["gap"].inputs == ("seq",) and records["seq"].shape == (4, 3, 3)


def test_keras_ops_nodes_have_kinds_and_flow():
    inp = keras.Input((6, 6, 3))
    c = L.Conv2D(3, 1, name="conv")(inp)
    hard = L.ReLU(6.0, name="relu6")(c + 3.0) * (1.0 / 6.0)  # MobileNetV3's hard sigmoid
    gated = keras.ops.multiply(c, keras.ops.sigmoid(c))
    records = convscope.load(keras.Model(inp, L.Add(name="sum")([hard, gated]))).layers()
    by_op = {}
    for r in records:
        by_op.setdefault(r.op, r)
    assert by_op["Add"].kind == "merge" and by_op["Add"].inputs == ("conv",) and by_op["Add"].layout == "chw"
    assert by_op["Multiply"].kind == "merge" and by_op["Sigmoid"].kind == "activation"
    assert by_op["ReLU6"].inputs == (by_op["Add"].name,)
