"""Max pooling through the channels-last kernel gives exactly PyTorch's own results: values,
argmax indices (ties and NaN included) and gradients, for every way a model can call it."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import convscope  # noqa: E402
from convscope.backend import INPUT, OUTPUT  # noqa: E402
from convscope.backends.torch import _pool  # noqa: E402
from convscope.backends.torch._pool import MIN_ELEMENTS, channels_last_pool_mode  # noqa: E402

pytestmark = pytest.mark.backend("torch")


def inputs():
    torch.manual_seed(0)
    flat = torch.zeros(2, 64, 32, 32)
    flat[:, :, :16] = 1.0  # whole windows of equal values
    quantised = torch.randint(0, 3, (2, 64, 33, 33)).float()  # ties everywhere, odd size
    nan = torch.randn(2, 64, 32, 32)
    nan[0, 0, 1, 1] = float("nan")
    return {"flat": flat, "quantised": quantised, "nan": nan, "random": torch.randn(3, 64, 35, 37)}


SETTINGS = [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=2, ceil_mode=True),
            dict(kernel_size=2, dilation=2), dict(kernel_size=(2, 3), stride=(1, 2))]


def pooled(call, x, kw):
    if call == "functional":
        return F.max_pool2d(x, **kw), None
    if call == "with indices":
        return F.max_pool2d(x, return_indices=True, **kw)
    if call == "module":
        return torch.nn.MaxPool2d(**kw)(x), None
    return torch.max_pool2d(x, kw["kernel_size"], kw.get("stride", kw["kernel_size"]), kw.get("padding", 0),
                            kw.get("dilation", 1), kw.get("ceil_mode", False)), None


@pytest.fixture(params=["whole", "per image"])
def chunks(request, monkeypatch):
    """The batch pooled at once, or one image per chunk (as a large batch goes through)."""
    if request.param == "per image":
        monkeypatch.setattr(_pool, "CHUNK_ELEMENTS", 1)
    return request.param


@pytest.mark.parametrize("call", ["functional", "with indices", "module", "torch.max_pool2d"])
@pytest.mark.parametrize("kw", SETTINGS, ids=str)
def test_same_values_indices_and_gradients_as_pytorch(call, kw, chunks):
    for name, x in inputs().items():
        a, b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        want, want_idx = pooled(call, a, kw)
        with channels_last_pool_mode(torch):
            got, got_idx = pooled(call, b, kw)
        assert got.grad_fn.name() == "ChannelsLastMaxPoolBackward"  # the fast path ran
        seed = torch.randn_like(want)
        (grad_want,) = torch.autograd.grad(want, a, seed)
        (grad_got,) = torch.autograd.grad(got, b, seed)
        assert torch.equal(got.nan_to_num(), want.nan_to_num()) and torch.equal(got.isnan(), want.isnan()), name
        assert torch.equal(grad_got, grad_want), name
        assert got.is_contiguous() and grad_got.is_contiguous()
        if want_idx is not None:
            assert torch.equal(got_idx, want_idx), name
        with torch.inference_mode(), channels_last_pool_mode(torch):
            plain, _ = pooled(call, x, kw)
        assert torch.equal(plain.nan_to_num(), want.detach().nan_to_num()), name


def test_small_or_channels_last_inputs_keep_pytorchs_path():
    small = torch.randn(1, 4, 8, 8, requires_grad=True)
    assert small.numel() < MIN_ELEMENTS
    nhwc = torch.randn(2, 64, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    with channels_last_pool_mode(torch):
        assert F.max_pool2d(small, 2).grad_fn.name() != "ChannelsLastMaxPoolBackward"
        assert F.max_pool2d(nhwc, 2).grad_fn.name() != "ChannelsLastMaxPoolBackward"


class PoolNet(torch.nn.Module):
    """Max pools as a module, functionally, with indices feeding MaxUnpool2d, on a flat image."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.pool1 = torch.nn.MaxPool2d(2, return_indices=True)
        self.unpool = torch.nn.MaxUnpool2d(2)
        self.conv2 = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.pool2 = torch.nn.MaxPool2d(3, 2, 1)
        self.fc = torch.nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        y, idx = self.pool1(x)
        x = torch.relu(self.conv2(self.unpool(y, idx) + x))
        x = F.max_pool2d(self.pool2(x), 2)
        return self.fc(x.mean(dim=(2, 3)))


def test_backend_results_equal_plain_pytorch_bit_for_bit():
    torch.manual_seed(1)
    model = PoolNet().eval()
    x = np.zeros((8, 3, 48, 48), np.float32)
    x[:, :, 10:30, 5:40] = np.random.default_rng(0).random((8, 3, 1, 1))  # flat regions: ties
    backend = convscope.load(model)
    seeds = np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32)
    paths = []
    spy = model.pool1.register_forward_hook(lambda m, i, o: paths.append(o[0].grad_fn.name()))
    try:
        got = backend.gradient(x, {OUTPUT: seeds}, wrt=[INPUT, "pool2"])
    finally:
        spy.remove()
    assert paths == ["ChannelsLastMaxPoolBackward"]
    captured = {}
    hook = model.pool2.register_forward_hook(lambda m, i, o: captured.setdefault("pool2", o))
    try:
        xt = torch.from_numpy(x).requires_grad_(True)
        out = model(xt)
        grads = torch.autograd.grad(out, [xt, captured["pool2"]], torch.from_numpy(seeds))
    finally:
        hook.remove()
    np.testing.assert_array_equal(got.outputs, out.detach().numpy())
    np.testing.assert_array_equal(got[INPUT], grads[0].numpy())
    np.testing.assert_array_equal(got["pool2"], grads[1].numpy())
    # forward passes of 4 or more images run channels-last (backends/torch/_layout.py): the
    # model's own numbers in that layout, bit for bit
    captured.clear()
    hook = model.pool2.register_forward_hook(lambda m, i, o: captured.setdefault("pool2", o))
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))
    finally:
        hook.remove()
    np.testing.assert_array_equal(backend.forward(x), out.numpy())
    np.testing.assert_array_equal(backend.activations(x, ["pool2"])["pool2"], captured["pool2"].numpy())
