"""LRP on torch: against Captum's LRP, known identities, conservation, canonization, bad input."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_lrp = pytest.importorskip("captum.attr._core.lrp")
rules = pytest.importorskip("captum.attr._utils.lrp_rules")

import lrp_nets  # noqa: E402
from convscope.attribution import lrp  # noqa: E402
from convscope.attribution.relevance import COMPOSITES  # noqa: E402
from convscope._relevance import LRP_RULES  # noqa: E402


def _captum(model, x, target, make_rule, relu_rule=None):
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.rule = make_rule()
        if relu_rule is not None and isinstance(m, torch.nn.ReLU):
            m.rule = relu_rule()
    out = captum_lrp.LRP(model).attribute(torch.from_numpy(x), target=torch.as_tensor(target))
    return out.detach().numpy()


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def vgg():
    return lrp_nets.build("vgg"), lrp_nets.images(2), [1, 3]


@pytest.mark.parametrize("case", ["epsilon", "gamma", "alpha1beta0", "epsilon-large", "identity"])
def test_lrp_matches_captum_on_vgg(vgg, case):
    """Captum's rules keep the bias unmodified for gamma and alpha1-beta0 (Zennit modifies it
    by sign): both run with zero bias there; Captum's stabiliser is 1e-9 everywhere."""
    model, x, target = vgg
    tiny = dict(stabilizer=1e-9, sum_stabilizer=1e-9)
    if case == "epsilon":
        ref = _captum(model, x, target, lambda: rules.EpsilonRule(1e-9))
        got = lrp(model, x, target, composite="epsilon", epsilon=1e-9, **tiny)
    elif case == "epsilon-large":
        ref = _captum(model, x, target, lambda: rules.EpsilonRule(0.1))
        got = lrp(model, x, target, composite="epsilon", epsilon=0.1, **tiny)
    elif case == "identity":  # Captum's IdentityRule put on every ReLU: convscope's pass at activations
        ref = _captum(model, x, target, lambda: rules.EpsilonRule(0.1), relu_rule=rules.IdentityRule)
        got = lrp(model, x, target, composite="epsilon", epsilon=0.1, **tiny)
    elif case == "gamma":
        ref = _captum(model, x, target, lambda: rules.GammaRule(0.25, set_bias_to_zero=True))
        got = lrp(model, x, target, composite="gamma", gamma=0.25, zero_bias=True, **tiny)
    else:
        ref = _captum(model, x, target, lambda: rules.Alpha1_Beta0_Rule(set_bias_to_zero=True))
        got = lrp(model, x, target, composite="zplus", zero_bias=True, **tiny)
    assert _rel(got.attributions, ref) < 1e-5
    np.testing.assert_allclose(got.maps, got.attributions.sum(1), rtol=1e-6)


def _bias_free(model):
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
            m.bias.data.zero_()
        if isinstance(m, torch.nn.BatchNorm2d):
            m.bias.data.zero_()
            m.running_mean.zero_()
    return model


def test_lrp_zero_equals_gradient_times_input_on_bias_free_relu_net(vgg):
    """LRP-0 on a bias-free ReLU net with max and average pools is gradient x input (Montavon
    et al. 2019, section 10.2.1; the average pools are linear, so the identity holds)."""
    model = _bias_free(copy.deepcopy(vgg[0]))
    x, target = vgg[1], vgg[2]
    got = lrp(model, x, target, composite="zero", sum_stabilizer=0.0)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = model(xt)
    out[torch.arange(2), torch.tensor(target)].sum().backward()
    ref = (xt.grad * xt).detach().numpy()
    assert _rel(got.attributions, ref) < 1e-5


@pytest.mark.parametrize("net, composite", [
    ("vgg", "epsilon"), ("vgg", "zplus"), ("resnet", "epsilon"), ("resnet", "zplus"), ("densenet", "epsilon")])
def test_conservation_without_bias(net, composite):
    """Zero bias, stabilisers ~0: the input relevance sums to the explained score, through
    max/avg pools, canonised BatchNorms, residual additions and concatenations. (Not z+ on the
    DenseNet-style net: its transition conv feeds an average pool with no ReLU between, so a unit
    with z+ = 0 can hold (negative) relevance, which z+ drops: 5e-4 of the score there, the
    same by the hand formula.)"""
    model = _bias_free(lrp_nets.build(net))
    x = lrp_nets.images(2)
    got = lrp(model, x, composite=composite, epsilon=1e-12, stabilizer=1e-12, sum_stabilizer=1e-12)
    c = got.info["conservation"]
    np.testing.assert_allclose(c["relevance"], c["scores"], rtol=1e-5)


def test_canonization_equals_lrp_on_the_hand_merged_net():
    """In float64 (the backend runs a double model in double): z+ and z^B divide by small
    sums, where float32 rounding of the two merged forms differs by 2e-4 relative."""
    model = lrp_nets.build("resnet").double()
    merged = copy.deepcopy(model)
    pairs = [("conv1", "bn1"), ("layer1.conv1", "layer1.bn1"), ("layer1.conv2", "layer1.bn2"),
             ("layer2.conv1", "layer2.bn1"), ("layer2.conv2", "layer2.bn2"), ("layer2.down.0", "layer2.down.1")]
    mods = dict(merged.named_modules())
    for conv, bn in pairs:
        c, b = mods[conv], mods[bn]
        scale = b.weight.data / torch.sqrt(b.running_var + b.eps)
        c.weight.data = c.weight.data * scale[:, None, None, None]
        c.bias = torch.nn.Parameter(-b.running_mean * scale + b.bias.data)
        parent, _, leaf = bn.rpartition(".")
        setattr(mods[parent] if parent else merged, leaf, torch.nn.Identity())
    x = lrp_nets.images(2)
    for comp in ("EpsilonPlus", "EpsilonGammaBox"):
        a = lrp(model, x, composite=comp).attributions
        b = lrp(merged, x, composite=comp).attributions
        assert _rel(a, b) < 1e-9


def test_composites_resolve_by_kind_and_depth():
    model = lrp_nets.build("vgg")
    x = lrp_nets.images(1)
    r = lrp(model, x, composite="EpsilonGammaBox").info
    assert r["rules"]["features.0"].startswith("zbox(low=0.0, high=1.0")
    assert r["rules"]["features.2"].startswith("gamma") and r["rules"]["classifier.0"].startswith("epsilon")
    assert "zbox bounds" in r["choices"]
    r = lrp(model, x, composite="EpsilonPlusFlat", rules={"classifier.3": "zero"}).info["rules"]
    assert r["features.0"].startswith("flat") and r["features.5"].startswith("zplus") and r["classifier.3"] == "zero()"
    assert set(COMPOSITES) == {"EpsilonPlus", "EpsilonGammaBox", "EpsilonPlusFlat", "EpsilonAlpha2Beta1",
                               "EpsilonAlpha2Beta1Flat"}
    for comp in (*COMPOSITES, *LRP_RULES):
        a = lrp(model, x, composite=comp).attributions
        assert a.shape == x.shape and np.isfinite(a).all()


def test_model_left_as_it_was_also_after_an_error():
    model = lrp_nets.build("resnet").train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    lrp(model, lrp_nets.images(1))

    class Gated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = model

        def forward(self, x):
            return self.body(x) * self.body(x)  # a product of two data-path tensors

    with pytest.raises(ValueError, match="__mul__|mul"):
        lrp(Gated(), lrp_nets.images(1))
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_bad_input():
    model, x = lrp_nets.build("vgg"), lrp_nets.images(1)
    with pytest.raises(ValueError, match="'rules' parameter of lrp.*'zplus'.*'nope'"):
        lrp(model, x, rules={"conv": "nope"})
    with pytest.raises(ValueError, match="'composite' parameter of lrp.*EpsilonPlus.*'Nope'"):
        lrp(model, x, composite="Nope")
    with pytest.raises(ValueError, match="none for the linear layer 'classifier.0'"):
        lrp(model, x, composite=None, rules={"conv": "zplus"})
    with pytest.raises(ValueError, match="'rules' parameter of lrp.*'features.99'"):
        lrp(model, x, rules={"features.99": "zplus"})
    with pytest.raises(ValueError, match="target"):
        lrp(model, x, target=7)
    with pytest.raises(ValueError, match="'beta' parameter of lrp must be alpha - 1"):
        lrp(model, x, composite="alphabeta", alpha=2.0, beta=0.5)

    class Normed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, x):
            h = self.conv(x)
            return self.fc(torch.nn.functional.layer_norm(h, h.shape[1:]).mean((2, 3)))

    with pytest.raises(ValueError, match="'layer_norm' at layer '<model>'"):
        lrp(Normed(), x)


# --------------------------------------------------------------------------- the written-out reference
def _expected_rules(composite):
    """Per-layer rules written out from Zennit's composites (conv1 is the first layer)."""
    from convscope._relevance import Rule

    eps, zplus, gamma = Rule("epsilon"), Rule("zplus"), Rule("gamma")
    ab = Rule("alphabeta", alpha=2.0, beta=1.0)
    table = {
        "EpsilonPlus": (zplus, zplus, eps),
        "EpsilonGammaBox": (Rule("zbox", low=0.0, high=1.0), gamma, eps),
        "EpsilonPlusFlat": (Rule("flat"), zplus, eps),
        "EpsilonAlpha2Beta1": (ab, ab, eps),
        "EpsilonAlpha2Beta1Flat": (Rule("flat"), ab, eps),
    }
    if composite in table:
        first, conv, dense = table[composite]
    else:  # lrp's alpha/beta defaults are Zennit's AlphaBeta's: 2 and 1
        first = conv = dense = ab if composite == "alphabeta" else Rule(composite)
    return {"conv1": first, "conv2": conv, "conv3": conv, "fc": dense}


@pytest.mark.parametrize("composite", [*COMPOSITES, *LRP_RULES])
def test_every_rule_and_composite_against_the_written_out_reference(composite):
    import lrp_reference

    net = lrp_reference.build()
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 8, 8)).astype(np.float32)
    got = lrp(net, x, [0, 2], composite=composite)
    ref = lrp_reference.reference_lrp(net, x, [0, 2], _expected_rules(composite))
    assert _rel(got.attributions, ref) < 1e-6


# --------------------------------------------------------------------------- preprocessing, torch idioms
def test_relevance_passes_the_preprocessing_unchanged():
    """With load(model, preprocess=...) relevance at the user's image is the relevance at the
    model's input, channels reordered, no chain-rule gain (the normalisation is Pass); z^B's
    bounds are the user's [0, 1] mapped through the normalisation, per channel."""
    import convscope

    model, x = lrp_nets.build("vgg"), lrp_nets.images(2)
    p = convscope.Preprocess(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), order="BGR")
    wrapped = convscope.load(model, preprocess=p)
    xm = p.apply(x)
    for comp in ("EpsilonPlus", "EpsilonGammaBox"):
        got = lrp(wrapped, x, [1, 2], composite=comp)
        low = tuple((0 - np.array(p.mean)) / np.array(p.std))
        high = tuple((1 - np.array(p.mean)) / np.array(p.std))
        ref = lrp(model, xm, [1, 2], composite=comp, low=low, high=high).attributions[:, ::-1]
        assert _rel(got.attributions, ref) < 1e-6
    assert "per channel" in got.info["choices"]["zbox bounds"]


def test_torch_idioms_in_place_relus_augmented_addition_scales():
    """nn.ReLU(inplace=True), ``out += identity`` (torchvision's blocks), ``x * 3`` and ReLU6, F.relu,
    Tensor.relu: conservative on bias-free versions, the in-place forms equal to the plain ones."""
    import torch_models

    class AugmentedBlock(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
            self.relu = torch.nn.ReLU(inplace=True)
            self.conv2 = torch.nn.Conv2d(6, 6, 3, padding=1)
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, x, in_place=True):
            identity = self.relu(self.conv1(x))
            out = self.conv2(identity)
            if in_place:
                out += identity
            else:
                out = out + identity
            return self.fc(self.relu(out).mean((2, 3)))

    x = lrp_nets.images(2)
    block = _bias_free(AugmentedBlock().eval())
    a = lrp(block, x, composite="epsilon", epsilon=1e-12, sum_stabilizer=1e-12)
    np.testing.assert_allclose(a.info["conservation"]["relevance"], a.info["conservation"]["scores"], rtol=1e-5)

    class Plain(AugmentedBlock):
        def forward(self, x):
            return super().forward(x, in_place=False)

    plain = Plain().eval()
    plain.load_state_dict(block.state_dict())
    assert _rel(lrp(plain, x, composite="EpsilonPlus").attributions,
                lrp(block, x, composite="EpsilonPlus").attributions) < 1e-6
    for net, size in ((torch_models.MixedReLUNet(), 16), (torch_models.TinyResNet(), 32)):
        net = _bias_free(torch_models.randomise_bn(net.eval()))
        got = lrp(net, lrp_nets.images(2, size=size), composite="epsilon", epsilon=1e-12, sum_stabilizer=1e-12)
        np.testing.assert_allclose(got.info["conservation"]["relevance"], got.info["conservation"]["scores"], rtol=1e-4)


def test_rule_objects_and_layer_relevance_through_the_backend():
    """A Rule in ``rules`` is used as given; ``gradient(..., rule=RelevanceRules)`` returns the
    relevance of an inner layer, which for LRP-0 on a bias-free net sums to the score."""
    import convscope
    from convscope._relevance import RelevanceRules, Rule

    model, x = _bias_free(lrp_nets.build("vgg")), lrp_nets.images(1)
    got = lrp(model, x, 0, composite="epsilon", rules={"features.0": Rule("zbox", low=-1.0, high=2.0)})
    assert got.info["rules"]["features.0"] == "zbox(low=-1.0, high=2.0, stabilizer=1e-06)"
    assert "zbox bounds" not in got.info.get("choices", {})  # given, not chosen
    backend = convscope.load(model)
    out = backend.forward(x)
    seeds = np.zeros_like(out)
    seeds[0, 0] = out[0, 0]
    g = backend.gradient(x, {"output": seeds}, wrt=["input", "features.5"],
                         rule=RelevanceRules(default=Rule("zero"), sum_stabilizer=0.0))
    np.testing.assert_allclose(g.grads["features.5"].sum(), out[0, 0], rtol=1e-5)
    np.testing.assert_allclose(g.grads["input"].sum(), out[0, 0], rtol=1e-5)
