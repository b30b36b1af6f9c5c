"""LRP on the ONNX Runtime backend: rules of the adjoint graph (DeepLift: test_deeplift_onnx.py).

References, none computed by the code under test:

* a written-out NumPy (float64) LRP of a small hand-built net (conv-BN-ReLU-maxpool-conv-ReLU-
  avgpool-flatten-linear): every layer as an explicit matrix, every rule as its formula in
  Montavon et al. (2019) / Zennit, the BatchNorm merged by hand;
* LRP-0 on a bias-free ReLU net equals gradient x input (the backend's own standard gradient,
  and torch autograd on the torch net it was exported from);
* conservation: with zero bias, z-plus and LRP-0 give input relevance summing to the score;
* the torch backend's relevance on the same nets (tests/lrp_nets.py) within 1e-4.
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import convscope  # noqa: E402
from convscope._relevance import Rule, RelevanceRules  # noqa: E402

from onnx_models import Graph, relative  # noqa: E402

C_IN, SIZE = 3, 8
TOL = 1e-4


# ----------------------------------------------------------------------------- the small net
def small_net(seed=0, bn=True):
    """x (N, 3, 8, 8) -> Conv(4) -> [BN] -> Relu -> MaxPool 2 -> Conv(5) -> Relu -> AvgPool 2 -> Flatten
    -> Gemm(3). Returns (model, params) with the weights as float64 arrays."""
    g = Graph(seed)
    rng = np.random.default_rng(seed + 7)
    p = {"w1": rng.standard_normal((4, C_IN, 3, 3)) * 0.5, "b1": rng.standard_normal(4) * 0.2,
         "w2": rng.standard_normal((5, 4, 3, 3)) * 0.4, "b2": rng.standard_normal(5) * 0.2,
         "w3": rng.standard_normal((3, 20)) * 0.5, "b3": rng.standard_normal(3) * 0.2,
         "gamma": rng.random(4) + 0.5, "beta": rng.standard_normal(4) * 0.1, "mean": rng.standard_normal(4) * 0.1,
         "var": rng.random(4) + 0.5}
    p = {k: v.astype(np.float32).astype(np.float64) for k, v in p.items()}
    f = lambda k: g.const(p[k].astype(np.float32))  # noqa: E731
    t = g.op("Conv", ["x", f("w1"), f("b1")], ["conv1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    if bn:
        t = g.op("BatchNormalization", [t, f("gamma"), f("beta"), f("mean"), f("var")], ["bn1"], epsilon=1e-5)
    t = g.op("Relu", [t], ["relu1"])
    t = g.op("MaxPool", [t], ["pool1"], kernel_shape=[2, 2], strides=[2, 2])
    t = g.op("Conv", [t, f("w2"), f("b2")], ["conv2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    t = g.op("Relu", [t], ["relu2"])
    t = g.op("AveragePool", [t], ["pool2"], kernel_shape=[2, 2], strides=[2, 2])
    t = g.op("Flatten", [t], ["flat"])
    t = g.op("Gemm", [t, f("w3"), f("b3")], ["fc"], transB=1)
    return g.model(t, shape=(C_IN, SIZE, SIZE), flatten=False), p


def _conv(x, w, pad=1):
    """A 2-d convolution of one image (C, H, W), stride 1, written out (float64)."""
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    o, _, kh, kw = w.shape
    h, wd = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    out = np.zeros((o, h, wd))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("oc,chw->ohw", w[:, :, i, j], xp[:, i:i + h, j:j + wd])
    return out


def _matrix(fn, shape):
    """The matrix of a linear map on arrays of ``shape`` (its columns: the images of unit vectors)."""
    n = int(np.prod(shape))
    return np.stack([fn(np.eye(n)[k].reshape(shape)).reshape(-1) for k in range(n)], axis=1)


def _stab(z, e):
    return z + e * np.where(z >= 0, 1.0, -1.0)


def _ratio(r, z, e):
    return np.where(z == 0, 0.0, r / np.where(z == 0, 1.0, _stab(z, e)))


def dense_rule(rule, a, w, b, r, ones=None):
    """R_in of one dense layer z = w a + b for relevance ``r`` at z (the formulas of Montavon et al. 2019,
    named and defined as in Zennit: stabilizer with the divisor's sign, sign(0) = +1). ``ones``: the
    layer's connections, the matrix of its map with every weight 1 (default: all ones, a linear layer)."""
    b = np.zeros_like(b) if rule.zero_bias else b
    wp, wn, ap, an = np.maximum(w, 0), np.minimum(w, 0), np.maximum(a, 0), np.minimum(a, 0)
    st = rule.stabilizer
    if rule.name in ("epsilon", "zero"):
        return a * (w.T @ _ratio(r, w @ a + b, 0.0 if rule.name == "zero" else rule.epsilon))
    if rule.name == "gamma":
        wg, bg = w + rule.gamma * wp, b + rule.gamma * np.maximum(b, 0)
        return a * (wg.T @ _ratio(r, wg @ a + bg, st))
    if rule.name in ("zplus", "alphabeta"):
        alpha, beta = (1.0, 0.0) if rule.name == "zplus" else (rule.alpha, rule.beta)
        sp = _ratio(r, wp @ ap + wn @ an + np.maximum(b, 0), st)
        sn = _ratio(r, wn @ ap + wp @ an + np.minimum(b, 0), st)
        return alpha * (ap * (wp.T @ sp) + an * (wn.T @ sp)) - beta * (ap * (wn.T @ sn) + an * (wp.T @ sn))
    if rule.name == "wsquare":
        return (w * w).T @ _ratio(r, (w * w) @ np.ones_like(a), st)
    if rule.name == "flat":
        ones = np.ones_like(w) if ones is None else ones
        return ones.T @ _ratio(r, ones @ np.ones_like(a), st)
    if rule.name == "zbox":
        lo, hi = np.full_like(a, rule.low), np.full_like(a, rule.high)
        s = _ratio(r, w @ a - wp @ lo - wn @ hi, st)
        return a * (w.T @ s) - lo * (wp.T @ s) - hi * (wn.T @ s)
    raise AssertionError(rule.name)


def reference_lrp(p, x, seed, rules, bn=True):
    """Relevance at the input of the small net for one image ``x`` (3, 8, 8), written out layer by layer."""
    w1 = _matrix(lambda v: _conv(v, p["w1"]), (C_IN, SIZE, SIZE))
    b1 = np.repeat(p["b1"], SIZE * SIZE)
    if bn and rules.canonize:  # merged as Zennit's MergeBatchNorm
        scale = p["gamma"] / np.sqrt(p["var"] + 1e-5)
        w1, b1 = np.repeat(scale, SIZE * SIZE)[:, None] * w1, np.repeat((p["b1"] - p["mean"]) * scale + p["beta"],
                                                                          SIZE * SIZE)
    a0 = x.reshape(-1).astype(np.float64)
    z1 = w1 @ a0 + b1
    y1, scale = z1, None
    if bn and not rules.canonize:  # BatchNorm on its own: the epsilon rule of its affine map
        scale = np.repeat(p["gamma"] / np.sqrt(p["var"] + 1e-5), SIZE * SIZE)
        y1 = scale * (z1 - np.repeat(p["mean"], SIZE * SIZE)) + np.repeat(p["beta"], SIZE * SIZE)
    a1 = np.maximum(y1, 0).reshape(4, SIZE, SIZE)
    # max pool 2x2: the winner of each window (first maximum), as a selection matrix
    blocks = a1.reshape(4, 4, 2, 4, 2).transpose(0, 1, 3, 2, 4).reshape(4, 4, 4, 4)
    win = blocks.argmax(-1)
    m = np.zeros((64, 256))
    for c, i, j in np.ndindex(4, 4, 4):
        di, dj = divmod(win[c, i, j], 2)
        m[c * 16 + i * 4 + j, c * 64 + (2 * i + di) * 8 + 2 * j + dj] = 1.0
    a2 = m @ a1.reshape(-1)
    w2 = _matrix(lambda v: _conv(v, p["w2"]), (4, 4, 4))
    b2 = np.repeat(p["b2"], 16)
    a3 = np.maximum(w2 @ a2 + b2, 0)
    pool = _matrix(lambda v: v.reshape(5, 2, 2, 2, 2).mean(axis=(2, 4)), (5, 4, 4))
    a4 = pool @ a3
    r = dense_rule(rules.rule_for("fc"), a4, p["w3"], p["b3"], seed)
    r = a3 * (pool.T @ _ratio(r, pool @ a3, rules.sum_stabilizer))  # Zennit's Norm
    r = dense_rule(rules.rule_for("conv2"), a2, w2, b2, r,
                   _matrix(lambda v: _conv(v, np.ones_like(p["w2"])), (4, 4, 4)))
    r = m.T @ r  # winner takes all; ReLU passes
    if scale is not None:
        r = z1 * scale * _ratio(r, y1, rules.sum_stabilizer)
    ones = _matrix(lambda v: _conv(v, np.ones_like(p["w1"])), (C_IN, SIZE, SIZE))
    return dense_rule(rules.rule_for("conv1"), a0, w1, b1, r, ones).reshape(x.shape)


ALL_RULES = {
    "epsilon": Rule("epsilon", epsilon=0.05), "zero": Rule("zero"), "gamma": Rule("gamma", gamma=0.5),
    "zplus": Rule("zplus"), "alpha2beta1": Rule("alphabeta", alpha=2.0, beta=1.0), "wsquare": Rule("wsquare"),
    "flat": Rule("flat"), "zbox": Rule("zbox", low=-1.0, high=1.0),
    "epsilon_zero_bias": Rule("epsilon", zero_bias=True),
}


def _images(n=2, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, C_IN, SIZE, SIZE)).astype(np.float32)


def _onnx_lrp(backend, x, rules, wrt=("input",)):
    scores = backend.forward(x)
    seed = np.zeros_like(scores)
    top = scores.argmax(1)
    seed[np.arange(len(x)), top] = scores[np.arange(len(x)), top]
    return seed, backend.gradient(x, {"output": seed}, wrt=list(wrt), rule=rules)


@pytest.mark.parametrize("name", sorted(ALL_RULES))
def test_every_rule_matches_the_written_out_reference(name):
    model, p = small_net()
    backend = convscope.load(model)
    x = _images()
    rules = RelevanceRules(default=ALL_RULES[name])
    seed, got = _onnx_lrp(backend, x, rules)
    for i in range(len(x)):
        want = reference_lrp(p, x[i], seed[i], rules)
        assert relative(got.grads["input"][i], want) < TOL, name


def test_a_composite_gives_each_layer_its_rule_and_bn_stays_unmerged_without_canonize():
    model, p = small_net()
    backend = convscope.load(model)
    x = _images(seed=3)
    rules = RelevanceRules(layers=(("conv1", Rule("zbox", low=-1.0, high=1.0)), ("conv2", Rule("gamma")),
                                   ("fc", Rule("epsilon", epsilon=0.01))), default=None)
    seed, got = _onnx_lrp(backend, x, rules)
    for i in range(len(x)):
        assert relative(got.grads["input"][i], reference_lrp(p, x[i], seed[i], rules)) < TOL
    # without canonize the BatchNorm keeps its own epsilon rule; a net without BatchNorm has none
    loose = RelevanceRules(layers=rules.layers, canonize=False)
    seed, got = _onnx_lrp(backend, x, loose)
    assert relative(got.grads["input"][1], reference_lrp(p, x[1], seed[1], loose)) < TOL
    assert relative(got.grads["input"][1], reference_lrp(p, x[1], seed[1], rules)) > 1e-3
    model_plain, p_plain = small_net(bn=False)
    seed, plain = _onnx_lrp(convscope.load(model_plain), x, rules)
    assert relative(plain.grads["input"][0], reference_lrp(p_plain, x[0], seed[0], rules, bn=False)) < TOL


def test_a_layer_without_a_rule_is_named():
    backend = convscope.load(small_net()[0])
    rules = RelevanceRules(layers=(("conv1", Rule("zplus")),), default=None)
    with pytest.raises(ValueError, match="'conv2'"):
        _onnx_lrp(backend, _images(), rules)


def test_an_operator_without_a_rule_is_named():
    """A product of two data-path tensors (a gate) has no LRP rule: the error names the node and op."""
    g = Graph(0)
    a = g.conv("x", 3, 4)
    gated = g.op("Mul", [a, g.op("Sigmoid", [g.conv("x", 3, 4)])], ["gated"])
    backend = convscope.load(g.model(g.op("GlobalAveragePool", [gated], ["gap"]), shape=(3, 8, 8)))
    with pytest.raises(ValueError, match=r"'gated'.*Mul") as err:
        _onnx_lrp(backend, _images(), RelevanceRules(default=Rule("epsilon")))
    assert "product" in str(err.value)
    # and the same model still has its plain gradient
    assert np.isfinite(backend.gradient(_images(), {"output": np.ones((2, 4), np.float32)}).grads["input"]).all()


# ----------------------------------------------------------------------------- identities
def test_conservation_with_zero_bias_on_the_demo_model():
    """Bias-free z-plus and LRP-0 conserve relevance through conv, merged BN, max pool, GAP, linear."""
    from convscope.data import demo_path, shapes

    backend = convscope.load(demo_path("onnx"))
    x = np.asarray(shapes(3, seed=1).images, np.float32)
    for rule, tol in ((Rule("zplus", zero_bias=True), 1e-5), (Rule("zero", zero_bias=True), 1e-3)):
        seed, got = _onnx_lrp(backend, x, RelevanceRules(default=rule, sum_stabilizer=0.0), wrt=("input", "conv2"))
        for name in ("input", "conv2"):
            total = got.grads[name].reshape(len(x), -1).sum(1)
            np.testing.assert_allclose(total, seed.sum(1), rtol=tol, err_msg=f"{rule.name} at {name}")


def _bias_free_torch_net():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4, bias=False)).eval()
    return torch, net


def _export(torch, net, size=16):
    import io
    import warnings

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, size, size),), buffer, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          opset_version=17, dynamo=False)
    return buffer.getvalue()


def test_lrp0_is_gradient_times_input_on_a_bias_free_relu_net():
    torch, net = _bias_free_torch_net()
    backend = convscope.load(_export(torch, net))
    x = np.random.default_rng(2).random((2, 3, 16, 16), dtype=np.float32)
    seed, got = _onnx_lrp(backend, x, RelevanceRules(default=Rule("zero"), sum_stabilizer=0.0))
    one_hot = (seed != 0).astype(np.float32)  # LRP seeds the score, the gradient its derivative
    plain = backend.gradient(x, {"output": one_hot}).grads["input"]
    xt = torch.tensor(x, requires_grad=True)
    net(xt).backward(torch.tensor(one_hot))
    autograd = (xt.grad * xt).detach().numpy()
    assert relative(got.grads["input"], plain * x) < TOL
    assert relative(got.grads["input"], autograd) < TOL


def test_rule_sets_leave_the_standard_gradient_alone():
    """Each rule set builds its own graph (cache keys): the standard gradient is the same before and after."""
    model, _ = small_net()
    backend = convscope.load(model)
    x = _images()
    seeds = {"output": np.eye(3, dtype=np.float32)[[0, 2]]}
    before = backend.gradient(x, seeds).grads["input"]
    first = backend.gradient(x, seeds, rule=RelevanceRules(default=Rule("zplus"))).grads["input"]
    second = backend.gradient(x, seeds, rule=RelevanceRules(default=Rule("epsilon", epsilon=0.1))).grads["input"]
    again = backend.gradient(x, seeds, rule=RelevanceRules(default=Rule("zplus"))).grads["input"]
    after = backend.gradient(x, seeds).grads["input"]
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(first, again)
    assert relative(first, second) > 1e-3 and relative(first, before) > 1e-3


# ----------------------------------------------------------------------------- the torch backend
COMPOSITES_AND_RULES = ["EpsilonPlus", "EpsilonGammaBox", "EpsilonPlusFlat", "EpsilonAlpha2Beta1",
                        "EpsilonAlpha2Beta1Flat", "epsilon", "zero", "gamma", "zplus", "alphabeta", "wsquare", "flat",
                        "zbox"]
_PAIRS = {}


def _torch_and_onnx(name):
    """(torch backend, ONNX backend) of one net of tests/lrp_nets.py, the ONNX file exported from it."""
    if name not in _PAIRS:
        torch = pytest.importorskip("torch")
        if name == "demo":
            from convscope.data import demo_model, demo_path

            _PAIRS[name] = convscope.load(demo_model("torch")), convscope.load(demo_path("onnx"))
        else:
            from lrp_nets import build

            net = build(name)
            _PAIRS[name] = convscope.load(net), convscope.load(_export(torch, net, size=32))
    return _PAIRS[name]


@pytest.mark.parametrize("net", [pytest.param("demo", marks=pytest.mark.slow), "vgg", "resnet", "densenet"])
def test_every_rule_and_composite_equals_the_torch_backend(net):
    """Within 1e-4 of torch's relevance. On the residual and dense nets the stabilizers are 1e-2: at 1e-6
    a sum or BatchNorm output near 0 divides float32 rounding differences of the two forwards (up to
    2e-3 measured there with the same definitions; 6e-6 at 1e-2)."""
    from convscope.attribution import lrp

    from lrp_nets import images

    torch_backend, onnx_backend = _torch_and_onnx(net)
    size = 64 if net == "demo" else 32
    x = np.asarray(convscope.data.shapes(2, seed=5).images, np.float32) if net == "demo" else images(2, size)
    stab = 1e-6 if net in ("demo", "vgg") else 1e-2
    for composite in COMPOSITES_AND_RULES:
        want = lrp(torch_backend, x, composite=composite, epsilon=0.01, stabilizer=stab, sum_stabilizer=stab)
        got = lrp(onnx_backend, x, composite=composite, epsilon=0.01, stabilizer=stab, sum_stabilizer=stab)
        assert relative(got.attributions, want.attributions) < TOL, composite
        assert got.info["rules"] == dict(zip(got.info["rules"], want.info["rules"].values())), composite


@pytest.mark.parametrize("name", ["epsilon", "gamma", "alpha2beta1", "wsquare", "zbox"])
def test_conv_transpose_and_a_matmul_with_its_bias_add_match_the_written_out_reference(name):
    """ConvTranspose (stride 2, output_padding 1) and a Linear written as MatMul + Add (as exporters
    write it): the ConvTranspose's matrix is read off ONNX Runtime's plain forward of that node alone on
    unit vectors, the rules are written out; the Add's bias belongs to the MatMul's layer."""
    import onnxruntime as ort

    rng = np.random.default_rng(11)
    w1, b1 = rng.standard_normal((2, 3, 3, 3)).astype(np.float32) * 0.5, rng.standard_normal(3).astype(np.float32)
    w2, b2 = rng.standard_normal((3 * 10 * 10, 4)).astype(np.float32) * 0.1, rng.standard_normal(4).astype(np.float32)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
    g = Graph(0)
    t = g.op("ConvTranspose", ["x", g.const(w1), g.const(b1)], ["up"], **attrs)
    t = g.op("Flatten", [g.op("Relu", [t], ["relu"])], ["flat"])
    t = g.op("Add", [g.op("MatMul", [t, g.const(w2)], ["fc"]), g.const(b2)], ["fc_bias"])
    backend = convscope.load(g.model(t, shape=(2, 5, 5), flatten=False))
    single = Graph(0)
    single.op("ConvTranspose", ["x", single.const(w1)], ["up"], **attrs)
    session = ort.InferenceSession(single.model("up", shape=(2, 5, 5), flatten=False).SerializeToString())
    m1 = session.run(None, {"x": np.eye(50, dtype=np.float32).reshape(50, 2, 5, 5)})[0].reshape(50, -1).T
    m1, c1 = m1.astype(np.float64), np.repeat(b1, 100).astype(np.float64)
    x = np.random.default_rng(12).uniform(-1, 1, (2, 2, 5, 5)).astype(np.float32)
    rule = ALL_RULES[name]
    seed, got = _onnx_lrp(backend, x, RelevanceRules(default=rule))
    assert backend.layers()[0].name == "up"
    ones = (np.abs(m1) > 0).astype(np.float64)  # the connections (every kernel tap is nonzero here)
    for i in range(2):
        a0 = x[i].reshape(-1).astype(np.float64)
        a1 = np.maximum(m1 @ a0 + c1, 0)
        r = dense_rule(rule, a1, w2.T.astype(np.float64), b2.astype(np.float64), seed[i])
        want = dense_rule(rule, a0, m1, c1, r, ones)
        assert relative(got.grads["input"][i], want.reshape(x[i].shape)) < TOL, name
