"""ONNX files whose input is channels-last (N, H, W, C), as tf2onnx and keras2onnx export Keras
models: the backend feeds them through a Transpose, takes (N, C, H, W) images like any model,
says so in ``choices``, and gives the numbers of the same network exported channels-first."""
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

import convscope  # noqa: E402
import onnx_models as om  # noqa: E402
from onnx_models import finite_difference_check  # noqa: E402


def _network(channels_last, batch="N", preprocess=False):
    """Conv, ReLU, a 3x3/2 max pool, conv, global pool, Gemm; the channels-last file starts
    with the Transpose a Keras export has (after a Rescaling-like scale and shift on the
    channels-last image, with ``preprocess``). The same weights either way (same seed)."""
    g = om.Graph(seed=3)
    x = "x"
    if preprocess:
        scale, shift = np.float32([[[[0.5, 1.0, 2.0]]]]), np.float32([[[[0.1, -0.2, 0.3]]]])
        x = g.op("Sub", [g.op("Mul", [x, g.const(scale if channels_last else scale.reshape(1, 3, 1, 1))]),
                         g.const(shift if channels_last else shift.reshape(1, 3, 1, 1))])
    x = g.op("Transpose", [x], perm=[0, 3, 1, 2]) if channels_last else x
    a = g.op("Relu", [g.conv(x, 3, 8)])
    p = g.op("MaxPool", [a], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    f = g.op("Flatten", [g.op("GlobalAveragePool", [g.op("Relu", [g.conv(p, 8, 8)])])])
    out = g.op("Gemm", [f, g.weight(5, 8), g.weight(5)], transB=1)
    shape = (om.H, om.W, 3) if channels_last else (3, om.H, om.W)
    return g.model(out, shape=shape, batch=batch, flatten=False)


@pytest.mark.parametrize("preprocess", [False, True], ids=["bare", "preprocessed"])
def test_a_channels_last_file_takes_nchw_images_and_gives_the_channels_first_numbers(preprocess):
    nhwc = convscope.load(_network(True, preprocess=preprocess))
    nchw = convscope.load(_network(False, preprocess=preprocess))
    x = np.random.default_rng(0).random((2, 3, om.H, om.W), dtype=np.float32)
    np.testing.assert_allclose(nhwc.forward(x), nchw.forward(x), rtol=1e-5, atol=1e-6)
    seeds = {"output": np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)}
    np.testing.assert_allclose(nhwc.gradient(x, seeds)["input"], nchw.gradient(x, seeds)["input"], rtol=1e-5,
                               atol=1e-6)
    assert nhwc.channels == 3 and nhwc.fixed_size == (om.H, om.W)
    assert "channels-last" in nhwc.choices["input"] and "input" not in nchw.choices
    assert convscope.attribution.saliency(nhwc, x, 0).info["choices"]["input"] == nhwc.choices["input"]
    geometry = [[(r.kind, r.shape, r.kernel, r.stride, r.padding) for r in b.layers() if r.kind != "other"]
                for b in (nhwc, nchw)]
    assert geometry[0] == geometry[1]
    last_conv = [r.name for b in (nhwc, nchw) for r in b.layers() if r.kind == "conv"][1::2]
    fields = [vars(convscope.features.receptive_field(b, name, 1, 1)) for b, name in zip((nhwc, nchw), last_conv)]
    assert {k: v for k, v in fields[0].items() if k != "layer"} == {k: v for k, v in fields[1].items() if k != "layer"}
    finite_difference_check(nhwc, x)


def test_a_channels_last_file_refuses_channels_last_arrays_with_a_clear_error():
    backend = convscope.load(_network(True, batch=2))
    with pytest.raises(ValueError, match=r"'x' parameter of forward must be an array with 3 channels on axis 1"):
        backend.forward(np.zeros((2, om.H, om.W, 3), np.float32))


def test_channels_first_files_are_left_as_they_are_whatever_their_sizes():
    """The sizes alone do not decide: an 8-channel map 2 x 3 reads like a 3-channel 8 x 2 image."""
    backend = convscope.load(_network(False))
    assert backend.graph.channels_last is None and backend.graph.image == "x"
    g = om.Graph()
    odd = convscope.load(g.model(g.op("Relu", [g.conv("x", 8, 8)]), shape=(8, 2, 3)))
    assert odd.graph.channels_last is None and odd.channels == 8 and "input" not in odd.choices
