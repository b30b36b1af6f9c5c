"""LRP and DeepLift on the Keras backend (backends/tensorflow/_relevance.py).

References, none computed by the code under test:
* a written-out LRP reference in torch float64 (explicit per-layer formulas of each rule,
  Zennit's definitions, Montavon et al. 2019's tutorial style) for sequential nets: the demo
  model and the VGG-style test net, ported with the same weights (tests/lrp_nets_keras.py);
* identities: LRP-0 equals gradient x input on a bias-free ReLU net; conservation of the zero
  rule with zero bias through residual additions (ResNet-style) and concatenations
  (DenseNet-style); DeepLift's summation to delta;
* Captum's ``DeepLift`` on the torch VGG-style net, same weights and baselines.
"""
import numpy as np
import pytest

pytest.importorskip("tensorflow")
torch = pytest.importorskip("torch")
import keras  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import convscope  # noqa: E402
from convscope._relevance import DeepLiftRules, RelevanceRules, Rule  # noqa: E402

import lrp_nets  # noqa: E402
from lrp_nets_keras import port  # noqa: E402

L = keras.layers
K = len(convscope.data.DEMO_CLASSES)  # the demo model's classes


# ----------------------------------------------------------------- the written-out reference
def _stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z)


def _vjp(fn, points, s):
    points = [p.detach().requires_grad_(True) for p in points]
    return torch.autograd.grad(fn(*points), points, s)


def _ref_linear(rule, lin, a, R, W, b):
    """Relevance at ``a`` of ``lin(a, W, b)``: Zennit's rules written out."""
    b = None if rule.zero_bias else b
    pos, neg = (lambda t: None if t is None else t.clamp(min=0)), (lambda t: None if t is None else t.clamp(max=0))
    if rule.name in ("epsilon", "zero"):
        z = lin(a, W, b)
        s = R / _stab(z, rule.epsilon) if rule.name == "epsilon" else torch.where(z == 0, 0.0, R / z).to(z)
        return a * _vjp(lambda u: lin(u, W, None), [a], s)[0]
    if rule.name == "gamma":
        Wg, bg = W + rule.gamma * W.clamp(min=0), None if b is None else b + rule.gamma * b.clamp(min=0)
        return a * _vjp(lambda u: lin(u, Wg, None), [a], R / _stab(lin(a, Wg, bg), rule.stabilizer))[0]
    if rule.name in ("alphabeta", "zplus"):
        alpha, beta = (1.0, 0.0) if rule.name == "zplus" else (rule.alpha, rule.beta)
        ap, an = a.clamp(min=0), a.clamp(max=0)

        def part(Wa, Wb, bias):
            s = R / _stab(lin(ap, Wa, bias) + lin(an, Wb, None), rule.stabilizer)
            gp, gn = _vjp(lambda u, v: lin(u, Wa, None) + lin(v, Wb, None), [ap, an], s)
            return ap * gp + an * gn
        return alpha * part(W.clamp(min=0), W.clamp(max=0), pos(b)) - beta * part(W.clamp(max=0), W.clamp(min=0), neg(b))
    if rule.name in ("wsquare", "flat"):
        Wm = W ** 2 if rule.name == "wsquare" else torch.ones_like(W)  # the spec's formula: no bias
        ones = torch.ones_like(a)
        return _vjp(lambda u: lin(u, Wm, None), [ones], R / _stab(lin(ones, Wm, None), rule.stabilizer))[0]
    if rule.name == "zbox":
        lo, hi = torch.full_like(a, rule.low), torch.full_like(a, rule.high)
        Wp, Wn = W.clamp(min=0), W.clamp(max=0)
        s = R / _stab(lin(a, W, b) - lin(lo, Wp, pos(b)) - lin(hi, Wn, neg(b)), rule.stabilizer)
        return (a * _vjp(lambda u: lin(u, W, None), [a], s)[0] - lo * _vjp(lambda u: lin(u, Wp, None), [lo], s)[0]
                - hi * _vjp(lambda u: lin(u, Wn, None), [hi], s)[0])
    raise AssertionError(rule.name)


def _conv_lin(m):
    return lambda a, W, b: F.conv2d(a, W, b, m.stride, m.padding, m.dilation, m.groups)


def reference_lrp(modules, names, x, target, rules, canonize=True, bn_rule=Rule("epsilon")):
    """LRP of a sequential torch net (float64), BatchNorm after conv merged; ``names`` keys ``rules``."""
    acts, a = [], torch.from_numpy(x).double()
    mods = [m.double() for m in modules]
    for m in mods:
        acts.append(a)
        a = m(a)
    R = torch.zeros_like(a)
    R[torch.arange(len(a)), target] = a[torch.arange(len(a)), target]
    i = len(mods) - 1
    while i >= 0:
        m, a = mods[i], acts[i]
        if isinstance(m, nn.BatchNorm2d) and not canonize:  # its own rule on its affine map
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            affine = lambda u, w, bias: u * w[None, :, None, None] + (0 if bias is None else bias[None, :, None, None])  # noqa: E731
            R = _ref_linear(bn_rule, affine, a, R, scale.detach(), (m.bias - m.running_mean * scale).detach())
            i -= 1
            continue
        if isinstance(m, nn.BatchNorm2d):  # merged into the conv before it
            conv, bn = mods[i - 1], m
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            W = conv.weight * scale[:, None, None, None]
            b = (conv.bias if conv.bias is not None else 0) * scale + bn.bias - bn.running_mean * scale
            R = _ref_linear(rules.rule_for(names[i - 1]), _conv_lin(conv), acts[i - 1], R, W.detach(), b.detach())
            i -= 2
            continue
        if isinstance(m, nn.Conv2d):
            R = _ref_linear(rules.rule_for(names[i]), _conv_lin(m), a, R, m.weight.detach(),
                            None if m.bias is None else m.bias.detach())
        elif isinstance(m, nn.Linear):
            R = _ref_linear(rules.rule_for(names[i]), F.linear, a, R, m.weight.detach(), m.bias.detach())
        elif isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):  # Zennit's Norm
            R = a * _vjp(m, [a], R / _stab(m(a), rules.sum_stabilizer))[0]
        elif isinstance(m, (nn.MaxPool2d, nn.Flatten)):  # winner takes all; routed
            R = _vjp(m, [a], R)[0]
        else:
            assert isinstance(m, (nn.ReLU, nn.Dropout)), m  # pass
        i -= 1
    return R.numpy()


def _sequential(name):
    """(modules, keras names, Keras model) of a sequential net: the demo model or the VGG-style one."""
    if name == "demo":
        tm = convscope.data.demo_model("torch").eval()
        mods = list(tm.children())
        return mods, [n for n, _ in tm.named_children()], convscope.data.demo_model("keras")
    tm = lrp_nets.build("vgg")
    mods = [*tm.features, nn.Flatten(), *tm.classifier]
    names = [f"features_{i}" for i in range(len(tm.features))] + ["flatten"] + \
            [f"classifier_{i}" for i in range(len(tm.classifier))]
    return mods, names, port("vgg", tm)


def _seeds(backend, x, target):
    out = backend.forward(x)
    seed = np.zeros_like(out)
    seed[np.arange(len(x)), target] = out[np.arange(len(x)), target]
    return {"output": seed}


def _close(got, want, tol):
    scale = np.abs(want).max()
    assert np.abs(got - want).max() <= tol * scale, (np.abs(got - want).max() / scale)


RULES = {"epsilon": Rule("epsilon", epsilon=0.01), "zero": Rule("zero"), "gamma": Rule("gamma", gamma=0.25),
         "alpha1beta0": Rule("alphabeta", alpha=1, beta=0), "alpha2beta1": Rule("alphabeta", alpha=2, beta=1),
         "zplus": Rule("zplus"), "wsquare": Rule("wsquare"), "flat": Rule("flat"),
         "zbox": Rule("zbox", low=-0.5, high=0.5), "epsilon_zero_bias": Rule("epsilon", epsilon=0.01, zero_bias=True)}


@pytest.fixture(scope="module")
def vgg():
    return _sequential("vgg")


FAST = ("epsilon", "zplus", "zbox")


@pytest.mark.parametrize("rule", [r if r in FAST else pytest.param(r, marks=pytest.mark.slow) for r in RULES])
def test_every_rule_matches_the_written_out_reference(vgg, rule):
    mods, names, km = vgg
    x = lrp_nets.images(2, seed=1) - 0.5  # negative inputs exercise the a- parts
    target = np.array([1, 3])
    rules = RelevanceRules(default=RULES[rule])
    b = convscope.load(km)
    got = b.gradient(x, _seeds(b, x, target), rule=rules).grads["input"]
    _close(got, reference_lrp(mods, names, x, target, rules), 1e-4)


COMPOSITES = {  # Zennit's names: first conv, other convs, dense layers
    "EpsilonGammaBox": (Rule("zbox", low=0.0, high=1.0), Rule("gamma"), Rule("epsilon")),
    "EpsilonPlus": (Rule("zplus"), Rule("zplus"), Rule("epsilon")),
    "EpsilonPlusFlat": (Rule("flat"), Rule("zplus"), Rule("epsilon")),
    "EpsilonAlpha2Beta1": (Rule("alphabeta", alpha=2, beta=1), Rule("alphabeta", alpha=2, beta=1), Rule("epsilon")),
}


@pytest.mark.slow
@pytest.mark.parametrize("net", ["demo", "vgg"])
@pytest.mark.parametrize("composite", list(COMPOSITES))
def test_composites_match_the_reference(vgg, net, composite):
    mods, names, km = _sequential("demo") if net == "demo" else vgg
    first, conv, dense = COMPOSITES[composite]
    convs = [n for m, n in zip(mods, names) if isinstance(m, nn.Conv2d)]
    denses = [n for m, n in zip(mods, names) if isinstance(m, nn.Linear)]
    rules = RelevanceRules(layers=((convs[0], first), *((n, conv) for n in convs[1:]), *((n, dense) for n in denses)))
    x = convscope.data.shapes(2, seed=4).images if net == "demo" else lrp_nets.images(2, seed=2)
    target = np.array([0, 2])
    b = convscope.load(km)
    got = b.gradient(x, _seeds(b, x, target), rule=rules).grads["input"]
    _close(got, reference_lrp(mods, names, x, target, rules), 1e-4)


# ----------------------------------------------------------------- identities
def test_lrp_zero_is_gradient_times_input_on_a_bias_free_relu_net():
    inp = keras.Input((12, 12, 3))
    h = L.Conv2D(6, 3, padding="same", use_bias=False, activation="relu")(inp)  # fused: split
    h = L.MaxPooling2D(2)(h)
    h = L.Conv2D(6, 3, use_bias=False)(h)
    h = L.ReLU()(h)
    h = L.Flatten()(h)
    model = keras.Model(inp, L.Dense(4, use_bias=False)(h))
    b = convscope.load(model)
    x = np.random.default_rng(0).random((3, 3, 12, 12)).astype(np.float32)
    seeds = _seeds(b, x, [0, 1, 2])
    one_hot = {"output": (seeds["output"] != 0).astype(np.float32)}
    want = b.gradient(x, one_hot).grads["input"] * x
    got = b.gradient(x, seeds, rule=RelevanceRules(default=Rule("zero"))).grads["input"]
    _close(got, want, 1e-5)


def _without_biases(model):
    """The model with every bias, BatchNorm shift and mean set to zero (biases break conservation)."""
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, L.BatchNormalization):
            weights[1] = weights[2] = np.zeros_like(weights[1])
        elif len(weights) == 2:
            weights[1] = np.zeros_like(weights[1])
        layer.set_weights(weights)
    return model


# DenseNet with z+ is left out: its average pool's Norm over signed conv outputs amplifies float32
# error (1e-3 of the score), a property of the rule in single precision, not of the routing
@pytest.mark.slow
@pytest.mark.parametrize("net, rule", [("resnet", "zplus"), ("resnet", "zero"), ("densenet", "zero")])
def test_relevance_is_conserved_through_additions_and_concatenations(net, rule):
    km = _without_biases(port(net, lrp_nets.build(net)))
    b = convscope.load(km)
    rule = Rule(rule, stabilizer=0.0)  # no stabilizer: exact conservation
    bns = tuple((layer.name, rule) for layer in km.layers if isinstance(layer, L.BatchNormalization))
    rules = RelevanceRules(layers=bns, default=rule, sum_stabilizer=0.0)
    x = lrp_nets.images(2, seed=3)
    seeds = _seeds(b, x, [1, 4])
    got = b.gradient(x, seeds, rule=rules).grads["input"]
    # float32: the signed relevance cancels, so the error is measured against its absolute sum
    error = np.abs(got.sum((1, 2, 3)) - seeds["output"].sum(1))
    assert (error <= 1e-5 * np.abs(got).sum((1, 2, 3))).all(), error / np.abs(got).sum((1, 2, 3))
    assert (error <= 1e-2 * np.abs(seeds["output"]).sum(1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("rule", [Rule("epsilon", epsilon=0.01), Rule("zplus")], ids=["epsilon", "zplus"])
def test_canonize_false_gives_batchnorm_its_own_rule(rule):
    mods, names, km = _sequential("demo")
    b = convscope.load(km)
    x = convscope.data.shapes(2, seed=5).images
    target = np.array([0, 1])
    seeds = _seeds(b, x, target)
    bn_rule = Rule("epsilon", epsilon=0.1)  # named for the BatchNorms (1e-6 by default: ill-conditioned in float32)
    apart = RelevanceRules(layers=tuple((f"bn{i}", bn_rule) for i in range(1, 5)), default=rule, canonize=False)
    got = b.gradient(x, seeds, rule=apart).grads["input"]
    _close(got, reference_lrp(mods, names, x, target, apart, canonize=False, bn_rule=bn_rule), 1e-4)
    merged = b.gradient(x, seeds, rule=RelevanceRules(default=rule)).grads["input"]
    assert np.abs(merged - got).max() > 1e-2 * np.abs(got).max()  # the choice matters on the demo model


# ----------------------------------------------------------------- DeepLift
class _Times1(nn.Module):
    def forward(self, x):
        return x * 1.0


def test_deeplift_matches_captum_on_the_vgg_style_net(vgg):
    captum_attr = pytest.importorskip("captum.attr")
    tm = lrp_nets.build("vgg")
    x = lrp_nets.images(3, seed=6)
    base = np.random.default_rng(1).random(x.shape).astype(np.float32) * 0.2
    target = [0, 2, 4]
    b = convscope.load(port("vgg", tm))
    # Captum's hooks misbehave on a ReLU module feeding a MaxPool module directly (its attributions
    # then miss the score difference by 6e-3 on a 3-layer net); a x * 1 between them is the same net
    tm.features[3] = nn.Sequential(nn.ReLU(), _Times1())
    want, delta = captum_attr.DeepLift(tm).attribute(torch.from_numpy(x), torch.from_numpy(base), target=target,
                                                     return_convergence_delta=True)
    want = want.detach().numpy()
    assert np.abs(delta.numpy()).max() < 1e-6 * np.abs(want).sum()
    one_hot = np.eye(5, dtype=np.float32)[target]
    g = b.gradient(x, {"output": one_hot}, rule=DeepLiftRules(base))
    _close((x - base) * g.grads["input"], want, 1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("net", ["resnet", "densenet"])
def test_deeplift_sums_to_the_difference_of_scores(net):
    km = port(net, lrp_nets.build(net))
    b = convscope.load(km)
    x, base = lrp_nets.images(2, seed=7), lrp_nets.images(2, seed=8) * 0.3
    one_hot = np.eye(5, dtype=np.float32)[[3, 0]]
    g = b.gradient(x, {"output": one_hot}, rule=DeepLiftRules(base))
    attribution = ((x - base) * g.grads["input"]).sum((1, 2, 3))
    delta = (b.forward(x) - b.forward(base))[[0, 1], [3, 0]]
    np.testing.assert_allclose(attribution, delta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g.outputs, b.forward(x), rtol=1e-6)  # the image half, not the baselines


# ----------------------------------------------------------------- errors and state
def _gated_model():
    inp = keras.Input((8, 8, 3))
    h = L.Conv2D(4, 3, padding="same", name="conv")(inp)
    gate = L.Conv2D(4, 1, activation="sigmoid", name="gate")(h)
    h = L.Multiply(name="excite")([h, gate])
    h = L.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inp, L.Dense(3, name="fc")(h))


@pytest.mark.parametrize("rules", [RelevanceRules(default=Rule("epsilon")), "deeplift"])
def test_an_operator_without_a_rule_is_named(rules):
    b = convscope.load(_gated_model())
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    rules = DeepLiftRules(np.zeros_like(x)) if rules == "deeplift" else rules
    with pytest.raises(ValueError, match=r"'excite' \(Multiply\).*no (LRP|DeepLift) rule"):
        b.gradient(x, {"output": np.ones((2, 3), np.float32)}, rule=rules)


def test_a_softmax_kept_in_the_output_is_refused_and_a_left_out_one_is_not():
    inp = keras.Input((8, 8, 3))
    h = L.GlobalAveragePooling2D()(L.Conv2D(4, 3, name="conv")(inp))
    model = keras.Model(inp, L.Dense(3, activation="softmax", name="fc")(h))
    x = np.random.default_rng(0).random((2, 3, 8, 8)).astype(np.float32)
    rules = RelevanceRules(default=Rule("epsilon"))
    scores = convscope.load(model).gradient(x, {"output": np.ones((2, 3), np.float32)}, rule=rules)
    assert np.isfinite(scores.grads["input"]).all()
    with pytest.raises(ValueError, match=r"'fc' \(Dense\(activation='softmax'\)\).*no LRP rule"):
        convscope.load(model, output="probabilities").gradient(x, {"output": np.ones((2, 3), np.float32)}, rule=rules)


def test_a_layer_without_a_rule_and_no_default_is_named():
    b = convscope.load(_sequential("demo")[2])
    x = convscope.data.shapes(1, seed=0).images
    with pytest.raises(ValueError, match=r"No LRP rule for layer 'conv\d' \(Conv2D\)"):
        b.gradient(x, {"output": np.ones((1, K), np.float32)}, rule=RelevanceRules(layers=(("fc", Rule("epsilon")),)))


def test_baseline_of_the_wrong_shape_is_refused_before_a_pass():
    b = convscope.load(_sequential("demo")[2])
    x = convscope.data.shapes(2, seed=0).images
    with pytest.raises(ValueError, match="baseline"):
        b.gradient(x, {"output": np.ones((2, K), np.float32)}, rule=DeepLiftRules(np.zeros((1, 3, 64, 64), np.float32)))


def test_the_model_and_the_standard_gradient_are_left_as_they_were():
    model = _sequential("demo")[2]
    model.get_layer("conv2").trainable = False
    before = [w.copy() for w in model.get_weights()]
    flags = [layer.trainable for layer in model.layers]
    b = convscope.load(model)
    x = convscope.data.shapes(2, seed=9).images
    seeds = _seeds(b, x, [0, 1])
    plain = b.gradient(x, seeds).grads["input"]
    b.gradient(x, seeds, rule=RelevanceRules(default=Rule("gamma")))
    b.gradient(x, seeds, rule=DeepLiftRules(np.zeros_like(x)))
    with pytest.raises(ValueError):
        convscope.load(_gated_model()).gradient(x[:, :, :8, :8], {"output": np.ones((2, 3), np.float32)},
                                                rule=RelevanceRules(default=Rule("epsilon")))
    np.testing.assert_array_equal(b.gradient(x, seeds).grads["input"], plain)
    assert all(np.array_equal(a, w) for a, w in zip(before, model.get_weights()))
    assert [layer.trainable for layer in model.layers] == flags


def test_one_trace_per_rule_set():
    b = convscope.load(_sequential("demo")[2])
    x = convscope.data.shapes(2, seed=0).images
    seeds = {"output": np.ones((2, K), np.float32)}
    rules = RelevanceRules(default=Rule("epsilon"))
    b.gradient(x, seeds, rule=rules)
    traces = b._traces
    b.gradient(x[:1], {"output": seeds["output"][:1]}, rule=RelevanceRules(default=Rule("epsilon")))
    b.gradient(x, seeds, rule=DeepLiftRules(np.zeros_like(x)))
    b.gradient(x, seeds, rule=DeepLiftRules(np.ones_like(x)))
    assert b._traces == traces + 1
