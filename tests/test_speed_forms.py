"""The faster forms chosen for speed compute what they replace, against independent references:

- the ONNX adjoint multiplies by a ReLU's (or a max pool's winner) mask cast to a number instead
  of a Where: the gradients equal torch autograd (and Captum's GuidedBackprop for the guided
  rule) on a ReLU / max-pool network with ties and exact zeros, and no Where is left in the
  backward graph of such a network;
- torch max pools that nothing differentiates take the no-index channels-last path and return
  PyTorch's own values, NaN, -inf and ties included;
- the noise tunnel's in-place draws are the documented ``x + gaussian([seed, i]) * sigma`` (Box-Muller,
  written out in float64 in tests/_box_muller.py).
"""
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import convscope  # noqa: E402
from onnx_exports import export  # noqa: E402
from _box_muller import box_muller  # noqa: E402
from convscope.backend import INPUT, OUTPUT  # noqa: E402
from convscope.backends.torch._pool import MIN_ELEMENTS, channels_last_pool_mode  # noqa: E402

F = torch.nn.functional


def _net():
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 8, 3, padding=1),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()


def _images():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (3, 3, 16, 16)).astype(np.float32) / 2  # ties in every pool window, exact zeros
    x[2] = rng.standard_normal((3, 16, 16)).astype(np.float32)
    return x


@pytest.mark.parametrize("rule", ["standard", "guided"])
def test_onnx_mask_products_equal_torch_and_leave_no_where(rule):
    net = _net()
    backend = convscope.load(export(net, shape=(3, 16, 16)))
    x = _images()
    target = np.array([1, 3, 0])
    seed = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    if rule == "guided":  # not linear in the seed: one class each, as Captum explains it
        seed = np.eye(5, dtype=np.float32)[target]
    got = backend.gradient(x, {OUTPUT: seed}, rule=rule)[INPUT]
    xt = torch.from_numpy(x).requires_grad_(True)
    if rule == "standard":
        with torch.enable_grad():
            (want,) = torch.autograd.grad(net(xt), xt, torch.from_numpy(seed))
    else:
        GuidedBackprop = pytest.importorskip("captum.attr").GuidedBackprop

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = GuidedBackprop(net).attribute(xt, target=torch.from_numpy(target))
    want = want.detach().numpy()
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    ops = {n.op_type for plan in backend._plans.values() for n in plan.backward}
    assert "Where" not in ops and {"CastLike", "Mul"} <= ops


def test_torch_pools_nothing_differentiates_return_pytorchs_values():
    torch.manual_seed(0)
    x = torch.randn(2, 64, 33, 33)
    x[0, 0, 1, 1] = float("nan")
    x[1, 3, 4:9, 4:9] = float("-inf")
    x[1, 5] = 1.0  # ties everywhere
    assert x.numel() >= MIN_ELEMENTS
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=3, stride=2, ceil_mode=True)):
        want = F.max_pool2d(x, **kw)
        for context in (torch.inference_mode, torch.no_grad):
            with context(), channels_last_pool_mode(torch):
                got = F.max_pool2d(x, **kw)
            assert got.grad_fn is None and got.is_contiguous()
            assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num()), kw
        with channels_last_pool_mode(torch):  # input without grad, grad on: the same path
            assert torch.equal(F.max_pool2d(x, **kw).nan_to_num(), want.nan_to_num())


def test_noise_tunnel_draws_are_the_documented_noise():
    net = _net()
    x = _images()
    got = convscope.attribution.noise_tunnel(net, x, 1, samples=3, stdev=0.2, seed=4, perturbations_per_eval=2)
    flat = x.reshape(len(x), -1)
    sigma = (0.2 * (flat.max(axis=1) - flat.min(axis=1))).astype(np.float32)[:, None, None, None]
    noise = np.stack([box_muller([4, i], x.shape).astype(np.float32) * sigma for i in range(3)])
    given = convscope.attribution.noise_tunnel(net, x, 1, noise=noise, perturbations_per_eval=3)
    np.testing.assert_allclose(got.attributions, given.attributions, rtol=1e-5, atol=1e-7)
    xt = torch.from_numpy((x[None] + noise).reshape(-1, *x.shape[1:])).requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(net(xt)[:, 1].sum(), xt)
    want = np.abs(g.numpy()).reshape(3, *x.shape).mean(axis=0)
    np.testing.assert_allclose(got.attributions, want, rtol=1e-5, atol=1e-7)
