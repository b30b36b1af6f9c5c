"""The PyTorch backend: conformance, every ReLU form, state restoration, bad input."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import convscope  # noqa: E402
from convscope.testing import check_backend  # noqa: E402
from torch_models import MixedReLUNet, TinyResNet, randomise_bn  # noqa: E402

pytestmark = pytest.mark.backend("torch")


@pytest.fixture
def mixed():
    torch.manual_seed(0)
    return MixedReLUNet().eval()


@pytest.fixture
def resnet():
    torch.manual_seed(0)
    return randomise_bn(TinyResNet()).eval()


def images(n=3, size=16, seed=0):
    return np.random.default_rng(seed).random((n, 3, size, size), dtype=np.float32)


@pytest.mark.parametrize("make", ["mixed", "resnet", "demo"])
def test_conformance(make, mixed, resnet):
    model = {"mixed": mixed, "resnet": resnet}.get(make) or convscope.data.demo_model("torch")
    x = images(size=64 if make == "demo" else 16)
    report = check_backend(convscope.load(model), x)  # raises on any disagreement, finite differences included
    if make != "mixed":
        assert report["relu_rule_sites"] > 0


class ExplicitRule(torch.autograd.Function):
    """The reference: a ReLU whose backward applies the rule written out by hand."""

    @staticmethod
    def forward(ctx, x, rule, upper):
        ctx.save_for_backward(x)
        ctx.rule, ctx.upper = rule, upper
        return x.clamp(0, upper)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        inside = ((x > 0) & (x < ctx.upper)).float()
        if ctx.rule == "standard":
            return g * inside, None, None
        if ctx.rule == "guided":
            return torch.where(g > 0, g, torch.zeros_like(g)) * inside, None, None
        return torch.where(g > 0, g, torch.zeros_like(g)), None, None


def reference_forward(m, x, rule):
    r = lambda t, upper=float("inf"): ExplicitRule.apply(t, rule, upper)  # noqa: E731
    x = r(m.conv1(x))
    x = r(m.conv2(x))
    x = r(m.conv3(x))
    x = m.pool(r(m.conv4(x) * 3, 6.0))
    x = r(m.conv5(x))
    x = r(m.fc(x.flatten(1)))
    return m.fc2(r(x))


@pytest.mark.parametrize("rule", ["standard", "guided", "deconvnet"])
def test_every_relu_follows_the_rule(mixed, rule):
    x = images(2)
    seed = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    got = convscope.load(mixed).gradient(x, {"output": seed}, rule=rule)["input"]
    xt = torch.from_numpy(x).requires_grad_(True)
    with torch.enable_grad():
        (want,) = torch.autograd.grad(reference_forward(mixed, xt, rule), xt, torch.from_numpy(seed))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-7)
    if rule != "standard":  # the reference rule really differs from plain autograd here
        with torch.enable_grad():
            xs = torch.from_numpy(x).requires_grad_(True)
            (plain,) = torch.autograd.grad(mixed(xs), xs, torch.from_numpy(seed))
        assert not np.allclose(plain.numpy(), want.numpy(), atol=1e-6)


class StatementInPlace(torch.nn.Module):
    """In-place ReLUs whose return value is ignored: the rule must act on the tensor itself."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(6, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 3)

    def forward(self, x, relu=None):
        x = self.conv1(x)
        x.relu_() if relu is None else None
        x = relu(x) if relu else x
        x = self.conv2(x)
        F.relu(x, inplace=True) if relu is None else None
        x = relu(x) if relu else x
        x = self.conv3(x)
        F.hardtanh(x, 0.0, 6.0, True) if relu is None else None
        x = relu(x, 6.0) if relu else x
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("rule", ["standard", "guided", "deconvnet"])
def test_in_place_relus_whose_result_is_ignored_follow_the_rule(rule):
    torch.manual_seed(3)
    model = StatementInPlace().eval()
    x = images(2, size=8)
    seed = np.random.default_rng(4).standard_normal((2, 3)).astype(np.float32)
    got = convscope.load(model).gradient(x, {"output": seed}, rule=rule)["input"]
    xt = torch.from_numpy(x).requires_grad_(True)
    relu = lambda t, upper=float("inf"): ExplicitRule.apply(t, rule, upper)  # noqa: E731
    with torch.enable_grad():
        (want,) = torch.autograd.grad(model(xt, relu), xt, torch.from_numpy(seed))
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-7)


def test_gradient_matches_raw_autograd_at_input_and_layer(resnet):
    x = images(2)
    backend = convscope.load(resnet)
    seed = np.zeros((2, 4), np.float32)
    seed[:, 1] = 1
    g = backend.gradient(x, {"output": seed}, wrt=["input", "layer1"])
    captured = {}
    h = resnet.layer1.register_forward_hook(lambda m, i, o: captured.setdefault("a", o))
    try:
        xt = torch.from_numpy(x).requires_grad_(True)
        with torch.enable_grad():
            out = resnet(xt)
            gx, ga = torch.autograd.grad(out[:, 1].sum(), [xt, captured["a"]])
    finally:
        h.remove()
    np.testing.assert_allclose(g["input"], gx.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g["layer1"], ga.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g.activations["layer1"], captured["a"].detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(g.outputs, out.detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("wrt, at", [
    (["layer2.conv2"], ["output"]),                      # inside a block; the skip path bypasses it
    (["layer2.bn2", "layer2.down.1"], ["output"]),       # two parallel branches of one block
    (["layer1.conv1", "layer2.conv1"], ["layer2.bn2"]),  # one upstream of the other, seeded at a layer
    (["layer1.conv1", "layer2"], ["layer2.relu#2"]),     # a container and its last child: one tensor
])
def test_layer_only_gradients_build_no_graph_before_the_layer_and_match_autograd(resnet, wrt, at):
    """With only layers in ``wrt`` the pass records a graph from the first of them on; the
    gradients must equal autograd through the whole model (the reference records everything)."""
    x = images(2)
    backend = convscope.load(resnet)
    rng = np.random.default_rng(2)
    shapes = {n: backend.activations(x, [n])[n].shape for n in at}
    assert wrt[0] in [r.name for r in backend.layers()]
    seeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    grad_mode = torch.is_grad_enabled()
    seen = []
    probe = resnet.stem.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    try:
        got = backend.gradient(x, seeds, wrt=wrt, at=at)
    finally:
        probe.remove()
    assert seen == [False]  # the stem, before every wrt layer, recorded no graph
    assert torch.is_grad_enabled() == grad_mode
    modules = dict(resnet.named_modules())
    captured, handles = {}, []
    for name in dict.fromkeys(n for n in [*wrt, *at] if n != "output"):
        base, _, call = name.partition("#")
        calls = []

        def hook(m, i, o, name=name, want=int(call or 1), calls=calls):
            calls.append(1)
            if len(calls) == want:
                captured[name] = o
        handles.append(modules[base].register_forward_hook(hook))
    try:
        with torch.enable_grad():
            xt = torch.from_numpy(x).requires_grad_(True)
            out = resnet(xt)
            captured["output"] = out
            want = torch.autograd.grad([captured[n] for n in at], [captured[n] for n in wrt],
                                       [torch.from_numpy(seeds[n]) for n in at])
    finally:
        for h in handles:
            h.remove()
    for name, w in zip(wrt, want):
        np.testing.assert_allclose(got[name], w.numpy(), rtol=1e-5, atol=1e-6)
        assert np.abs(w.numpy()).max() > 0
    with pytest.raises(ValueError):  # an error in the middle of such a pass leaves grad mode as it was
        backend.gradient(x, {"output": np.zeros((2, 5), np.float32)}, wrt=wrt)
    assert torch.is_grad_enabled() == grad_mode


def test_layer_records(mixed, resnet):
    records = {r.name: r for r in convscope.load(mixed, input_shape=(3, 16, 16)).layers()}
    assert records["conv3"].kind == "conv" and records["conv3"].stride == (2, 2)
    assert records["conv3"].padding == (1, 1, 1, 1) and records["conv3"].kernel == (3, 3)
    assert records["conv3"].shape == (8, 8, 8)
    assert records["shared"].kind == "relu" and records["shared#2"].shape == (8, 8, 8)
    assert records["shared"].shape == (8, 16, 16)
    assert records["pool"].kind == "pool" and records["pool"].kernel == (2, 2)
    names = [r.name for r in convscope.load(resnet).layers()]
    assert "layer2.down.0" in names and "stem.2" in names
    res = {r.name: r for r in convscope.load(resnet, input_shape=(3, 16, 16)).layers()}
    assert res["layer1.relu"].inputs == ("layer1.bn1",) and res["avgpool"].kernel == (8, 8)


def test_reused_module_second_call_is_addressable(mixed):
    backend = convscope.load(mixed)
    x = images(2)
    acts = backend.activations(x, ["shared", "shared#2", "conv3"])
    assert acts["shared"].shape == (2, 8, 16, 16)
    np.testing.assert_allclose(acts["shared#2"], np.maximum(acts["conv3"], 0), rtol=1e-6)


def test_activations_stop_early_but_agree(resnet):
    backend = convscope.load(resnet)
    x = images(2)
    early = backend.activations(x, ["stem.0"])["stem.0"]
    full = backend.activations(x, ["stem.0", "output"])["stem.0"]
    np.testing.assert_array_equal(early, full)
    # the in-place ReLU after the conv must not change what was recorded
    assert (backend.activations(x, ["stem.1"])["stem.1"] < 0).any()


def snapshot(model):
    return dict(
        training=[m.training for m in model.modules()],
        requires_grad=[p.requires_grad for p in model.parameters()],
        grad_mode=torch.is_grad_enabled(),
        buffers={k: v.clone() for k, v in model.state_dict().items()},
        hooks=sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()),
    )


def assert_same(before, after):
    assert before["training"] == after["training"]
    assert before["requires_grad"] == after["requires_grad"]
    assert before["grad_mode"] == after["grad_mode"]
    assert before["hooks"] == after["hooks"]
    for k, v in before["buffers"].items():
        assert torch.equal(v, after["buffers"][k]), k


def test_model_left_exactly_as_it_was_also_after_errors(resnet):
    resnet.train()
    resnet.layer1.eval()  # a mixed state, which model.train(flag) could not restore
    for p in resnet.layer2.parameters():
        p.requires_grad_(False)
    backend = convscope.load(resnet)
    x = images(4)

    def exploding(acts):
        raise RuntimeError("boom mid-pass")

    calls = [
        (lambda: backend.forward(x), None),  # (call, the exception it must raise, or None: it succeeds)
        (lambda: backend.activations(x, ["layer1", "stem.2"]), None),
        (lambda: backend.gradient(x, {"output": np.ones((4, 4), np.float32)}, wrt=["input", "layer1"], rule="guided"),
         None),
        (lambda: backend.gradient(x, exploding, at=["layer1"], rule="guided"), RuntimeError),
        (lambda: backend.gradient(x, {"output": np.ones((4, 3), np.float32)}), ValueError),
        (lambda: backend.gradient(x, {"layer9": np.ones((4, 3), np.float32)}), ValueError),
    ]
    with torch.no_grad():  # the caller's global grad mode is part of the state
        before = snapshot(resnet)
        for call, raises in calls:
            if raises is None:
                call()
            else:
                with pytest.raises(raises):
                    call()
            assert_same(before, snapshot(resnet))
            assert not torch.is_grad_enabled()


def test_frozen_model_still_gives_input_gradients(resnet):
    for p in resnet.parameters():
        p.requires_grad_(False)
    g = convscope.load(resnet).gradient(images(2), {"output": np.ones((2, 4), np.float32)})["input"]
    assert np.abs(g).sum() > 0
    assert not any(p.requires_grad for p in resnet.parameters())


def test_training_mode_model_is_explained_in_eval_mode(resnet):
    x = images(2)
    want = resnet.eval()(torch.from_numpy(x)).detach().numpy()
    resnet.train()
    np.testing.assert_allclose(convscope.load(resnet).forward(x), want, rtol=1e-5)
    assert resnet.training


@pytest.mark.parametrize("bad, error, match", [
    (np.zeros((3, 16, 16), np.float32), ValueError, r"'x' parameter of forward must be a 4-d array .* Got shape \(3, 16, 16\)"),
    (np.zeros((1, 1, 16, 16), np.float32), ValueError, "must be an array with 3 channels"),
    (np.zeros((1, 16, 16, 3), np.float32), ValueError, "channels last"),
    (np.zeros((1, 3, 16, 16), np.uint8), TypeError, "floating-point .* Got dtype uint8"),
    (np.full((1, 3, 16, 16), np.inf, np.float32), ValueError, "finite .* Got 768 non-finite"),
    ([[1.0]], ValueError, "4-d array"),
])
def test_bad_input(resnet, bad, error, match):
    with pytest.raises(error, match=match):
        convscope.load(resnet).forward(bad)


def test_bad_names_and_seeds(resnet):
    backend = convscope.load(resnet)
    x = images(2)
    with pytest.raises(ValueError, match=r"'layers' parameter of activations must be a known layer name\. Got 'layer3' instead; closest: layer2, layer1"):
        backend.activations(x, ["layer3"])
    with pytest.raises(ValueError, match=r"'rule' parameter of gradient must be one of 'standard', 'guided', 'deconvnet'"):
        backend.gradient(x, {"output": np.ones((2, 4), np.float32)}, rule="Guided")
    with pytest.raises(ValueError, match=r"'seeds' parameter of gradient must be shaped like 'layer1', \(2, 8, 16, 16\)"):
        backend.gradient(x, {"layer1": np.ones((2, 8, 8, 8), np.float32)})
    with pytest.raises(ValueError, match="known layer name"):
        backend.weights("fc2")
    assert backend.weights("fc")["weight"].shape == (4, 16)


def test_model_returning_a_dict_needs_select():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3)

        def forward(self, x):
            y = self.conv(x).mean((2, 3))
            return {"logits": y, "aux": -y}

    x = images(1)
    with pytest.raises(TypeError, match="pass select="):
        convscope.load(TwoHeads()).forward(x)
    model = TwoHeads()
    np.testing.assert_allclose(convscope.load(model, select="aux").forward(x),
                               -model(torch.from_numpy(x))["logits"].detach().numpy(), rtol=1e-6)


def test_float64_model_returns_float32():
    model = TinyResNet().double().eval()
    out = convscope.load(model).forward(images(1))
    assert out.dtype == np.float32 and out.shape == (1, 4)


def test_nan_made_inside_the_model_is_reported_not_rendered():
    class Unstable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 2, 3)

        def forward(self, x):
            return torch.log(self.conv(x) - 100).mean((2, 3))  # log of negatives: NaN

    backend = convscope.load(Unstable())
    x = images(1)
    with pytest.raises(FloatingPointError, match="forward: the model produced 2 non-finite values in the output"):
        backend.forward(x)
    with pytest.raises(FloatingPointError, match="non-finite values in 'output'"):
        backend.gradient(x, {"output": np.ones((1, 2), np.float32)}, at=["output"])


def test_one_backend_shared_by_threads_gives_the_same_answers(resnet):
    from concurrent.futures import ThreadPoolExecutor

    backend = convscope.load(resnet)
    xs = [images(2, seed=s) for s in range(8)]
    seeds = np.ones((2, 4), np.float32)
    want = [backend.gradient(x, {"output": seeds}, rule="guided")["input"] for x in xs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda x: backend.gradient(x, {"output": seeds}, rule="guided")["input"], xs * 3))
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, want[i % 8])
    assert all(not m.training for m in resnet.modules())
