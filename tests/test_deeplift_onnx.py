"""DeepLift (rescale rule, Shrikumar et al. 2017) on the ONNX Runtime backend: rules of the adjoint graph.

References, none computed by the code under test: Captum's ``DeepLift`` on the same torch net,
baselines and targets; summation-to-delta (the attributions sum to f(x) - f(x0)); the torch
backend's DeepLift on the nets of tests/lrp_nets.py.
"""
import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import convscope  # noqa: E402

from onnx_models import relative  # noqa: E402
from test_lrp_onnx import TOL, _export, _images, _torch_and_onnx, small_net  # noqa: E402


def _deeplift(backend, x, baseline, target, **kwargs):
    from convscope._relevance import DeepLiftRules

    seeds = np.eye(backend.forward(x[:1]).shape[1], dtype=np.float32)[target]
    got = backend.gradient(x, {"output": seeds}, rule=DeepLiftRules(baseline=baseline, **kwargs))
    return (x - baseline) * got.grads["input"]


@pytest.mark.parametrize("smooth", [False, True])
def test_deeplift_matches_captum(smooth):
    """Captum's DeepLift on the same torch net, baselines and targets. (Captum's own summation-to-delta
    breaks where two of its nonlinear modules touch, ReLU then MaxPool: this net keeps them apart, and
    the test checks that Captum's delta is ~0 on it.)"""
    torch = pytest.importorskip("torch")
    captum = pytest.importorskip("captum.attr")
    nn = torch.nn
    torch.manual_seed(1)
    units = (nn.Tanh(), nn.Sigmoid()) if smooth else (nn.ReLU(), nn.LeakyReLU(0.1))
    net = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                        nn.AvgPool2d(2), nn.Conv2d(8, 8, 3, padding=1), units[0], nn.Flatten(), nn.Linear(8 * 16, 16),
                        units[1], nn.Linear(16, 4)).eval()
    backend = convscope.load(_export(torch, net))
    rng = np.random.default_rng(4)
    x, base = rng.random((3, 3, 16, 16), dtype=np.float32), rng.random((3, 3, 16, 16), dtype=np.float32) * 0.5
    target = [0, 2, 3]
    with pytest.warns(UserWarning):  # Captum warns that it sets hooks
        want, delta = captum.DeepLift(net).attribute(torch.tensor(x), baselines=torch.tensor(base), target=target,
                                                     return_convergence_delta=True)
    assert float(delta.abs().max()) < 1e-5
    # sigmoid and tanh multipliers (f(u) - f(u0)) / (u - u0) lose digits to float32 cancellation where
    # u is close to u0, in ONNX Runtime's forward as in torch's: 2.4e-4 measured there, under 1e-5 without them
    tol = 5e-4 if smooth else 1e-5
    assert relative(_deeplift(backend, x, base, target), want.detach().numpy()) < tol


def test_deeplift_sums_to_the_output_difference_on_the_demo_model():
    """Summation-to-delta (Shrikumar et al. 2017, eq. 1), through ReLU, max pools, merged BN and GAP."""
    from convscope.data import demo_path, shapes

    backend = convscope.load(demo_path("onnx"))
    x = np.asarray(shapes(3, seed=2).images, np.float32)
    base = np.asarray(shapes(3, seed=9).images, np.float32) * 0.5
    target = [0, 1, 3]
    total = _deeplift(backend, x, base, target).reshape(3, -1).sum(1)
    want = backend.forward(x)[np.arange(3), target] - backend.forward(base)[np.arange(3), target]
    np.testing.assert_allclose(total, want, rtol=1e-4, atol=1e-5)
    # a zero difference falls back to the gradient: the baseline x gives zero attribution
    assert np.abs(_deeplift(backend, x, x.copy(), target)).max() == 0.0


def test_deeplift_plans_are_cached_by_eps_and_seed_callables_agree():
    from convscope._relevance import DeepLiftRules

    model, _ = small_net()
    backend = convscope.load(model)
    x = _images()
    seeds = {"output": np.eye(3, dtype=np.float32)[[0, 2]]}
    first = backend.gradient(x, seeds, rule=DeepLiftRules(baseline=np.zeros_like(x))).grads["input"]
    plans = len(backend._plans)
    second = backend.gradient(x, seeds, rule=DeepLiftRules(baseline=x * 0.5)).grads["input"]
    assert len(backend._plans) == plans and relative(first, second) > 1e-3
    called = backend.gradient(x, lambda acts: seeds, at=["output"],
                              rule=DeepLiftRules(baseline=x * 0.5)).grads["input"]
    np.testing.assert_allclose(called, second, rtol=1e-5, atol=1e-7)


def test_deeplift_baseline_of_the_wrong_shape_is_refused():
    from convscope._relevance import DeepLiftRules

    backend = convscope.load(small_net()[0])
    x = _images()
    with pytest.raises(ValueError, match="'baseline'"):
        backend.gradient(x, {"output": np.ones((2, 3), np.float32)}, rule=DeepLiftRules(baseline=x[:1]))


@pytest.mark.parametrize("net", ["demo", "vgg", "resnet", "densenet"])
def test_deeplift_equals_the_torch_backend(net):
    from convscope.attribution import deeplift

    from lrp_nets import images

    torch_backend, onnx_backend = _torch_and_onnx(net)
    x = np.asarray(convscope.data.shapes(2, seed=6).images, np.float32) if net == "demo" else images(2, 32)
    base = (x[::-1] * 0.5).copy()
    want = deeplift(torch_backend, x, baseline=base)
    got = deeplift(onnx_backend, x, baseline=base)
    assert relative(got.attributions, want.attributions) < TOL


@pytest.mark.parametrize("net", ["vgg", "resnet", "densenet"])
def test_deeplift_shap_and_gradient_shap_equal_the_torch_backend(net):
    """The core's DeepLiftShap (a baseline distribution) and GradientShap on ONNX, against the torch backend."""
    from convscope.attribution import deeplift_shap, gradient_shap

    from lrp_nets import images

    torch_backend, onnx_backend = _torch_and_onnx(net)
    x, baselines = images(2, 32), images(3, 32, seed=8) * 0.5
    assert relative(deeplift_shap(onnx_backend, x, baselines=baselines).attributions,
                    deeplift_shap(torch_backend, x, baselines=baselines).attributions) < TOL
    assert relative(gradient_shap(onnx_backend, x, baselines=baselines, seed=1).attributions,
                    gradient_shap(torch_backend, x, baselines=baselines, seed=1).attributions) < TOL
