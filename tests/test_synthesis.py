"""Synthesis building blocks and activation maximisation on the torch demo model.

References: finite differences for every hand-written gradient (objectives, Gram, TV,
parameterisations, transforms), dot-product identities for adjoints, independent forward
passes for the objective values, and call counting for the one-pass-per-step promise.
"""
from collections import Counter

import numpy as np
import pytest

from convscope.synthesis import objectives as O
from convscope.synthesis import regularizers as R
from convscope._imageops import resize_adjoint, resize_images
from convscope.synthesis.gram import diversity, gram, gram_adjoint, gram_similarity
from convscope.synthesis.params import ImageParam
from convscope.synthesis.transforms import STANDARD, Sampling, Transforms


# ----------------------------------------------------------------------------- helpers
def fd_check(fn, x, grad, rng, h=1e-3, n=3, rtol=2e-2):
    """<grad, d> against the central difference of scalar fn along random d."""
    for _ in range(n):
        d = rng.standard_normal(x.shape)
        fd = (fn(x + h * d) - fn(x - h * d)) / (2 * h)
        an = float(np.sum(grad.astype(np.float64) * d))
        assert abs(fd - an) <= rtol * max(abs(fd), abs(an), 1e-6), (fd, an)


class Counting:
    """A Backend that counts the calls it forwards to the wrapped one."""

    def __init__(self, inner):
        self.inner, self.name, self.calls = inner, inner.name, Counter()

    def __getattr__(self, name):  # anything else (the fixed input size) from the wrapped backend
        return getattr(self.inner, name)

    def layers(self):
        return self.inner.layers()

    def forward(self, x):
        self.calls["forward"] += 1
        return self.inner.forward(x)

    def activations(self, x, layers):
        self.calls["activations"] += 1
        return self.inner.activations(x, layers)

    def gradient(self, x, seeds, **kw):
        self.calls["gradient"] += 1
        return self.inner.gradient(x, seeds, **kw)

    def weights(self, layer):
        return self.inner.weights(layer)


@pytest.fixture(scope="module")
def demo():
    torch = pytest.importorskip("torch")
    import convscope
    from convscope.data import demo_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny passes: one thread is faster and steadier on a shared machine
    module = demo_model("torch")
    backend = convscope.load(module)
    backend.layers()
    yield module, backend
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- objectives
ACT_SHAPES = {"conv": (3, 5, 4, 6), "flat": (3, 7), "output": (3, 4)}


@pytest.mark.parametrize("make", [
    lambda: O.neuron("conv", 2, 1, 3),
    lambda: O.neuron("conv", 2),
    lambda: O.neuron("flat", 4),
    lambda: O.channel("conv", 4),
    lambda: O.layer_l2("conv"),
    lambda: O.class_logit(1),
    lambda: O.class_probability(2),
    lambda: O.direction("conv", [1.0, -2.0, 0.5, 0.0, 3.0]),
    lambda: O.direction("flat", np.arange(7.0)),
    lambda: diversity("conv"),
    lambda: 0.5 * O.channel("conv", 1) - O.class_probability(0) + 2 * O.layer_l2("conv"),
    lambda: O.weighted([O.channel("conv", 1), O.class_logit(3)], [2.0, -0.5]),
], ids=["neuron", "neuron-centre", "neuron-flat", "channel", "layer_l2", "logit", "probability", "direction",
        "direction-flat", "diversity", "sum", "weighted"])
def test_objective_seeds_are_gradients_of_the_values(make, rng):
    obj = make()
    acts = {k: rng.standard_normal(s) for k, s in ACT_SHAPES.items()}
    values, seeds = obj(acts)
    assert values.shape == (3,)
    for name in obj.tensors:
        def total(a, name=name):
            return float(np.sum(obj({**acts, name: a})[0], dtype=np.float64))
        fd_check(total, acts[name], seeds[name], rng)


def test_objective_values_by_hand(rng):
    a = rng.standard_normal((2, 5, 4, 6)).astype(np.float32)
    z = rng.standard_normal((2, 4)).astype(np.float32)
    acts = {"conv": a, "output": z}
    np.testing.assert_allclose(O.neuron("conv", 2, 1, 3)(acts)[0], a[:, 2, 1, 3])
    np.testing.assert_allclose(O.neuron("conv", 2)(acts)[0], a[:, 2, 2, 3])
    np.testing.assert_allclose(O.channel("conv", 4)(acts)[0], a[:, 4].mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(O.layer_l2("conv")(acts)[0], (a ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(O.class_probability(3)(acts)[0], p[:, 3], rtol=1e-5)
    v = np.array([0, 3.0, 0, 4.0, 0])
    np.testing.assert_allclose(O.direction("conv", v)(acts)[0], (0.6 * a[:, 1] + 0.8 * a[:, 3]).mean(axis=(1, 2)),
                               rtol=1e-5)
    both = O.channel("conv", 0) + 2 * O.class_logit(1)
    np.testing.assert_allclose(both(acts)[0], a[:, 0].mean(axis=(1, 2)) + 2 * z[:, 1], rtol=1e-5)
    assert set(both.tensors) == {"conv", "output"}
    assert sum([O.channel("conv", 0), O.channel("conv", 1)])(acts)[0].shape == (2,)


def test_gram_and_its_adjoint(rng):
    a = rng.standard_normal((2, 3, 4, 5))
    g = gram(a)
    np.testing.assert_allclose(g[1], a[1].reshape(3, -1) @ a[1].reshape(3, -1).T / 20, rtol=1e-5)
    d = rng.standard_normal((2, 3, 3))
    fd_check(lambda x: float(np.sum(gram(x).astype(np.float64) * d)), a, gram_adjoint(a, d), rng)
    same = np.repeat(a[:1], 3, axis=0)
    assert gram_similarity(same) == pytest.approx(1.0, abs=1e-6)
    assert gram_similarity(np.abs(rng.standard_normal((4, 6, 5, 5)))) < 1.0


def test_total_variation_and_l2_gradients(rng):
    x = rng.uniform(0, 1, (2, 3, 6, 7))
    for beta in (1.0, 2.0, 1.5):
        values, grad = R.total_variation(x, beta)
        fd_check(lambda y: float(np.sum(R.total_variation(y, beta)[0], dtype=np.float64)), x, grad, rng, h=1e-4)
    flat = np.full((1, 3, 5, 5), 0.3)
    assert R.total_variation(flat, 2.0)[0][0] == pytest.approx(1e-6, abs=1e-7)  # only eps
    values, grad = R.l2_penalty(x, 0.5)
    np.testing.assert_allclose(values, ((x - 0.5) ** 2).mean(axis=(1, 2, 3)), rtol=1e-5)


def test_image_operators():
    x = np.zeros((1, 3, 9, 9), np.float32)
    x[0, :, 4, 4] = 1
    blurred = R.gaussian_blur(x, 1.0)
    assert blurred.sum() == pytest.approx(3.0, rel=1e-4) and blurred[0, 0, 4, 4] < 0.2
    assert blurred[0, 0, 4, 3] == pytest.approx(blurred[0, 0, 3, 4])
    y = np.linspace(0, 1, 3 * 16, dtype=np.float32).reshape(1, 3, 4, 4)
    kept = R.clip_small_norm(y, 50, center=0.5)
    norms = np.linalg.norm(y - 0.5, axis=1)[0]
    low = norms <= np.percentile(norms, 50)
    assert 8 <= low.sum() < 16
    assert np.all(kept[0, :, low] == 0.5) and np.array_equal(kept[0, :, ~low], y[0, :, ~low])
    g = np.ones_like(y)
    g[..., :2] = 0  # no contribution on the left half
    cut = R.clip_small_contribution(y, g, 40, center=0.5)
    assert np.all(cut[..., :2] == 0.5) and np.array_equal(cut[..., 2:], y[..., 2:])
    assert R.clip_range(np.array([-1.0, 0.5, 2.0]), 0, 1).tolist() == [0, 0.5, 1]


# ----------------------------------------------------------------------------- parameterisations, transforms
@pytest.mark.parametrize("spatial", ["pixel", "fft"])
@pytest.mark.parametrize("colour", ["rgb", "decorrelated"])
@pytest.mark.parametrize("squash", ["sigmoid", "none"])
def test_parameterisation_gradient_and_inverse(spatial, colour, squash, rng):
    for shape in [(2, 3, 8, 10), (1, 3, 9, 7)]:
        p = ImageParam(shape, spatial=spatial, colour=colour, squash=squash, value_range=(-1.0, 2.0))
        t = p.random(rng, 0.5).astype(np.float64)
        g = rng.standard_normal(shape)
        p.image(t)
        grad = p.backward(g)
        assert grad.shape == p.param_shape
        fd_check(lambda u: float(np.sum(p.image(u).astype(np.float64) * g)), t, grad, rng, h=1e-2)
        img = p.image(t)
        np.testing.assert_allclose(p.image(p.encode(img)), img, atol=1e-5)
        if squash == "sigmoid":
            assert img.min() > -1 and img.max() < 2


def test_fft_parameterisation_scales_the_spectrum():
    """Equal steps on every parameter give a spectrum that falls as 1/f: low frequencies dominate."""
    p = ImageParam((1, 3, 32, 32), spatial="fft", colour="rgb", squash="none")
    rng = np.random.default_rng(0)
    img = p.image(rng.standard_normal(p.param_shape).astype(np.float32)) - 0.5
    power = np.abs(np.fft.rfft2(img[0].astype(np.float64))) ** 2
    assert power[:, 1:3, 1:3].mean() > 20 * power[:, 12:16, 12:16].mean()


def test_transform_adjoint_and_jitter(rng):
    x = rng.standard_normal((2, 3, 9, 11))
    g = rng.standard_normal((2, 3, 9, 11))
    for args in [(2, -3, 1.0, 0.0), (0.5, 1, 1.1, 7.0), (0, 0, 0.9, -10.0)]:
        s = Sampling((9, 11), *args)
        lhs = float(np.sum(s.apply(x).astype(np.float64) * g))
        rhs = float(np.sum(x * s.adjoint(g).astype(np.float64)))
        assert lhs == pytest.approx(rhs, rel=1e-4)
    shifted = Sampling((9, 11), 2, -3).apply(x)
    np.testing.assert_allclose(shifted[..., 2:, :8], x[..., :-2, 3:], rtol=1e-6)
    draws = [Transforms(**STANDARD).sample(np.random.default_rng(5), (9, 11)).params for _ in range(2)]
    assert draws[0] == draws[1]


def test_resize_adjoint(rng):
    from convscope.render import resize

    x = rng.standard_normal((1, 3, 7, 9)).astype(np.float32)
    np.testing.assert_allclose(resize_images(x, (12, 5)), resize(x, (12, 5)), atol=1e-6)
    g = rng.standard_normal((1, 3, 12, 5))
    assert np.sum(resize_images(x, (12, 5)) * g) == pytest.approx(np.sum(x * resize_adjoint(g, (7, 9))), rel=1e-4)


# ----------------------------------------------------------------------------- visualize
def test_visualize_raises_the_objective(demo):
    from convscope.synthesis import channel, evaluate, visualize

    _, backend = demo
    obj = channel("relu3", 5)
    res = visualize(backend, obj, steps=24, size=64, progress=False)
    grey = np.full((1, 3, 64, 64), 0.5, np.float32)
    after = evaluate(backend, obj, res.images)
    assert after[0] > 5 * max(evaluate(backend, obj, grey)[0], 0.01)
    assert res.images.shape == (1, 3, 64, 64) and res.images.min() >= 0 and res.images.max() <= 1
    assert res.history.shape == (24, 1) and res.history[-1, 0] > res.history[0, 0]
    assert res.to_rgb().shape[2] == 3


@pytest.mark.parametrize("kwargs", [
    dict(param="pixel", colour="rgb", squash="none", optimizer="sgd", lr=0.5, l2=0.1, blur_every=4, clip_norm=10,
         clip_contribution=10, transforms="none", start="zeros"),
    dict(param="fft", tv=0.5, tv_beta=1.0, transforms=dict(jitter=2, scales=(1.0, 1.05), angles=(-5, 0, 5))),
])
def test_visualize_options_all_raise_the_objective(demo, kwargs):
    from convscope.synthesis import class_logit, evaluate, visualize

    _, backend = demo
    obj = class_logit(3)
    start = evaluate(backend, obj, np.full((1, 3, 64, 64), 0.5, np.float32))[0]
    res = visualize(backend, obj, steps=16, size=64, progress=False, **kwargs)
    assert evaluate(backend, obj, res.images)[0] > start + 1.0
    assert 0 <= res.images.min() and res.images.max() <= 1


def test_one_step_is_one_forward_and_one_backward(demo):
    from convscope.synthesis import class_logit, channel, visualize

    module, backend = demo
    counting = Counting(backend)
    passes = Counter()
    handles = [module.register_forward_hook(lambda *a: passes.update(["forward"])),
               module.register_full_backward_hook(lambda *a: passes.update(["backward"]))]
    try:
        visualize(counting, channel("relu2", 1) + 0.1 * class_logit(2), steps=7, batch=2, size=64, diversity=0.1,
                  blur_every=2, progress=False)
    finally:
        for h in handles:
            h.remove()
    assert counting.calls == Counter(gradient=7)
    assert passes == Counter(forward=7, backward=7)


def test_seeded_runs_are_reproducible(demo):
    from convscope.synthesis import channel, visualize

    _, backend = demo
    run = lambda seed: visualize(backend, channel("relu2", 3), steps=5, size=64, seed=seed, progress=False).images
    a, b, c = run(3), run(3), run(4)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


def test_diversity_spreads_the_batch_and_keeps_the_objective(demo):
    """Mean pairwise Gram similarity at the objective's layer falls from ~0.97 to below 0.75,
    while the objective keeps at least 70 % of its value without the term."""
    from convscope.synthesis import channel, evaluate, gram_similarity, visualize

    _, backend = demo
    obj = channel("relu3", 5)
    plain = visualize(backend, obj, batch=4, steps=48, size=64, seed=1, progress=False)
    diverse = visualize(backend, obj, batch=4, steps=48, size=64, seed=1, diversity=0.2, progress=False)
    sim = [gram_similarity(backend.activations(r.images, ["relu3"])["relu3"]) for r in (plain, diverse)]
    assert sim[1] < 0.75 and sim[1] < sim[0] - 0.2, sim
    kept = evaluate(backend, obj, diverse.images).mean() / evaluate(backend, obj, plain.images).mean()
    assert kept > 0.7, kept


def test_frames_and_gif(demo, tmp_path):
    from PIL import Image

    from convscope.synthesis import FrameRecorder, class_logit, visualize

    _, backend = demo
    rec = FrameRecorder(every=2)
    visualize(backend, class_logit(0), steps=6, size=64, callback=rec, progress=False)
    assert [s for s, _ in rec.frames] == [0, 2, 4]
    path = rec.save_gif(tmp_path / "run.gif")
    with Image.open(path) as gif:
        assert gif.n_frames == 3


def test_progress_bar_can_be_turned_on_and_off(demo, capsys):
    pytest.importorskip("tqdm")
    from convscope.synthesis import class_logit, visualize

    _, backend = demo
    visualize(backend, class_logit(0), steps=3, size=64, progress=True)
    assert "visualize" in capsys.readouterr().err
    visualize(backend, class_logit(0), steps=3, size=64, progress=False)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_clearly(demo):
    from convscope.synthesis import channel, class_logit, neuron, visualize

    _, backend = demo
    with pytest.raises(ValueError, match=r"'layer' parameter of visualize must be a known layer name\. "
                                         r"Got 'relu9' instead; closest: relu"):
        visualize(backend, channel("relu9", 0), steps=1, size=64, progress=False)
    with pytest.raises(ValueError, match=r"'channel' parameter of channel must be < 32 \(the layer has 32"):
        visualize(backend, channel("relu2", 40), steps=1, size=64, progress=False)
    with pytest.raises(ValueError, match=r"'cls' parameter of class_logit must be a class index < 4"):
        visualize(backend, class_logit(4), steps=1, size=64, progress=False)
    with pytest.raises(ValueError, match=r"'channel' parameter of neuron must be >= 0\. Got -1"):
        neuron("relu2", -1)
    with pytest.raises(ValueError, match=r"'steps' parameter of visualize must be >= 1\. Got -3"):
        visualize(backend, class_logit(0), steps=-3, progress=False)
    with pytest.raises(ValueError, match=r"'tv' parameter of visualize must be >= 0\. Got -1"):
        visualize(backend, class_logit(0), steps=1, tv=-1.0, progress=False)
    with pytest.raises(ValueError, match=r"'diversity' parameter of visualize must be >= 0"):
        visualize(backend, class_logit(0), steps=1, diversity=-0.5, progress=False)
    with pytest.raises(ValueError, match=r"'start' parameter of visualize must be images of size \(64, 64\)"):
        visualize(backend, class_logit(0), steps=1, size=64, start=np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(TypeError, match=r"'objective' parameter of visualize must be an Objective"):
        visualize(backend, "relu2", steps=1)
    with pytest.raises(ValueError, match=r"'value_range' parameter of visualize must be a pair \(low, high\) with"):
        visualize(backend, class_logit(0), steps=1, value_range=(1, 0))


def test_wrong_size_for_a_fixed_size_model(demo):
    from convscope.synthesis import class_logit, visualize

    class FixedSize(Counting):
        fixed_size = (64, 64)

    fixed = FixedSize(demo[1])
    with pytest.raises(ValueError, match=r"'size' parameter of visualize must be \(64, 64\) for this fixed-size"):
        visualize(fixed, class_logit(0), steps=1, size=48, progress=False)
    assert visualize(fixed, class_logit(0), steps=1, progress=False).images.shape == (1, 3, 64, 64)


def test_linear_objectives_pass_constant_seeds_with_the_same_result(demo):
    """After the first pass a linear objective's seeds go to the backend as arrays (a faster
    path on some backends); the images equal those of the callable path."""
    from convscope.synthesis import channel, class_logit, visualize

    _, backend = demo
    kinds = []

    class Recording(Counting):
        def gradient(self, x, seeds, **kw):
            kinds.append(callable(seeds))
            return super().gradient(x, seeds, **kw)

    obj = channel("relu3", 2) + 0.1 * class_logit(1)
    fast = visualize(Recording(backend), obj, steps=4, size=64, progress=False)
    assert kinds == [True, False, False, False]
    obj.linear = False
    slow = visualize(backend, obj, steps=4, size=64, progress=False)
    np.testing.assert_allclose(fast.images, slow.images, atol=1e-6)
    np.testing.assert_allclose(fast.history, slow.history, rtol=1e-5)
