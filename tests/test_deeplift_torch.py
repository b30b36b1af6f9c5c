"""DeepLift, DeepLiftShap and GradientShap on torch against Captum on the same model and draws."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum = pytest.importorskip("captum.attr")

import lrp_nets  # noqa: E402
from convscope.attribution import deeplift, deeplift_shap, gradient_shap  # noqa: E402


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def avg_vgg():
    """VGG-style with its max pool swapped for an average pool (see test_max_pool_rule)."""
    model = lrp_nets.build("vgg")
    model.features[4] = torch.nn.AvgPool2d(2)
    return model, lrp_nets.images(2), [1, 3]


def test_deeplift_matches_captum(avg_vgg):
    model, x, target = avg_vgg
    base = lrp_nets.images(2, seed=5) * 0.3
    got = deeplift(model, x, target, baseline=base)
    ref, delta = captum.DeepLift(model).attribute(torch.from_numpy(x), baselines=torch.from_numpy(base),
                                                  target=torch.tensor(target), return_convergence_delta=True)
    assert _rel(got.attributions, ref.detach().numpy()) < 1e-5
    np.testing.assert_allclose(got.info["delta"], delta.detach().numpy(), atol=1e-6)


def test_deeplift_summation_to_delta_with_max_pools():
    """The rescale rule and the max-pool rule are exact: sum a = S(x) - S(x0) (Shrikumar et al. 2017, eq. 1)."""
    model, x = lrp_nets.build("vgg"), lrp_nets.images(2)
    for net in ("vgg", "resnet", "densenet"):
        got = deeplift(lrp_nets.build(net), x, baseline=0.1)
        assert np.abs(got.info["delta"]).max() < 1e-5 * np.abs(got.outputs).max()
    del model


def test_deeplift_shap_matches_captum(avg_vgg):
    model, x, target = avg_vgg
    refs = lrp_nets.images(3, seed=7) * 0.5
    got = deeplift_shap(model, x, target, baselines=refs)
    ref = captum.DeepLiftShap(model).attribute(torch.from_numpy(x), baselines=torch.from_numpy(refs),
                                               target=torch.tensor(target))
    assert _rel(got.attributions, ref.detach().numpy()) < 1e-5


def test_gradient_shap_matches_captum_with_its_draws(avg_vgg):
    """Captum draws the baselines with np.random.choice, then the alphas with np.random.uniform
    (sample-major per image); the same draws passed as baseline_index= and alphas= (stdev 0)."""
    model, x, target = avg_vgg
    refs = lrp_nets.images(3, seed=7) * 0.5
    np.random.seed(3)
    ref = captum.GradientShap(model).attribute(torch.from_numpy(x), baselines=torch.from_numpy(refs),
                                               target=torch.tensor(target), n_samples=4).detach().numpy()
    np.random.seed(3)
    index, alphas = np.random.choice(3, 8).reshape(2, 4), np.random.uniform(0, 1, 8).reshape(2, 4)
    got = gradient_shap(model, x, target, baselines=refs, samples=4, baseline_index=index, alphas=alphas)
    assert _rel(got.attributions, ref) < 1e-5
    again = gradient_shap(model, x, target, baselines=refs, samples=4, seed=1)
    same = gradient_shap(model, x, target, baselines=refs, samples=4, seed=1)
    assert np.allclose(again.attributions, same.attributions)
    assert not np.allclose(again.attributions, got.attributions)  # other draws, another estimate


def test_bad_input(avg_vgg):
    model, x, _ = avg_vgg
    with pytest.raises(ValueError, match="'baseline' parameter of deeplift.*Got shape \\(3, 8, 8\\)"):
        deeplift(model, x, baseline=np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="'baselines' parameter of deeplift_shap"):
        deeplift_shap(model, x, baselines=np.zeros((3, 64, 64)))
    with pytest.raises(ValueError, match="'alphas' parameter of gradient_shap"):
        gradient_shap(model, x, baselines=np.zeros((1, 3, 64, 64)), alphas=np.zeros(3))


def test_deeplift_preprocesses_the_baseline_like_the_images():
    """With load(model, preprocess=...) the baseline is a user image too: DeepLift equals
    DeepLift on the model with both preprocessed (the multipliers carry the chain rule)."""
    import convscope

    model, x = lrp_nets.build("resnet"), lrp_nets.images(2)
    p = convscope.Preprocess(mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3), order="BGR")
    base = np.full(x.shape, 0.2, np.float32)
    got = deeplift(convscope.load(model, preprocess=p), x, [0, 4], baseline=0.2)
    ref = deeplift(model, p.apply(x), [0, 4], baseline=p.apply(base))
    assert _rel(got.attributions, ref.attributions[:, ::-1]) < 1e-5
    np.testing.assert_allclose(got.info["delta"], ref.info["delta"], atol=1e-6)


def test_deeplift_on_the_demo_model_and_in_place_relus():
    """The demo model (BatchNorm, ReLU modules, max pools) and a net of in-place ReLUs: the
    pre-activations the rule needs survive the in-place ReLU (summation-to-delta holds)."""
    from convscope.data import demo_model, shapes

    import torch_models

    got = deeplift(demo_model("torch"), shapes(2, seed=0).images, baseline=0.5)
    assert np.abs(got.info["delta"]).max() < 1e-5 * np.abs(got.outputs).max()
    net = torch_models.randomise_bn(torch_models.TinyResNet().eval())
    got = deeplift_shap(net, lrp_nets.images(2, size=32), baselines=lrp_nets.images(2, size=32, seed=3) * 0.2)
    assert np.abs(got.info["delta"]).max() < 1e-5 * np.abs(got.outputs).max()
