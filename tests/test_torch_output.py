"""What the torch backend explains: the scores before a final softmax (module or functional),
the probabilities when asked, one of several outputs by ``select=``; ``output`` and
``choices`` say which. References are the model's own sub-computations, written out."""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import convscope  # noqa: E402
from convscope._plugins import clear_cache  # noqa: E402

from torch_arch_models import TinyViT  # noqa: E402


def trunk():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))


class FunctionalSoftmax(nn.Module):
    def __init__(self, log=False):
        super().__init__()
        self.body, self.log = trunk(), log

    def forward(self, x):
        s = self.body(x)
        return torch.log_softmax(s, 1) if self.log else nn.functional.softmax(s, dim=1)


class MethodSoftmax(FunctionalSoftmax):
    def forward(self, x):
        return self.body(x).softmax(-1)


X = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)


def scores_grad(body, seed):
    xt = torch.from_numpy(X).requires_grad_(True)
    (g,) = torch.autograd.grad(body(xt), xt, torch.from_numpy(seed))
    return g.numpy()


@pytest.mark.parametrize("make, where", [
    (lambda: nn.Sequential(trunk(), nn.Softmax(dim=1)), "the final Softmax '1'"),
    (lambda: nn.Sequential(trunk(), nn.LogSoftmax(dim=1)), "the final LogSoftmax '1'"),
    (lambda: FunctionalSoftmax(), "the final softmax call"),
    (lambda: FunctionalSoftmax(log=True), "the final log_softmax call"),
    (lambda: MethodSoftmax(), "the final softmax call"),
])
def test_a_final_softmax_is_left_out_by_default(make, where):
    model = make().eval()
    body = model[0] if isinstance(model, nn.Sequential) else model.body
    backend = convscope.load(model)
    assert backend.output == "scores"
    scores = body(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(backend.forward(X), scores, rtol=1e-5, atol=1e-6)
    assert backend.choices["output"].startswith(where)
    assert "load(model, output='probabilities') keeps it" in backend.choices["output"]
    seed = np.random.default_rng(1).standard_normal((2, 5)).astype(np.float32)
    np.testing.assert_allclose(backend.gradient(X, {"output": seed})["input"], scores_grad(body, seed),
                               rtol=1e-4, atol=1e-6)
    kept = convscope.load(model, output="probabilities")
    assert kept.output == "probabilities" and kept.choices == {}
    np.testing.assert_allclose(kept.forward(X), model(torch.from_numpy(X)).detach().numpy(), rtol=1e-5, atol=1e-6)


def test_the_first_call_finds_the_softmax_on_a_fresh_backend():
    model = nn.Sequential(trunk(), nn.Softmax(dim=1)).eval()
    clear_cache()
    seed = np.ones((2, 5), np.float32)
    g = convscope.load(model).gradient(X, {"output": seed})  # the first pass of this backend
    np.testing.assert_allclose(g.outputs, model[0](torch.from_numpy(X)).detach().numpy(), rtol=1e-5, atol=1e-6)
    clear_cache()
    acts = convscope.load(model).activations(X, ["output", "1"])
    np.testing.assert_allclose(acts["1"].sum(1), 1, rtol=1e-5)  # the softmax layer keeps its output
    np.testing.assert_allclose(acts["output"], g.outputs, rtol=1e-6)


def test_a_softmax_inside_the_model_is_kept_and_nothing_is_chosen():
    vit = TinyViT().eval()  # attention softmax, not at the end
    backend = convscope.load(vit)
    x = np.random.default_rng(0).random((1, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(backend.forward(x), vit(torch.from_numpy(x)).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert backend.choices == {}
    plain = convscope.load(trunk().eval())
    plain.forward(X)
    assert plain.choices == {} and plain.output == "scores"


def test_a_model_without_softmax_runs_once_per_call():
    model = trunk().eval()
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        backend = convscope.load(model)
        backend.forward(X)
        backend.forward(X)
    finally:
        handle.remove()
    assert len(calls) == 2


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = trunk()

    def forward(self, x):
        s = self.body(x)
        return {"logits": s, "probs": s.softmax(1)}, -s


def test_select_picks_one_output_and_the_old_output_index_warns_once():
    model = TwoOutputs().eval()
    s = model.body(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(convscope.load(model, select=1).forward(X), -s, rtol=1e-5, atol=1e-6)

    from convscope import _renamed
    _renamed._warned.clear()  # deprecations warn once per process
    with pytest.warns(DeprecationWarning, match="select=1"):
        b = convscope.load(model, output=1)
    np.testing.assert_allclose(b.forward(X), -s, rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convscope.load(model, output=1, input_shape=(3, 8, 8))  # once only
    with pytest.raises(TypeError, match="pass select="):
        convscope.load(model).forward(X)
    with pytest.raises(TypeError, match="The 'output' parameter of convscope.load must be one of"):
        convscope.load(model, output=1.5)


def test_select_then_a_softmax_output_is_left_out():
    class Probs(TwoOutputs):
        def forward(self, x):
            s = self.body(x)
            return (s.softmax(1), s)

    model = Probs().eval()
    b = convscope.load(model, select=0)
    np.testing.assert_allclose(b.forward(X), model.body(torch.from_numpy(X)).detach().numpy(), rtol=1e-5, atol=1e-6)
    assert "softmax" in b.choices["output"]
