"""Incremental occlusion on ONNX Runtime (backends/onnxruntime/_incremental.py): the plan's
scores against the plain forward of the fully occluded images (ONNX Runtime running the
whole model), and against onnx.reference.ReferenceEvaluator in float64 on a small graph with
every cropped operator (ceil-mode pools, an AveragePool without its padding, a Pad, a 1x1
stride-2 conv, a dilated conv, BatchNormalization, HardSwish, Add of two branches, Concat)."""
import io

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import convscope
from convscope._incremental import NotIncremental, incremental_plan, window_patches
from onnx_models import Graph, relative

torch = pytest.importorskip("torch")
import zoo_models  # noqa: E402  (needs torch)

SIZE = 20


def occluded(image, filled, corners, window):
    """The occluded images written out: ``filled`` in each window, cut at the border."""
    out = np.repeat(image, len(corners), axis=0)
    for i, (top, left) in enumerate(corners):
        rows = slice(max(top, 0), max(top + window[0], 0))
        cols = slice(max(left, 0), max(left + window[1], 0))
        out[i, :, rows, cols] = filled[:, rows, cols]
    return out


def fills(image):
    """The fills occlusion offers, written out: a value, the mean, per channel, a blur."""
    c = image.shape[1]
    blurred = image[0].copy()
    for axis in (1, 2):  # a 3-tap box blur, edges repeated
        padded = np.pad(blurred, [(0, 0)] + [(1, 1) if a == axis else (0, 0) for a in (1, 2)], mode="edge")
        blurred = sum(np.take(padded, np.arange(k, k + image.shape[axis + 1]), axis=axis) for k in range(3)) / 3
    return {"value": np.full(image.shape[1:], 0.25, np.float32),
            "mean": np.broadcast_to(image[0].mean(axis=(1, 2), keepdims=True), image.shape[1:]).astype(np.float32),
            "per-channel": np.broadcast_to(np.linspace(-1, 1, c, dtype=np.float32)[:, None, None], image.shape[1:]),
            "blur": blurred.astype(np.float32)}


def border_corners(rng, n, size, window):
    """Corners anywhere, including windows cut at every border."""
    corners = rng.integers(-window[0] + 1, size, (n, 2))
    cut = [[-window[0] + 1, -window[1] + 1], [size - 1, size - 1], [0, size - window[1]], [size - window[0], 3]]
    corners[:4] = cut[:n]
    return corners


def check_plan(backend, image, window, n, *, seed=0, fill=None, tol=1e-5):
    rng = np.random.default_rng(seed)
    plan = incremental_plan(backend, image, window)
    corners = border_corners(rng, n, image.shape[2], window)
    filled = fills(image)["value"] if fill is None else fill
    patches, starts = window_patches(image[0], filled, corners, window)
    got = plan.scores(patches, starts)
    want = backend.forward(occluded(image, filled, corners, window))
    assert got.shape == want.shape and got.dtype == np.float32
    assert relative(got, want) < tol, relative(got, want)
    return plan, got


# ---------------------------------------------------------------- a small graph, every cropped op
def every_op_model():
    g = Graph(seed=3)
    a = g.op("Relu", [g.conv("x", c_in=3, c_out=4)])
    b = g.op("MaxPool", [a], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    d0 = g.op("AveragePool", [a], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1,
              count_include_pad=1)
    e0 = g.op("Add", [b, d0])  # 11 x 11, both with an overhanging last window
    c = g.op("Conv", [e0, g.weight(4, 4, 1, 1), g.weight(4)], strides=[2, 2])  # kernel below the stride
    d = g.op("AveragePool", [e0], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1)
    scale, shift = (g.rng.random(4) + 0.5).astype(np.float32), g.rng.standard_normal(4).astype(np.float32)
    mean, var = g.rng.standard_normal(4).astype(np.float32) * 0.1, (g.rng.random(4) + 0.5).astype(np.float32)
    bn = [g.const(scale), g.const(shift), g.const(mean), g.const(var)]
    e = g.op("HardSwish", [g.op("BatchNormalization", [g.op("Add", [c, d]), *bn])])
    f = g.op("Pad", [e, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))])  # 8 x 8
    dilated = g.conv(f, kernel_shape=[3, 3], pads=[0, 0, 0, 0], dilations=[2, 2])  # 4 x 4
    wide = g.conv(f, kernel_shape=[5, 5], pads=[0, 0, 0, 0])
    h = g.op("Relu", [g.op("Concat", [dilated, wide], axis=1)])
    pooled = g.op("GlobalAveragePool", [g.op("Mul", [h, g.const(np.float32([[[2.0]]]))])])
    return g.model(pooled, shape=(3, SIZE, SIZE))


def float64(model):
    """The same model computing in float64, for the reference evaluator."""
    m = type(model)()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for v in [*m.graph.input, *m.graph.output]:
        v.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m


def test_every_cropped_operator_against_the_float64_reference():
    from onnx.reference import ReferenceEvaluator

    model = every_op_model()
    backend = convscope.load(model)
    image = np.random.default_rng(1).random((1, 3, SIZE, SIZE), dtype=np.float32)
    window = (5, 5)
    plan, got = check_plan(backend, image, window, 9)
    assert plan.info["approximate"] is None and 0 < plan.info["conv_work"] < 1 and plan.info["cropped_nodes"] >= 10
    rng = np.random.default_rng(0)
    corners = border_corners(rng, 9, SIZE, window)
    x = occluded(image, fills(image)["value"], corners, window).astype(np.float64)
    want = ReferenceEvaluator(float64(model)).run(None, {"x": x})[0]
    assert relative(got, want) < 1e-5


@pytest.mark.parametrize("window", [(3, 3), (4, 7), (SIZE, 2)])
def test_every_cropped_operator_window_shapes_and_batches(window):
    backend = convscope.load(every_op_model())
    image = np.random.default_rng(2).random((1, 3, SIZE, SIZE), dtype=np.float32)
    for n in (1, 4):
        check_plan(backend, image, window, n, seed=n)


def upsampling_model(factor, **resize):
    g = Graph(seed=5)
    a = g.op("Relu", [g.conv("x", c_in=3, c_out=4)])
    up = g.op("Resize", [a, "", g.const(np.float32([1, 1, factor, factor]))], **resize)
    pooled = g.op("GlobalAveragePool", [g.conv(g.op("MaxPool", [up], kernel_shape=[2, 2], strides=[2, 2]))])
    return g.model(pooled, shape=(3, 12, 12))


@pytest.mark.parametrize("factor, resize, cropped", [
    (2, dict(mode="nearest"), True),  # ONNX's defaults: half_pixel, round_prefer_floor
    (3, dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor"), True),  # torch's
    (2, dict(mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="round_prefer_floor"), False),
    (2, dict(mode="linear"), False)])
def test_nearest_upsampling_is_cropped_and_other_resizes_run_on_whole_maps(factor, resize, cropped):
    backend = convscope.load(upsampling_model(factor, **resize))
    image = np.random.default_rng(3).random((1, 3, 12, 12), dtype=np.float32)
    plan, _ = check_plan(backend, image, (3, 3), 6)
    assert plan.info["full_maps_from"].startswith("Resize") != cropped, plan.info


# ---------------------------------------------------------------- exported architectures
@pytest.fixture(scope="module")
def exported():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = zoo_models.export(zoo_models.build(name))
        return cache[name]
    return get


@pytest.mark.parametrize("name", ["resnet", "mobilenet_v3", "inception"])
def test_exported_architectures_equal_the_plain_forward(exported, name):
    backend = convscope.load(exported(name))
    image = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    for fill_name, fill in fills(image).items():
        plan, _ = check_plan(backend, image, (6, 6), 5, fill=fill, seed=len(fill_name))
    assert plan.info["full_maps_from"]  # every classifier ends on whole maps


@pytest.mark.parametrize("name", ["densenet", "efficientnet", "shufflenet_v2", "regnet"])
def test_more_exported_architectures(exported, name):
    backend = convscope.load(exported(name))
    image = np.random.default_rng(4).random((1, 3, 32, 32), dtype=np.float32)
    for n in (1, 6):
        check_plan(backend, image, (8, 8), n, seed=n)


def test_resnet_work_is_a_fraction_and_grows_with_the_window(exported):
    backend = convscope.load(exported("resnet"))
    image = np.zeros((1, 3, 32, 32), np.float32)
    small, large, huge = (incremental_plan(backend, image, w).info["conv_work"] for w in ((4, 4), (12, 12), (20, 20)))
    assert 0 < small < large < huge < 1  # a window near the image's size saves little, yet is not refused


@pytest.mark.parametrize("name", ["vit", "convnext"])
def test_attention_and_early_transposes_have_no_incremental_path(exported, name):
    backend = convscope.load(exported(name))
    with pytest.raises(NotIncremental, match="ONNX model"):
        incremental_plan(backend, np.zeros((1, 3, 32, 32), np.float32), (6, 6))


def test_a_file_that_fixes_batch_one(exported):
    buffer = io.BytesIO()
    torch.onnx.export(zoo_models.build("resnet"), torch.zeros(1, 3, 32, 32), buffer, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"])
    backend = convscope.load(buffer.getvalue())
    assert backend.graph.fixed_batch == 1
    image = np.random.default_rng(5).random((1, 3, 32, 32), dtype=np.float32)
    check_plan(backend, image, (5, 5), 3)


def test_probabilities_are_cut_as_the_forward_cuts_them():
    g = Graph(seed=1)
    scores = g.op("Flatten", [g.op("GlobalAveragePool", [g.op("Relu", [g.conv("x", c_in=3, c_out=5)])])])
    g.op("Softmax", [scores], ["y"], axis=1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    model = helper.make_model(helper.make_graph(g.nodes, "t", [x], [y], g.inits),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    image = np.random.default_rng(6).random((1, 3, 12, 12), dtype=np.float32)
    for output in ("scores", "probabilities"):
        backend = convscope.load(model, output=output)
        _, got = check_plan(backend, image, (3, 3), 4)
        assert np.allclose(got.sum(axis=1), 1, atol=1e-5) == (output == "probabilities")


def test_the_selected_output_and_a_custom_operator():
    from onnx_models import custom_op_model, two_output_model

    image = np.random.default_rng(13).random((1, 4, 6, 6), dtype=np.float32)
    for select in ("a", "b"):
        check_plan(convscope.load(two_output_model(), select=select), image, (2, 2), 5)
    plan, _ = check_plan(convscope.load(custom_op_model()), image, (2, 2), 5)  # whole maps from the contrib op
    assert "Gelu" in plan.info["full_maps_from"]


# ---------------------------------------------------------------- sessions, approximations, bad input
def test_one_graph_per_window_size_and_batch_size():
    backend = convscope.load(every_op_model())
    rng = np.random.default_rng(7)
    first = rng.random((1, 3, SIZE, SIZE), dtype=np.float32)
    check_plan(backend, first, (4, 4), 3)
    built = len(backend._sessions)
    check_plan(backend, rng.random((1, 3, SIZE, SIZE), dtype=np.float32), (4, 4), 3, seed=1)  # another image
    assert len(backend._sessions) == built + 0
    check_plan(backend, first, (4, 4), 5)  # another batch size: one more graph session
    assert len(backend._sessions) == built + 1
    check_plan(backend, first, (6, 6), 5)  # another window: one more, and one forward for its originals
    assert len(backend._sessions) in (built + 2, built + 3)


def test_bound_to_a_device_the_originals_stay_there_and_the_scores_agree():
    backend = convscope.load(every_op_model())
    image = np.random.default_rng(11).random((1, 3, SIZE, SIZE), dtype=np.float32)
    _, plain = check_plan(backend, image, (5, 5), 4)
    backend._sessions.device = ("cpu", 0)  # the GPU path's I/O binding, bound to the CPU (no GPU here)
    plan, bound = check_plan(backend, image, (5, 5), 4)
    assert all(not isinstance(v, np.ndarray) for v in plan._feeds.values())  # OrtValues, made once per image
    np.testing.assert_array_equal(bound, plain)


def test_threshold_one_is_exact_and_small_thresholds_do_less_work():
    backend = convscope.load(every_op_model())
    image = np.random.default_rng(8).random((1, 3, SIZE, SIZE), dtype=np.float32)
    exact = incremental_plan(backend, image, (6, 6))
    loose = incremental_plan(backend, image, (6, 6), 1.0)
    tight = incremental_plan(backend, image, (6, 6), 0.3)
    assert tight.info["approximate"] == 0.3 and exact.info["approximate"] is None
    assert tight.info["conv_work"] < exact.info["conv_work"]
    patches, starts = window_patches(image[0], fills(image)["value"], border_corners(np.random.default_rng(0), 6, SIZE,
                                                                                       (6, 6)), (6, 6))
    assert relative(loose.scores(patches, starts), exact.scores(patches, starts)) < 1e-6
    assert np.isfinite(tight.scores(patches, starts)).all()


def test_approximate_drops_equal_the_torch_backends_on_the_same_model(exported):
    """Krypton's thresholding through two independent crop machineries (torch's fx graph and the
    ONNX crop-wise graph) on one model: the same approximate drops, far from the exact ones."""
    model = zoo_models.build("resnet")
    on_torch, on_onnx = convscope.load(model), convscope.load(exported("resnet"))
    x = np.random.default_rng(12).random((1, 3, 32, 32), dtype=np.float32)
    patches, starts = window_patches(x[0], np.full_like(x[0], 0.3), border_corners(np.random.default_rng(1), 9, 32,
                                                                                      (8, 8)), (8, 8))
    base = on_onnx.forward(x)
    drops = {(name, t): base - incremental_plan(b, x, (8, 8), t).scores(patches, starts)
             for name, b in (("torch", on_torch), ("onnx", on_onnx)) for t in (None, 0.3)}
    scale = np.abs(drops["onnx", None]).max()
    assert np.abs(drops["onnx", 0.3] - drops["onnx", None]).max() > 0.05 * scale
    assert np.abs(drops["onnx", 0.3] - drops["torch", 0.3]).max() < 1e-4 * scale


def test_bad_patches_corners_and_thresholds_raise_clearly():
    backend = convscope.load(every_op_model())
    image = np.zeros((1, 3, SIZE, SIZE), np.float32)
    plan = incremental_plan(backend, image, (4, 4))
    patches = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="'patches'.*\\(B, 3, 4, 4\\)"):
        plan.scores(np.zeros((2, 3, 5, 4), np.float32), np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="'corners'.*\\(2, 2\\) ints"):
        plan.scores(patches, np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="'corners'.*\\[0, 16\\]"):
        plan.scores(patches, np.array([[0, 0], [17, 0]]))
    for bad in (0, 1.5, "half", True):
        with pytest.raises(ValueError, match="'threshold'"):
            incremental_plan(backend, image, (4, 4), bad)


# ---------------------------------------------------------------- through occlusion(...)
@pytest.mark.parametrize("fill", ["mean", "zero", "blur", 0.3, (0.1, 0.5, 0.9)])
def test_occlusion_is_incremental_on_onnx_and_equals_the_plain_path(exported, fill):
    backend = convscope.load(exported("resnet"))
    x = np.random.default_rng(9).random((2, 3, 32, 32), dtype=np.float32)
    for output in ("score", "probability"):
        plain = convscope.occlusion(backend, x, window=6, stride=5, fill=fill, output=output, incremental=False)
        fast = convscope.occlusion(backend, x, window=6, stride=5, fill=fill, output=output, incremental=True,
                                   perturbations_per_eval=7)
        assert fast.info["incremental"] is True and fast.info["plan"]["backend"] == "onnxruntime"
        # a drop is a difference of nearly equal scores: probabilities near 0.1 rounded in float32
        # (6e-9) are 1e-5 of drops near 1e-3, so the probability maps get a looser bound
        assert relative(fast.maps, plain.maps) < (1e-5 if output == "score" else 5e-5)
        assert relative(fast.outputs, plain.outputs) == 0


def test_occlusion_falls_back_on_attention_saying_why(exported):
    backend = convscope.load(exported("vit"))
    x = np.random.default_rng(10).random((1, 3, 32, 32), dtype=np.float32)
    maps = convscope.occlusion(backend, x, window=8, stride=8)
    assert maps.info["incremental"] is False and "plain occlusion" in maps.info["incremental_why"]
    assert "ONNX model" in maps.info["incremental_why"]
    with pytest.raises(ValueError, match="'incremental'"):
        convscope.occlusion(backend, x, window=8, stride=8, incremental=True)
