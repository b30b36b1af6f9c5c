"""Gradient attributions and occlusion on the torch demo model, against Captum (same model,
same input) and against hand-computed cases. Captum is a test dependency only."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

import convscope
from convscope import attribution as A
from convscope.app.bench_peers import captum_ready

from _assertions import assert_close  # noqa: E402

pytestmark = pytest.mark.backend("torch")




@pytest.fixture(scope="module")
def demo():
    return convscope.data.demo_model("torch")


@pytest.fixture(scope="module")
def captum_demo(demo):
    """The same weights with out-of-place ReLUs, which Captum's hooks need."""
    return captum_ready(demo)


@pytest.fixture(scope="module")
def batch():
    data = convscope.data.shapes(4, seed=11)
    return data.images, data.labels


def _t(x):
    return torch.from_numpy(x).requires_grad_(True)


# --------------------------------------------------------------------------- Captum references
def test_saliency_matches_captum(demo, captum_demo, batch):
    x, y = batch
    got = A.saliency(demo, x, y)
    want = captum_attr.Saliency(captum_demo).attribute(_t(x), target=torch.from_numpy(y), abs=True).detach().numpy()
    assert_close(got.attributions, want)
    assert_close(got.maps, want.max(axis=1))
    assert got.target.tolist() == y.tolist() and not got.signed


def test_input_x_gradient_matches_captum(demo, captum_demo, batch):
    x, y = batch
    want = captum_attr.InputXGradient(captum_demo).attribute(_t(x), target=torch.from_numpy(y)).detach().numpy()
    got = A.input_x_gradient(demo, x, y)
    assert_close(got.attributions, want)
    assert_close(got.maps, want.sum(axis=1))


@pytest.mark.parametrize("name, peer", [("guided_backprop", "GuidedBackprop"), ("deconvnet", "Deconvolution")])
def test_modified_relu_methods_match_captum(demo, captum_demo, batch, name, peer):
    x, y = batch
    want = getattr(captum_attr, peer)(captum_demo).attribute(_t(x), target=torch.from_numpy(y)).detach().numpy()
    got = getattr(A, name)(demo, x, y, variant="raw")
    assert_close(got.attributions, want)
    assert_close(got.maps, want.sum(axis=1))
    assert_close(getattr(A, name)(demo, x, y).maps, np.abs(want).max(axis=1))


def test_integrated_gradients_matches_captum(demo, captum_demo, batch):
    x, y = batch
    ig = captum_attr.IntegratedGradients(captum_demo)
    want = ig.attribute(_t(x), target=torch.from_numpy(y), n_steps=24, internal_batch_size=16).detach().numpy()
    got = A.integrated_gradients(demo, x, y, steps=24, batch_size=7, method="gausslegendre")
    assert_close(got.attributions, want, 1e-4)
    want = ig.attribute(_t(x), baselines=0.5, target=torch.from_numpy(y), n_steps=8, method="riemann_middle")
    assert_close(A.integrated_gradients(demo, x, y, steps=8, baseline=0.5, method="riemann_middle").attributions,
           want.detach().numpy())


def test_occlusion_matches_captum(demo, captum_demo, batch):
    x, y = batch
    want = captum_attr.Occlusion(captum_demo).attribute(
        torch.from_numpy(x), sliding_window_shapes=(3, 12, 10), strides=(3, 8, 6), baselines=0.0,
        target=torch.from_numpy(y), perturbations_per_eval=5).numpy()
    got = A.occlusion(demo, x, y, window=(12, 10), stride=(8, 6), fill="zero")
    assert_close(got.maps, want[:, 0], 1e-4)
    assert got.info["windows"] == 8 * 10 and got.signed


# --------------------------------------------------------------------------- properties
def test_integrated_gradients_completeness_at_200_steps(demo):
    """sum(a) = S(x) - S(x') within 1%: of |S(x) - S(x')| from a grey baseline; from black, to
    which this model gives the class a score near that of the image, of the score's size."""
    data = convscope.data.shapes(4, seed=2)
    x, y = data.images, data.labels
    rows = np.arange(len(x))
    for baseline in (0.5, None):
        got = A.integrated_gradients(demo, x, y, steps=200, baseline=baseline)
        base = np.full_like(x, 0.0 if baseline is None else baseline)
        out = convscope.load(demo).forward(np.concatenate([x, base]))
        delta = out[rows, y] - out[len(x) + rows, y]
        scale = np.abs(delta) if baseline is not None else np.maximum(np.abs(delta), np.abs(out[rows, y]))
        total = got.attributions.reshape(len(x), -1).sum(axis=1)
        assert np.all(np.abs(total - delta) <= 0.01 * scale), (total, delta)


def test_smoothgrad_is_exact_for_a_linear_model_and_independent_of_batching(rng):
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    x = rng.random((2, 3, 8, 8), dtype=np.float32)
    got = A.smoothgrad(lin, x, [0, 2], samples=6, noise=0.3, batch_size=5, variant="raw")
    w = lin[1].weight.detach().numpy().reshape(3, 3, 8, 8)
    assert_close(got.attributions, w[[0, 2]], 1e-5)
    demo = convscope.data.demo_model("torch")
    x = convscope.data.shapes(2, seed=1).images
    a = A.smoothgrad(demo, x, 1, samples=5, batch_size=3, seed=4)
    b = A.smoothgrad(demo, x, 1, samples=5, batch_size=10, seed=4)
    assert_close(a.maps, b.maps, 1e-5)
    assert not np.allclose(a.maps, A.saliency(demo, x, 1).maps)
    assert_close(A.smoothgrad(demo, x, 1, noise=0.0, samples=2).maps, A.saliency(demo, x, 1).maps, 1e-5)


def test_saliency_variants_and_callable_targets(demo, batch):
    x, y = batch
    raw = A.saliency(demo, x, y, variant="raw")
    g = raw.attributions
    assert_close(raw.maps, g.sum(axis=1))
    signed = A.saliency(demo, x, y, variant="signed").maps
    pick = np.abs(g).argmax(axis=1)[:, None]
    assert_close(signed, np.take_along_axis(g, pick, axis=1)[:, 0])
    # a callable returning classes, and one returning seeds: the gradient is linear in the seeds
    assert_close(A.saliency(demo, x, lambda out: out.argmax(axis=1), variant="raw").attributions,
           A.saliency(demo, x, None, variant="raw").attributions)
    mix = A.saliency(demo, x, lambda out: np.tile(np.float32([0.25, 0, 0.75, 0]), (len(out), 1)), variant="raw")
    want = (0.25 * A.saliency(demo, x, 0, variant="raw").attributions
            + 0.75 * A.saliency(demo, x, 2, variant="raw").attributions)
    assert_close(mix.attributions, want, 1e-5)
    assert mix.target is None


def test_unit_targets_match_autograd_and_captum(demo, captum_demo, batch):
    """Seeds at an inner layer: a whole channel, its strongest unit, one position."""
    x, _ = batch
    head = captum_demo[:11]  # conv1 .. relu3: 64 x 16 x 16
    xt = _t(x)
    acts = head(xt)
    grad = torch.autograd.grad(acts[:, 5].sum(), xt)[0].numpy()
    assert_close(A.saliency(demo, x, 5, layer="relu3", variant="raw").attributions, grad, 1e-5)
    pos = (3, 7)
    want = captum_attr.GuidedBackprop(head).attribute(_t(x), target=(5, *pos)).detach().numpy()
    got = A.guided_backprop(demo, x, 5, layer="relu3", neuron=pos, variant="raw")
    assert_close(got.attributions, want, 1e-5)
    assert got.info["target_layer"] == "relu3" and got.target.tolist() == [5] * 4
    # "max": the strongest unit of the channel, per sample (Zeiler and Fergus)
    a = acts[:, 9].detach().numpy().reshape(4, -1).argmax(axis=1)
    for i in range(4):
        yy, xx = divmod(int(a[i]), 16)
        one = captum_attr.Deconvolution(head).attribute(_t(x[i:i + 1]), target=(9, yy, xx)).detach().numpy()
        assert_close(A.deconvnet(demo, x[i:i + 1], 9, layer="relu3", neuron="max", variant="raw").attributions, one, 1e-5)


def test_occlusion_perturbations_per_eval_gives_identical_maps(demo, batch):
    x, y = batch
    maps = [A.occlusion(demo, x[:2], y[:2], window=16, stride=8, perturbations_per_eval=p, output="probability").maps
            for p in (1, 2, 3)]
    np.testing.assert_allclose(maps[0], maps[1], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps[0], maps[2], rtol=1e-5, atol=1e-7)


def test_occlusion_skips_windows_that_change_nothing(demo, captum_demo):
    x = np.zeros((2, 3, 64, 64), np.float32)
    x[:, :, 20:44, 24:40] = 0.8  # zero fill changes only windows that touch the bright patch
    got = A.occlusion(demo, x, 1, window=8, stride=8, fill="zero")
    assert got.info["evaluated"] < got.info["windows"] * 2
    want = captum_attr.Occlusion(captum_demo).attribute(torch.from_numpy(x), sliding_window_shapes=(3, 8, 8),
                                                        strides=(3, 8, 8), target=1, perturbations_per_eval=16).numpy()
    assert_close(got.maps, want[:, 0], 1e-4)
    blank = A.occlusion(demo, np.zeros((1, 3, 64, 64), np.float32), 1, window=8, fill="zero")
    assert blank.info["evaluated"] == 0 and not blank.maps.any() and blank.outputs.shape == (1, 4)


def test_occlusion_fills(demo, batch):
    x, y = batch
    value = A.occlusion(demo, x, y, window=16, stride=16, fill=0.0).maps
    assert_close(value, A.occlusion(demo, x, y, window=16, stride=16, fill="zero").maps, 1e-6)
    per_channel = A.occlusion(demo, x, y, window=16, stride=16, fill=[0.2, 0.4, 0.6])
    assert per_channel.info["fill"] == "value" and np.isfinite(per_channel.maps).all()
    blur = A.occlusion(demo, x, y, window=16, stride=16, fill="blur").maps
    assert not np.allclose(blur, value)


def test_gaussian_blur_matches_scipy(rng):
    ndimage = pytest.importorskip("scipy.ndimage")
    from convscope._imageops import gaussian_blur

    x = rng.random((2, 3, 20, 17), dtype=np.float32)
    want = ndimage.gaussian_filter(x, sigma=(0, 0, 2.0, 2.0), mode="reflect", truncate=3.0)
    np.testing.assert_allclose(gaussian_blur(x, 2.0), want, atol=1e-5)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("call, match", [
    (lambda m, x: A.saliency(m, x, 4), r"'target' parameter of saliency must be a class index in \[0, 3\]"),
    (lambda m, x: A.saliency(m, x, [0, 1, 2]), r"'target' parameter of saliency must be one int per sample \(4\)"),
    (lambda m, x: A.integrated_gradients(m, x, 0, steps=0), r"'steps' parameter of integrated_gradients must be >= 1"),
    (lambda m, x: A.integrated_gradients(m, x, 0, baseline=np.zeros((2, 3))), r"'baseline' parameter"),
    (lambda m, x: A.occlusion(m, x, 0, window=65), r"'window' parameter of occlusion must be no larger than the 64x64"),
    (lambda m, x: A.occlusion(m, x, 0, window=8, stride=0), r"'stride' parameter of occlusion must be >= 1"),
    (lambda m, x: A.occlusion(m, x, 0, fill="grey"), r"'fill' parameter of occlusion must be 'mean', 'zero', 'blur'"),
    (lambda m, x: A.occlusion(m, x, 0, output="logit"), r"'output' parameter of occlusion must be one of"),
    (lambda m, x: A.smoothgrad(m, x, 0, samples=0), r"'samples' parameter of smoothgrad must be >= 1"),
    (lambda m, x: A.saliency(m, x, 0, variant="square"), r"'variant' parameter of saliency must be one of"),
    (lambda m, x: A.guided_backprop(m, x, 70, layer="relu3"),
     r"'target' parameter of guided_backprop must be a channel index of layer 'relu3' in \[0, 63\]"),
    (lambda m, x: A.guided_backprop(m, x, 1, layer="relu3", neuron=(16, 0)),
     r"'neuron' parameter of guided_backprop must be a position inside the 16x16"),
    (lambda m, x: A.guided_backprop(m, x, 1, neuron="max"),
     r"'neuron' parameter of guided_backprop must be None unless a layer"),
    (lambda m, x: A.saliency(m, x, lambda out: out[:, :2]),
     r"'target' parameter of saliency must be a callable that returns"),
])
def test_bad_input_is_refused_with_the_argument_named(demo, batch, call, match):
    with pytest.raises(ValueError, match=match):
        call(demo, batch[0])


def test_bad_types_are_refused(demo, batch):
    x = batch[0]
    with pytest.raises(TypeError, match=r"'target' parameter of saliency must be an int"):
        A.saliency(demo, x, "cat")
    with pytest.raises(TypeError, match=r"'window' parameter of occlusion must be an int or an \(height, width\)"):
        A.occlusion(demo, x, window=(8, 8, 8))
    with pytest.raises(TypeError, match=r"'x' parameter of saliency must be a floating-point array"):
        A.saliency(demo, (x * 255).astype(np.uint8))
