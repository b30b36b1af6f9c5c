"""Guided and deconvnet rules on LeakyReLU, PReLU and ReLU6 in the torch backend, against a
reference written out with plain autograd, and against the ONNX backend on the same model.

The reference rectifier: y = relu(a) + (f(a) - relu(a)).detach() has the forward value of the
unit f and the backward mask [a > 0]; a hook on y clips the arriving gradient to g > 0
(guided); deconvnet passes max(g, 0) through whatever a is: y = a + (f(a) - a).detach()."""
import io
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
from torch import nn  # noqa: E402

import convscope  # noqa: E402


class Rectified(nn.Module):
    def __init__(self, unit, inplace=False):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = {"leaky": lambda: nn.LeakyReLU(0.2, inplace=inplace), "prelu": lambda: nn.PReLU(6, 0.3),
                     "relu6": lambda: nn.ReLU6(inplace=inplace)}[unit]()
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4, 3)
        self.unit = unit
        if unit == "prelu":
            with torch.no_grad():
                self.act1.weight.copy_(torch.linspace(-0.5, 0.5, 6))  # a negative slope too

    def forward(self, x):
        x = self.act1(self.conv1(x) * 10)  # scaled: ReLU6 inputs pass 6
        x = F.leaky_relu(self.conv2(x), 0.1)
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


def ref_unit(a, f, rule):
    if rule == "deconvnet":
        y = a + (f(a) - a).detach()
    else:
        y = torch.relu(a) + (f(a) - torch.relu(a)).detach()
        if f is F.relu6 or getattr(f, "upper", None):
            y = y - (a > 6).float() * (a - a.detach())  # ReLU6: closed above 6 as well
    if rule != "standard" and y.requires_grad:
        y.register_hook(lambda g: g.clamp(min=0))
    return y


def reference(model, x, seed, rule):
    xt = torch.from_numpy(x).requires_grad_(True)
    first = {"leaky": lambda a: F.leaky_relu(a, 0.2), "prelu": lambda a: F.prelu(a, model.act1.weight),
             "relu6": F.relu6}[model.unit]
    a = model.conv1(xt) * 10
    h = ref_unit(a, first, rule) if rule != "standard" else first(a)
    b = model.conv2(h)
    h = ref_unit(b, lambda t: F.leaky_relu(t, 0.1), rule) if rule != "standard" else F.leaky_relu(b, 0.1)
    out = model.fc(F.adaptive_avg_pool2d(h, 2).flatten(1))
    (g,) = torch.autograd.grad(out, xt, torch.from_numpy(seed))
    return g.numpy(), a.detach().numpy()


X = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
SEED = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)


@pytest.mark.parametrize("unit", ["leaky", "prelu", "relu6"])
@pytest.mark.parametrize("rule", ["standard", "guided", "deconvnet"])
def test_rules_match_the_written_out_reference(unit, rule):
    model = Rectified(unit).eval()
    want, pre = reference(model, X, SEED, rule)
    if unit == "relu6":
        assert (pre > 6).mean() > 0.05  # the upper mask is exercised
    got = convscope.load(model).gradient(X, {"output": SEED}, rule=rule)["input"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    if rule != "standard":
        standard = convscope.load(model).gradient(X, {"output": SEED})["input"]
        assert not np.allclose(got, standard)


@pytest.mark.parametrize("unit", ["leaky", "relu6"])
def test_in_place_units_follow_the_rule_too(unit):
    model = Rectified(unit, inplace=True).eval()
    for rule in ("guided", "deconvnet"):
        want, _ = reference(model, X, SEED, rule)
        got = convscope.load(model).gradient(X, {"output": SEED}, rule=rule)["input"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("unit", ["leaky", "prelu"])
def test_torch_and_onnx_agree_on_guided_maps(unit):
    pytest.importorskip("onnxruntime")
    model = Rectified(unit).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), buffer, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    onnx_backend = convscope.load(buffer.getvalue())
    for rule in ("guided", "deconvnet"):
        t = convscope.load(model).gradient(X, {"output": SEED}, rule=rule)["input"]
        o = onnx_backend.gradient(X, {"output": SEED}, rule=rule)["input"]
        np.testing.assert_allclose(t, o, rtol=1e-4, atol=1e-5)
