"""The torch backend's channels-last forward passes (backends/torch/_layout.py): large CPU
batches run in that layout and give the model's own NCHW numbers; a model that cannot take it
runs in NCHW from its first failure on, and says so; gradients stay in NCHW."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import convscope  # noqa: E402
from convscope import attribution as A  # noqa: E402
from convscope.backends.torch._layout import MIN_BATCH  # noqa: E402

X = convscope.data.shapes(MIN_BATCH + 2, seed=3).images.astype(np.float32)


def _loaded(model):
    """``convscope.load(model)`` with its probes run (they call the model too)."""
    backend = convscope.load(model)
    backend.layers()
    backend.forward(X[:1])
    return backend


def _layouts(module):
    """A pre-hook on ``module`` recording, per call, whether its input was channels-last."""
    seen = []

    def hook(_, args):
        seen.append(args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous())
    return seen, module.register_forward_pre_hook(hook)


class Flattening(torch.nn.Module):
    """A VGG-style head that views a feature map flat: a view needs NCHW strides."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 64 * 64, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        return self.fc(y.view(y.size(0), -1))


def _reference(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def test_large_cpu_batches_run_channels_last_with_the_models_own_numbers():
    model = convscope.data.demo_model("torch").eval()
    backend = _loaded(model)
    seen, hook = _layouts(model.conv1)
    try:
        big, small = backend.forward(X), backend.forward(X[:MIN_BATCH - 1])
        acts = backend.activations(X, ["relu2", "output"])
    finally:
        hook.remove()
    assert seen == [True, False, True]
    want = _reference(model, X)
    np.testing.assert_allclose(big, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    np.testing.assert_array_equal(small, _reference(model, X[:MIN_BATCH - 1]))
    assert acts["relu2"].flags.c_contiguous and acts["relu2"].shape == (len(X), 32, 32, 32)
    np.testing.assert_allclose(acts["output"], want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert backend.choices == {} and "layout" not in A.occlusion(backend, X, 0, window=16, stride=16).info.get("choices", {})


def test_gradient_passes_stay_nchw_and_equal_autograd_exactly():
    model = convscope.data.demo_model("torch").eval()
    backend = _loaded(model)
    seen, hook = _layouts(model.conv1)
    try:
        got = backend.gradient(X, {"output": np.ones((len(X), 4), np.float32)})["input"]
    finally:
        hook.remove()
    xt = torch.from_numpy(X.copy()).requires_grad_()
    want = torch.autograd.grad(model(xt).sum(), xt)[0].numpy()
    assert seen == [False]
    np.testing.assert_array_equal(got, want)


def test_a_model_that_refuses_channels_last_runs_nchw_from_then_on_and_says_so():
    model = Flattening().eval()
    hooks_before = len(model._forward_pre_hooks)
    backend = convscope.load(model)
    got = backend.forward(X)
    np.testing.assert_array_equal(got, _reference(model, X))
    assert "NCHW" in backend.choices["layout"] and "view size" in backend.choices["layout"]
    seen, hook = _layouts(model.conv)
    try:
        backend.forward(X)
        result = A.occlusion(backend, X[:1], 0, window=32, stride=32)
    finally:
        hook.remove()
    assert not any(seen) and seen  # no second channels-last try
    assert result.info["choices"]["layout"] == backend.choices["layout"]
    assert convscope.load(model).choices["layout"] == backend.choices["layout"]  # the memoised module keeps it
    assert not model.training and len(model._forward_pre_hooks) == hooks_before
    assert all(p.requires_grad for p in model.parameters())


def test_a_model_that_fails_in_both_layouts_raises_its_nchw_error_and_keeps_channels_last():
    model = convscope.data.demo_model("torch").eval()
    backend = _loaded(model)
    calls = []

    def hook(_, args):
        calls.append(args[0].is_contiguous())
        raise RuntimeError(f"broken model, contiguous={args[0].is_contiguous()}")
    handle = model.conv1.register_forward_pre_hook(hook)
    try:
        with pytest.raises(RuntimeError, match="contiguous=True"):
            backend.forward(X)
    finally:
        handle.remove()
    assert calls == [False, True]  # channels-last, then NCHW once
    assert backend.choices == {} and not model.training
    seen, hook = _layouts(model.conv1)
    try:
        backend.forward(X)
    finally:
        hook.remove()
    assert seen == [True]


def test_an_error_that_is_not_a_runtime_error_is_raised_at_once():
    model = convscope.data.demo_model("torch").eval()
    backend = _loaded(model)
    calls = []

    def hook(_, args):
        calls.append(1)
        raise KeyError("not the layout's doing")
    handle = model.conv1.register_forward_pre_hook(hook)
    try:
        with pytest.raises(KeyError):
            backend.forward(X)
    finally:
        handle.remove()
    assert calls == [1]


@pytest.mark.parametrize("name", ["mobilenet", "convnext", "shufflenet", "vit", "densenet", "padded"])
def test_modern_architectures_give_their_nchw_numbers_in_channels_last(name):
    """Depthwise and grouped convs, channel shuffles, LayerNorm over permuted maps, patch
    embeddings, concatenation: channels-last forward passes keep each model's NCHW numbers."""
    import onnx_exports

    torch.manual_seed(0)
    model = onnx_exports.modules()[name]().eval()
    x = np.random.default_rng(0).random((MIN_BATCH + 1, 3, onnx_exports.SIZE, onnx_exports.SIZE), dtype=np.float32)
    backend = convscope.load(model)
    got, want = backend.forward(x), _reference(model, x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    assert "layout" not in backend.choices  # each of them takes the layout
