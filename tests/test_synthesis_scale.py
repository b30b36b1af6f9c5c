"""Synthesis steps do not depend on the gradient's scale; a zero gradient is reported."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convscope import synthesis as S  # noqa: E402
from convscope.synthesis import Adam  # noqa: E402


def _tiny_net(scale):
    """conv-relu-conv-relu-pool-linear whose weights are scaled so gradients are ~scale**3."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))
    with torch.no_grad():
        for depth, m in enumerate(m for m in net if hasattr(m, "weight")):
            m.weight.mul_(scale)  # layer d's output is scale ** (d + 1) times that of the scale-1 net:
            m.bias.fill_(0.1 * scale ** (depth + 1))  # ReLUs are positive-homogeneous
    return net


def test_adam_step_is_the_same_for_any_gradient_scale(rng):
    g = rng.normal(size=(2, 3, 8, 8)).astype(np.float32)
    t = np.zeros_like(g)
    steps = [Adam(0.1).step(t, g * s) for s in (1.0, 1e-18, 1e12)]
    np.testing.assert_allclose(steps[1], steps[0], rtol=1e-5)
    np.testing.assert_allclose(steps[2], steps[0], rtol=1e-5)
    assert np.array_equal(Adam(0.1).step(t, np.zeros_like(g)), t)  # zero gradient, zero step, no NaN


def test_deepdream_and_visualize_move_a_network_with_tiny_gradients(rng):
    net = _tiny_net(1e-6)
    x = rng.random((1, 3, 16, 16), dtype=np.float32) * 0.5 + 0.25
    xt = torch.from_numpy(x).requires_grad_()
    g = torch.autograd.grad(net[:4](xt).square().sum(), xt)[0]
    assert 0 < g.abs().max() < 1e-20  # the gradient the step normalises is tiny indeed
    dream = S.deepdream(net, x, "3", octaves=1, steps=3, step_size=0.02, jitter=0, progress=False)
    assert np.abs(dream.image - x).max() > 1e-3  # the old 1e-12 epsilon left it unchanged to 1e-9
    big = S.deepdream(_tiny_net(1.0), x, "3", octaves=1, steps=3, step_size=0.02, jitter=0, progress=False)
    # the same net at scale 1: the same gradient direction, so the same dream
    np.testing.assert_allclose(dream.image, big.image, atol=1e-4)
    vis = S.visualize(net, S.channel("3", 1), steps=4, size=16, progress=False, seed=0)
    vis_big = S.visualize(_tiny_net(1.0), S.channel("3", 1), steps=4, size=16, progress=False, seed=0)
    np.testing.assert_allclose(vis.images, vis_big.images, atol=1e-3)


def test_a_zero_gradient_warns_instead_of_silently_doing_nothing(rng):
    net = _tiny_net(1.0)
    with torch.no_grad():
        net[2].weight.zero_()  # layer "3" is then constant: its gradient at the input is zero
    x = rng.random((1, 3, 16, 16), dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="gradient of .* at the input is exactly zero"):
        dream = S.deepdream(net, x, "3", octaves=1, steps=2, jitter=0, progress=False)
    np.testing.assert_array_equal(dream.image, x)
    with pytest.warns(RuntimeWarning, match="exactly zero"):
        S.visualize(net, S.channel("3", 0), steps=2, size=16, progress=False)


def test_the_value_range_belongs_to_the_backend(rng):
    import convscope

    net = _tiny_net(1.0)
    backend = convscope.load(net, value_range=(-1.0, 1.0))
    assert backend.value_range == (-1.0, 1.0) and convscope.load(net).value_range == (0.0, 1.0)
    x = rng.random((1, 3, 16, 16), dtype=np.float32) * 2 - 1
    dream = S.deepdream(backend, x, "3", octaves=1, steps=2, step_size=0.5, jitter=0, progress=False)
    assert dream.image.min() >= -1 and dream.image.min() < 0  # kept in [-1, 1], not clipped to [0, 1]
    vis = S.visualize(backend, S.channel("3", 1), steps=2, size=16, progress=False)
    assert vis.images.min() >= -1 and vis.images.min() < 0
    clipped = S.deepdream(backend, x, "3", octaves=1, steps=1, jitter=0, value_range=(0, 1), progress=False)
    assert clipped.image.min() >= 0  # a per-call range still overrides
    with pytest.raises(ValueError, match=r"'value_range' parameter of convscope.load must be a pair \(low, high\) of finite"):
        convscope.load(net, value_range=(1, 0))
