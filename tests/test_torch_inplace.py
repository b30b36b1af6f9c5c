"""Any combination of layers in ``wrt`` / ``at``, in-place or not, gives autograd's values.

The net has in-place ReLUs (one right after the conv it rectifies), a residual ``+=`` on a
container's output, a container returning its last child's (in-place) output and a ReLU module used twice. The
reference is plain autograd on a copy of the model with every in-place operation turned
off, outputs captured by hooks in the test, so every captured tensor is its own value."""
import copy
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import convscope  # noqa: E402


class InPlaceNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inplace = True
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU(inplace=True)
        self.block = nn.Sequential(nn.Conv2d(6, 6, 3, padding=1), nn.BatchNorm2d(6))
        self.shared = nn.ReLU(inplace=True)
        self.tail = nn.Sequential(nn.Conv2d(6, 4, 3, stride=2, padding=1), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.relu1(self.conv1(x))
        y = self.block(x)
        if self.inplace:
            y += x
        else:
            y = y + x
        y = self.shared(y - 0.3)
        z = self.shared(self.tail(y) - 0.1)
        return self.fc(self.pool(z).flatten(1))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = InPlaceNet().eval()
    bn = model.block[1]
    bn.running_mean.uniform_(-0.2, 0.2)
    bn.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)


LAYERS = ["conv1", "relu1", "block.0", "block.1", "block", "shared", "tail.0", "tail.1", "tail", "shared#2", "pool", "fc"]


def reference(model, x, seeds, wrt):
    """(gradients at ``wrt``, forward values) by plain autograd on an out-of-place copy."""
    ref = copy.deepcopy(model)
    ref.inplace = False
    for m in ref.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    modules = dict(ref.named_modules())
    captured, handles = {}, []
    for name in dict.fromkeys([*seeds, *wrt]):
        if name in ("input", "output"):
            continue
        base, _, call = name.partition("#")
        count = []

        def hook(m, i, o, name=name, want=int(call or 1), count=count):
            count.append(1)
            if len(count) == want:
                captured[name] = o
        handles.append(modules[base].register_forward_hook(hook))
    try:
        with torch.enable_grad():
            xt = torch.from_numpy(x).requires_grad_(True)
            captured["input"] = xt
            captured["output"] = ref(xt)
            grads = torch.autograd.grad([captured[n] for n in seeds], [captured[n] for n in wrt],
                                        [torch.from_numpy(s) for s in seeds.values()], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    grads = [np.zeros(tuple(captured[n].shape), np.float32) if g is None else g.numpy() for n, g in zip(wrt, grads)]
    return dict(zip(wrt, grads)), {n: t.detach().numpy() for n, t in captured.items()}


def test_the_layer_list_is_the_one_tested(net):
    names = [r.name for r in convscope.load(net).layers()]
    assert sorted(names) == sorted(LAYERS)


def check(backend, net, x, seeds, wrt):
    got = backend.gradient(x, seeds, wrt=wrt)
    want, values = reference(net, x, seeds, wrt)
    for n in wrt:
        np.testing.assert_allclose(got[n], want[n], rtol=1e-4, atol=1e-6, err_msg=f"gradient at {n!r}, wrt={wrt}")
        np.testing.assert_allclose(got.activations[n], values[n], rtol=1e-5, atol=1e-6,
                                   err_msg=f"activations[{n!r}], wrt={wrt}")
    acts = backend.activations(x, wrt)
    for n in wrt:
        np.testing.assert_allclose(acts[n], values[n], rtol=1e-5, atol=1e-6, err_msg=f"activations({n!r}), {wrt}")


@pytest.mark.parametrize("pair", list(itertools.combinations(LAYERS, 2)), ids="+".join)
def test_every_pair_seeded_at_the_output(net, x, pair):
    seeds = {"output": np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)}
    check(convscope.load(net), net, x, seeds, list(pair))


@pytest.mark.parametrize("pair", list(itertools.permutations(LAYERS, 2)), ids="->".join)
def test_every_pair_seeded_at_a_layer(net, x, pair):
    backend = convscope.load(net)
    at, wrt = pair
    shape = backend.activations(x, [at])[at].shape
    seeds = {at: np.random.default_rng(2).standard_normal(shape).astype(np.float32)}
    check(backend, net, x, seeds, [wrt, "input"])


@pytest.mark.parametrize("triple", [("conv1", "relu1", "block"), ("tail.0", "tail.1", "tail"),
                                    ("block", "shared", "shared#2"), ("relu1", "tail", "fc"),
                                    ("block.0", "block.1", "block"), ("block.0", "shared", "pool")], ids="+".join)
def test_triples(net, x, triple):
    seeds = {"output": np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)}
    check(convscope.load(net), net, x, seeds, list(triple))
    check(convscope.load(net), net, x, seeds, ["input", *triple])


def test_the_reported_case_conv_and_its_in_place_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True)).eval()
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    s = np.random.default_rng(1).standard_normal((1, 4, 6, 6)).astype(np.float32)
    g = convscope.load(model).gradient(x, {"1": s}, wrt=["0", "1"])
    pre = model[0](torch.from_numpy(x)).detach().numpy()
    np.testing.assert_array_equal(g["1"], s)
    np.testing.assert_allclose(g["0"], s * (pre > 0), rtol=1e-6)
    np.testing.assert_allclose(g.activations["1"], np.maximum(pre, 0), rtol=1e-6)
    np.testing.assert_allclose(g.activations["0"], pre, rtol=1e-6)
