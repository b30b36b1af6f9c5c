"""Functional activations as layers on the torch backend (``backends/torch/_functional.py``).

``F.relu(self.features(x), inplace=True)`` in a ``forward`` is the layer ``"features:relu"``,
as the ONNX export's Relu node is a layer: records, data flow, activations and gradients at
it, the guided/deconvnet rules through it, the model left as it was, and Grad-CAM's default
layer equal to the ONNX export's. References are written out with plain torch autograd.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import convscope  # noqa: E402

SIZE = 16


def _randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # signed pre-activations, so the ReLUs matter
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
    return model.eval()


class DenseHead(nn.Module):
    """torchvision's DenseNet head: the final ReLU and pooling are functional."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                      nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12))
        self.classifier = nn.Linear(12, 5)

    def forward(self, x):
        out = F.relu(self.features(x), inplace=True)
        out = torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1)
        return self.classifier(out)


def dense_reference(model, x, relu=F.relu):
    """{tensor name: tensor} of DenseHead's forward, written out (``relu`` for each ReLU)."""
    f = model.features
    h0 = f[1](f[0](x))
    f4 = f[4](f[3](relu(h0)))
    a = relu(f4)
    return {"features": f4, "features:relu": a, "output": model.classifier(torch.flatten(a.mean((2, 3), True), 1))}


class TwoOps(nn.Module):
    """``torch.relu`` and ``F.silu`` between modules."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.conv2(torch.relu(self.conv1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.silu(x), 1), 1))


def two_ops_reference(model, x):
    c1 = model.conv1(x)
    r = torch.relu(c1)
    c2 = model.conv2(r)
    s = F.silu(c2)
    return {"conv1": c1, "conv1:relu": r, "conv2": c2, "conv2:silu": s,
            "output": model.fc(s.mean((2, 3)))}


class SameLayer(nn.Module):
    """Two ReLU calls and a sigmoid on one layer's output, after an ``nn.ReLU`` module on it
    (whose own ``F.relu`` call is that module, not a functional layer)."""

    def __init__(self):
        super().__init__()
        self.conv, self.act = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.head_a, self.head_b = nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.conv(x)
        m = self.act(h)
        p = torch.relu(h)
        q = h.relu() * torch.sigmoid(h)
        y = self.head_a(p) + self.head_b(q) + m
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def same_layer_reference(model, x):
    h = model.conv(x)
    m, p, q1, s = torch.relu(h), torch.relu(h), torch.relu(h), torch.sigmoid(h)
    y = model.head_a(p) + model.head_b(q1 * s) + m
    return {"conv": h, "act": m, "conv:relu": p, "conv:relu#2": q1, "conv:sigmoid": s,
            "output": model.fc(y.mean((2, 3)))}


MODELS = {"dense": (DenseHead, dense_reference), "two_ops": (TwoOps, two_ops_reference),
          "same_layer": (SameLayer, same_layer_reference)}
FUNCTIONAL = {"dense": ["features:relu"], "two_ops": ["conv1:relu", "conv2:silu"],
              "same_layer": ["conv:relu", "conv:relu#2", "conv:sigmoid"]}


def make(arch, seed=0):
    torch.manual_seed(seed)
    return _randomise(MODELS[arch][0](), seed)


def images(n=2, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)


def reference(arch, model, x):
    """The reference tensors, each kept for autograd (``x`` requires grad)."""
    with torch.enable_grad():
        return MODELS[arch][1](model, x)


def rel_l2(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-30))


def close(got, want, tol=1e-5):
    want = want.detach().numpy() if isinstance(want, torch.Tensor) else want
    assert rel_l2(got, want) < tol, rel_l2(got, want)


# --------------------------------------------------------------------------- records
def test_records_name_order_inputs_shapes_layouts():
    recs = {a: convscope.load(make(a), input_shape=(3, SIZE, SIZE)).layers() for a in MODELS}
    names = {a: [r.name for r in rs] for a, rs in recs.items()}
    assert names["dense"] == ["features.0", "features.1", "features.2", "features.3", "features.4", "features",
                              "features:relu", "classifier"]
    assert names["two_ops"] == ["conv1", "conv1:relu", "conv2", "conv2:silu", "fc"]
    assert names["same_layer"] == ["conv", "act", "conv:relu", "conv:relu#2", "conv:sigmoid", "head_a", "head_b",
                                   "fc"]
    by = {a: {r.name: r for r in rs} for a, rs in recs.items()}
    want = {  # name: (kind, op, shape, inputs)
        ("dense", "features:relu"): ("relu", "relu", (12, SIZE, SIZE), ("features",)),
        ("dense", "classifier"): ("linear", "Linear", (5,), ("features:relu",)),
        ("two_ops", "conv1:relu"): ("relu", "relu", (6, SIZE, SIZE), ("conv1",)),
        ("two_ops", "conv2"): ("conv", "Conv2d", (8, SIZE // 2, SIZE // 2), ("conv1:relu",)),
        ("two_ops", "conv2:silu"): ("activation", "silu", (8, SIZE // 2, SIZE // 2), ("conv2",)),
        ("two_ops", "fc"): ("linear", "Linear", (4,), ("conv2:silu",)),
        ("same_layer", "act"): ("relu", "ReLU", (6, SIZE, SIZE), ("conv",)),
        ("same_layer", "conv:relu#2"): ("relu", "relu", (6, SIZE, SIZE), ("conv",)),
        ("same_layer", "conv:sigmoid"): ("activation", "sigmoid", (6, SIZE, SIZE), ("conv",)),
        ("same_layer", "head_a"): ("conv", "Conv2d", (6, SIZE, SIZE), ("conv:relu",)),
        ("same_layer", "head_b"): ("conv", "Conv2d", (6, SIZE, SIZE), ("conv:relu#2", "conv:sigmoid")),
    }
    for (arch, name), (kind, op, shape, inputs) in want.items():
        r = by[arch][name]
        assert (r.kind, r.op, r.shape, r.inputs) == (kind, op, shape, inputs), r
        assert r.layout == ("vector" if len(shape) == 1 else "chw"), r
    # modules' records are as before: a module's own F.relu call is no functional layer
    assert by["dense"]["features"].inputs == ("features.4",) and by["dense"]["features.2"].op == "ReLU"


# --------------------------------------------------------------------------- values
@pytest.mark.parametrize("arch", list(MODELS))
def test_activations_at_functional_layers(arch):
    model, x = make(arch), images()
    b = convscope.load(model, input_shape=(3, SIZE, SIZE))
    with torch.no_grad():
        ref = MODELS[arch][1](model, torch.from_numpy(x))
    names = FUNCTIONAL[arch]
    got = b.activations(x, names)
    for n in names:
        close(got[n], ref[n])
    anchor = names[0].split(":")[0]  # asked with its anchor, and the anchor alone: both as plain torch
    both = b.activations(x, [anchor, names[-1], "output"])
    close(both[anchor], ref[anchor])
    close(both[names[-1]], ref[names[-1]])
    close(both["output"], ref["output"])
    close(b.activations(x, [anchor])[anchor], ref[anchor])


@pytest.mark.parametrize("arch", list(MODELS))
def test_gradients_wrt_functional_layers(arch):
    """Gradients of an output seed at the functional layers (alone and with the input, so
    with and without a graph before them), against autograd on the written-out forward."""
    model, x = make(arch), images()
    b = convscope.load(model, input_shape=(3, SIZE, SIZE))
    seed = np.random.default_rng(2).standard_normal((len(x), b.forward(x).shape[1])).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = reference(arch, model, xt)
    names = FUNCTIONAL[arch]
    want = torch.autograd.grad(ref["output"], [xt, *(ref[n] for n in names)], torch.from_numpy(seed))
    for wrt in (names, ["input", *names], names[-1:]):
        g = b.gradient(x, {"output": seed}, wrt=wrt)
        for n in wrt:
            close(g[n], want[0 if n == "input" else 1 + names.index(n)])
        close(g.outputs, ref["output"])


@pytest.mark.parametrize("arch", list(MODELS))
def test_gradients_seeded_at_functional_layers(arch):
    model, x = make(arch), images()
    b = convscope.load(model, input_shape=(3, SIZE, SIZE))
    names = FUNCTIONAL[arch]
    anchor = names[0].split(":")[0]
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = reference(arch, model, xt)
    rng = np.random.default_rng(3)
    seeds = {n: rng.standard_normal((len(x), *ref[n].shape[1:])).astype(np.float32) for n in names}
    want = torch.autograd.grad([ref[n] for n in names], [xt, ref[anchor]], [torch.from_numpy(seeds[n]) for n in names],
                               retain_graph=True)
    g = b.gradient(x, seeds, wrt=["input", anchor])
    close(g["input"], want[0])
    close(g[anchor], want[1])
    for n in names:
        close(g.activations[n], ref[n])
    # a seeds callable sees the functional layer's activations
    g2 = b.gradient(x, lambda acts: {names[0]: np.ones_like(acts[names[0]])}, at=[names[0]], wrt=["input"])
    close(g2["input"], torch.autograd.grad(ref[names[0]].sum(), xt)[0])


class _Guided(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g):
        (out,) = ctx.saved_tensors
        return g.clamp(min=0) * (out > 0)


class _Deconv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):
        return g.clamp(min=0)


@pytest.mark.parametrize("rule, fn", [("guided", _Guided), ("deconvnet", _Deconv)])
def test_rules_reach_functional_relus(rule, fn):
    """Guided and deconvnet apply to the functional ReLU (and the module one) whether or not
    the functional layer is asked for."""
    model, x = make("dense"), images()
    b = convscope.load(model, input_shape=(3, SIZE, SIZE))
    seed = np.eye(5, dtype=np.float32)[[1, 3]]
    xt = torch.from_numpy(x).requires_grad_(True)
    with torch.enable_grad():
        ref = dense_reference(model, xt, relu=fn.apply)
    want = torch.autograd.grad(ref["output"], [xt, ref["features:relu"]], torch.from_numpy(seed))
    close(b.gradient(x, {"output": seed}, rule=rule)["input"], want[0])
    g = b.gradient(x, {"output": seed}, wrt=["input", "features:relu"], rule=rule)
    close(g["input"], want[0])
    close(g["features:relu"], want[1])
    close(g.activations["features:relu"], ref["features:relu"])


# --------------------------------------------------------------------------- the model is left alone
def test_model_untouched_and_mode_only_when_asked(monkeypatch):
    model = make("same_layer")
    model.train()
    for p in model.head_b.parameters():
        p.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    b = convscope.load(model, input_shape=(3, SIZE, SIZE))
    x = images()
    seeds = {"output": np.ones((len(x), 3), np.float32)}
    b.layers()
    b.activations(x, ["conv:relu#2", "conv"])
    b.gradient(x, seeds, wrt=["input", "conv:sigmoid"], rule="guided")
    b.gradient(x, {"conv:relu": np.ones((len(x), 6, SIZE, SIZE), np.float32)}, wrt=["conv"])
    with pytest.raises(ValueError):  # a failing pass leaves nothing behind either
        b.gradient(x, {"conv:relu": np.ones((len(x), 5, SIZE, SIZE), np.float32)}, wrt=["conv"])
    assert torch._C._len_torch_function_stack() == 0
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    for m in model.modules():
        assert m.training
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks), m
    assert [p.requires_grad for p in model.parameters()] == [True, True, True, True, False, False, True, True]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())

    import convscope.backends.torch._capture as capture_module

    def refuse(*args, **kwargs):
        raise AssertionError("the functional mode was installed for module layers")

    monkeypatch.setattr(capture_module, "functional_mode", refuse)
    b.activations(x, ["conv", "head_b"])
    b.gradient(x, seeds, wrt=["input", "conv"])
    b.forward(x)
    with pytest.raises(AssertionError):
        b.activations(x, ["conv:relu"])


# --------------------------------------------------------------------------- Grad-CAM and ONNX
def test_grad_cam_default_layer_matches_reference_and_onnx():
    model, x = make("dense"), images(3)
    b = convscope.load(model, input_shape=(3, SIZE, SIZE))
    target = np.array([0, 2, 4])
    got = convscope.grad_cam(b, x, target)
    assert got.info["layer"] == "features:relu"
    xt = torch.from_numpy(x)
    ref = reference("dense", model, xt)
    a = ref["features:relu"]
    (g,) = torch.autograd.grad(ref["output"][torch.arange(3), torch.from_numpy(target)].sum(), a)
    want = torch.relu((g.mean((2, 3), keepdim=True) * a).sum(1))
    close(got.info["layer_maps"], want)

    buffer = io.BytesIO()
    torch.onnx.export(model, torch.zeros(1, 3, SIZE, SIZE), buffer, opset_version=17, dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
    onnx_backend = convscope.load(buffer.getvalue())
    theirs = convscope.grad_cam(onnx_backend, x, target)
    assert rel_l2(theirs.maps, got.maps) < 1e-4, rel_l2(theirs.maps, got.maps)
    acts = onnx_backend.activations(x, [theirs.info["layer"]])[theirs.info["layer"]]
    close(acts, a, 1e-4)  # the same logical tensor: after the ReLU


def test_in_place_relu_whose_result_is_ignored():
    """``torch.relu_(h)`` with the result dropped: the layer is ``h`` after the op, and the
    gradient at it reaches the input through the tensor the code goes on with."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.conv2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            h = self.conv(x)
            torch.relu_(h)
            return self.fc(self.conv2(h).mean((2, 3)))

    torch.manual_seed(0)
    model, x = Net().eval(), images()
    b = convscope.load(model, input_shape=(3, SIZE, SIZE))
    assert [r.name for r in b.layers()] == ["conv", "conv:relu", "conv2", "fc"]
    assert next(r for r in b.layers() if r.name == "conv2").inputs == ("conv:relu",)
    xt = torch.from_numpy(x).requires_grad_(True)
    with torch.enable_grad():
        r = torch.relu(model.conv(xt))
        out = model.fc(model.conv2(r).mean((2, 3)))
    seed = np.ones((len(x), 2), np.float32)
    want = torch.autograd.grad(out, [xt, r], torch.from_numpy(seed))
    for wrt in (["conv:relu"], ["input", "conv:relu"]):
        g = b.gradient(x, {"output": seed}, wrt=wrt)
        close(g["conv:relu"], want[1])
        close(g.activations["conv:relu"], r)
    close(g["input"], want[0])
    close(b.activations(x, ["conv:relu"])["conv:relu"], r)
