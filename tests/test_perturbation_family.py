"""The black-box perturbation family against its peers on the same model, features and draws:
feature ablation and Shapley sampling vs Captum, KernelSHAP vs shap.KernelExplainer (every
coalition enumerated), LIME vs lime_image (the same coalitions); RISE by hand and by the
pointing game; the three backends agree; memory is bounded; bad input is named."""
import numpy as np
import pytest

import convscope as cs
from convscope.attribution import feature_ablation, kernel_shap, lime, noise_tunnel, rise, rise_masks, shapley_sampling

from _assertions import assert_close as close, batch_sizes

torch = pytest.importorskip("torch")
from torch_models import scaled_small_net  # noqa: E402


small_net = scaled_small_net


def assert_close(got, ref, tol):
    close(got, ref, tol, min_scale=1e-3)


@pytest.fixture(scope="module")
def setup():
    net = small_net()
    x = np.random.default_rng(1).random((3, 3, 12, 12), dtype=np.float32)
    target = net(torch.from_numpy(x)).argmax(1).numpy()
    blocks = (np.arange(12)[:, None] // 4) * 2 + np.arange(12)[None] // 6  # 3 x 2 blocks: 6 features
    return net, x, target, blocks.astype(np.int64)


def scores(net, images, target):
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(images, np.float32))).numpy()[:, target].astype(np.float64)


def test_feature_ablation_equals_captum(setup):
    captum_attr = pytest.importorskip("captum.attr")
    net, x, target, blocks = setup
    mask = torch.from_numpy(np.broadcast_to(blocks, (3, 1, 12, 12)).copy())
    ref = captum_attr.FeatureAblation(net).attribute(torch.from_numpy(x), target=torch.from_numpy(target),
                                                     feature_mask=mask, baselines=0.3).numpy()
    for per in (1, 2, 3, None):
        got = feature_ablation(net, x, target, features=blocks, baseline=0.3, perturbations_per_eval=per)
        assert_close(got.attributions, ref, 1e-5)
        assert_close(got.maps, ref[:, 0], 1e-5)
    assert got.info["features"] == "given" and got.signed


def test_shapley_sampling_equals_captum_on_the_same_permutations(setup):
    captum_attr = pytest.importorskip("captum.attr")
    net, x, target, blocks = setup
    torch.manual_seed(0)
    perms = np.array([torch.randperm(6).tolist() for _ in range(5)])
    torch.manual_seed(0)  # Captum draws the same orders: one torch.randperm(6) per sample
    ref = captum_attr.ShapleyValueSampling(net).attribute(
        torch.from_numpy(x), target=torch.from_numpy(target), baselines=0.1, n_samples=5,
        feature_mask=torch.from_numpy(blocks[None, None].copy()), perturbations_per_eval=2).numpy()
    for per in (1, 3):
        got = shapley_sampling(net, x, target, features=blocks, baseline=0.1, permutations=perms,
                               perturbations_per_eval=per)
        assert_close(got.attributions, ref, 1e-5)
    seeded = [shapley_sampling(net, x, target, features=blocks, samples=4, seed=s) for s in (0, 0, 1)]
    np.testing.assert_array_equal(seeded[0].maps, seeded[1].maps)
    # efficiency holds for every order: the credits sum to f(x) - f(baseline)
    total = got.maps[:, ::4, ::6].sum(axis=(1, 2))
    np.testing.assert_allclose(total, scores(net, x, target).diagonal() - scores(net, np.full_like(x, 0.1),
                                                                                 target).diagonal(), atol=1e-4)


@pytest.mark.slow
def test_kernel_shap_equals_shap_kernel_explainer_enumerating_every_coalition(setup):
    shap = pytest.importorskip("shap")
    net, x, target, blocks = setup
    got = kernel_shap(net, x, target, features=blocks, baseline=0.2, samples=100)
    assert got.info["exact"] == [True] * 3
    for n in range(3):
        def f(z, n=n):
            keep = z[:, blocks].astype(bool)[:, None]  # (k, 1, H, W)
            return scores(net, np.where(keep, x[n][None], 0.2), target[n])

        explainer = shap.KernelExplainer(f, np.zeros((1, 6)))
        ref = np.asarray(explainer.shap_values(np.ones((1, 6)), nsamples=2 ** 6, l1_reg=False, silent=True))
        ref = ref.reshape(-1)
        assert_close(got.maps[n, ::4, ::6].reshape(-1), ref, 1e-6)


def test_kernel_shap_sampled_is_close_to_exact(setup):
    net, x, target, blocks = setup
    exact = kernel_shap(net, x, target, features=blocks)
    sampled = kernel_shap(net, x, target, features=blocks, samples=40, seed=3)
    assert sampled.info["exact"] == [False] * 3
    assert_close(sampled.maps, exact.maps, 0.25)  # 40 drawn coalitions of 62, paired
    np.testing.assert_allclose(sampled.maps[:, ::4, ::6].sum(axis=(1, 2)), exact.maps[:, ::4, ::6].sum(axis=(1, 2)),
                               atol=1e-4)  # the constraint holds exactly


def test_lime_equals_lime_image_with_the_same_segmentation_and_seed(setup):
    lime_image = pytest.importorskip("lime.lime_image")
    net, x, target, blocks = setup
    got = lime(net, x, target, features=blocks, baseline=0.0, samples=200, seed=4)
    for n in range(3):
        explainer = lime_image.LimeImageExplainer(kernel_width=0.25, random_state=4)
        explanation = explainer.explain_instance(
            np.moveaxis(x[n], 0, -1).astype(np.float64), lambda imgs: scores(net, np.moveaxis(imgs, -1, 1), slice(None)),
            labels=(int(target[n]),), top_labels=None, hide_color=0.0, num_samples=200, batch_size=64,
            segmentation_fn=lambda image: blocks, random_seed=0)
        ref = np.zeros(6)
        for feature, weight in explanation.local_exp[int(target[n])]:
            ref[feature] = weight
        assert_close(got.maps[n, ::4, ::6].reshape(-1), ref, 1e-6)
        np.testing.assert_allclose(got.info["intercept"][n], explanation.intercept[int(target[n])], rtol=1e-6)


def test_rise_by_hand_on_a_linear_model():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 2, 2)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.0, 1.0, 0.0, 0.0]]))
        net[1].bias.copy_(torch.tensor([0.25, 0.0]))
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], np.float32)
    masks = np.array([[[1, 0], [1, 1]], [[0, 1], [0.5, 0]]], np.float32)
    # f(x * m1) = 1*1 + 0 - 3 + 0.5*4 + 0.25 = 0.25; f(x * m2) = 0 + 2*2 - 1.5 + 0 + 0.25 = 2.75
    # E[m] = mean of the masks = 4.5 / 8; S = (0.25 m1 + 2.75 m2) / (2 * 4.5 / 8)
    expected = (0.25 * masks[0] + 2.75 * masks[1]) / (2 * 4.5 / 8)
    got = rise(net, x, 0, masks=masks, batch_size=1)
    np.testing.assert_allclose(got.maps[0], expected, atol=1e-6)


def test_rise_masks_follow_the_paper():
    m = rise_masks(200, (20, 20), cell=5, p=0.3, seed=1)
    assert m.shape == (200, 20, 20) and m.min() >= 0 and m.max() <= 1
    assert abs(m.mean() - 0.3) < 0.03  # E[m] = p
    np.testing.assert_array_equal(m[:50], rise_masks(200, (20, 20), cell=5, p=0.3, seed=1)[:50])
    assert np.abs(np.diff(m, axis=1)).max() <= 1 / 4 + 1e-6  # bilinear over cells of 4 pixels: smooth


@pytest.mark.slow
def test_rise_pointing_game_on_the_demo_data_beats_chance(demo_data):
    """Petsiuk et al.'s setting (the softmax probability); cells of 16 pixels on 64 x 64 images.
    Measured: 4 of 8 peaks on the object, chance (the objects' area) 0.117."""
    data = cs.data.shapes(8, seed=5)
    model = cs.data.demo_model("torch")
    maps = rise(model, data.images, data.labels, masks=500, cell=4, seed=0, output="probability").maps
    peaks = maps.reshape(8, -1).argmax(axis=1)
    hits = data.object_masks.reshape(8, -1)[np.arange(8), peaks].mean()
    chance = data.object_masks.mean()
    assert hits >= 3 * chance, (hits, chance)
    inside = [maps[i][data.object_masks[i]].mean() > maps[i][~data.object_masks[i]].mean() for i in range(8)]
    assert sum(inside) >= 6, inside


def test_forward_batches_are_bounded(setup):
    net, x, target, blocks = setup
    backend = cs.load(net)
    with batch_sizes(backend, "_forward") as sizes:
        rise(backend, x, target, masks=50, batch_size=8)
        assert max(sizes) <= 8 and sum(sizes) == 3 + 3 * 50
        for f, kw in [(feature_ablation, {}), (shapley_sampling, {"samples": 3}), (kernel_shap, {}),
                      (lime, {"samples": 30})]:
            sizes.clear()
            f(backend, x, target, features=blocks, perturbations_per_eval=2, **kw)
            assert max(sizes) <= 6, (f.__name__, max(sizes))


@pytest.mark.slow
@pytest.mark.parametrize("framework, module", [("onnx", "onnxruntime"), ("keras", "tensorflow")])
def test_other_backends_agree_with_torch(framework, module):
    pytest.importorskip(module)
    data = cs.data.shapes(2, seed=9)
    other = cs.data.demo_path("onnx") if framework == "onnx" else cs.data.demo_model("keras")
    torch_model = cs.data.demo_model("torch")
    grid = (np.arange(64)[:, None] // 16) * 4 + np.arange(64)[None] // 16
    for f, kw in [(rise, {"masks": 40}), (feature_ablation, {"features": grid}),
                  (kernel_shap, {"features": grid, "samples": 64}), 
                  (noise_tunnel, {"samples": 2, "method": ("occlusion", {"window": 16, "stride": 16})})]:
        ref = f(torch_model, data.images, data.labels, **kw).maps
        assert_close(f(other, data.images, data.labels, **kw).maps, ref, 1e-4)


@pytest.mark.parametrize("f, kwargs, param", [
    (feature_ablation, {"baseline": np.zeros((2, 3, 5, 5))}, "baseline"),
    (shapley_sampling, {"baseline": "black"}, "baseline"),
    (feature_ablation, {"features": 1000}, "features"),
    (kernel_shap, {"features": np.zeros((7, 7), np.int64)}, "features"),
    (lime, {"features": np.zeros((12, 12), np.float32)}, "features"),
    (lime, {"features": "quickshift"}, "features"),
    (shapley_sampling, {"permutations": np.array([[0, 0, 1, 2, 3, 4]])}, "permutations"),
    (rise, {"masks": np.ones((4, 6, 6), np.float32)}, "masks"),
    (rise, {"masks": np.full((4, 12, 12), 2.0, np.float32)}, "masks"),
    (rise, {"p": 1.5}, "p"), (rise, {"cell": 0}, "cell"), (rise, {"output": "logit"}, "output"),
    (lime, {"kernel_width": 0}, "kernel_width"), (kernel_shap, {"samples": 1}, "samples"),
    (feature_ablation, {"perturbations_per_eval": 0}, "perturbations_per_eval"),
    (feature_ablation, {"target": 7}, "target")])
def test_bad_input_names_the_argument(setup, f, kwargs, param):
    net, x, _, blocks = setup
    kwargs = {"features": blocks, **kwargs} if f is not rise else kwargs
    with pytest.raises((ValueError, TypeError), match=f"'{param}' parameter of {f.__name__}"):
        f(net, x, **kwargs)


def test_slic_is_the_default_and_says_so(setup):
    pytest.importorskip("skimage")
    net, x, target, _ = setup
    got = feature_ablation(net, x, target)
    assert "SLIC" in got.info["choices"]["features"]
    assert got.info["evaluated"] >= 3


def test_results_do_not_depend_on_the_batching(setup):
    net, x, target, blocks = setup
    a, b = (rise(net, x, target, masks=30, batch_size=s) for s in (3, None))
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-6, atol=1e-6)
    masks = rise_masks(30, (12, 12))
    by_hand = sum(scores(net, x * m, target).diagonal()[:, None, None] * m for m in masks) / (30 * 0.5)
    assert_close(a.maps, by_hand, 1e-5)
    for f, kw in [(kernel_shap, {"samples": 20}), (lime, {"samples": 25})]:
        c, d = (f(net, x, target, features=blocks, perturbations_per_eval=p, **kw) for p in (1, 3))
        np.testing.assert_allclose(c.maps, d.maps, rtol=1e-6, atol=1e-6)


def test_model_left_as_it_was(setup):
    net, x, target, blocks = setup
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        for f in (feature_ablation, lime):
            f(net, x, target, features=blocks)
        with pytest.raises(ValueError):
            kernel_shap(net, x, 99, features=blocks)
        assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
        assert not net._forward_hooks and all(p.requires_grad for p in net.parameters())
    finally:
        net.eval()


def test_kernel_shap_exact_equals_the_shapley_formula(setup):
    """phi_l = sum_S |S|! (M - |S| - 1)! / M! (v(S + l) - v(S)) over every coalition, written out."""
    from itertools import combinations
    from math import factorial

    net, x, target, blocks = setup
    got = kernel_shap(net, x[:1], target[:1], features=blocks, baseline=0.5)

    def v(subset):
        keep = np.isin(blocks, list(subset))[None]
        return scores(net, np.where(keep, x[:1], 0.5), target[0])[0]

    phi = np.zeros(6)
    for l in range(6):
        others = [k for k in range(6) if k != l]
        for size in range(6):
            for s in combinations(others, size):
                phi[l] += factorial(size) * factorial(5 - size) / factorial(6) * (v(s + (l,)) - v(s))
    assert_close(got.maps[0, ::4, ::6].reshape(-1), phi, 1e-5)


def test_images_with_different_feature_counts(setup):
    """Per-image label maps with 2 and 6 features: each image gets what it gets alone, and the
    orders' extra features change nothing for the image that lacks them."""
    net, x, target, blocks = setup
    halves = np.where(np.arange(12)[None] < 6, 0, 1).repeat(12, axis=0)
    labels = np.stack([halves, blocks, blocks])
    for f, kw in [(feature_ablation, {}), (shapley_sampling, {"samples": 3}), (lime, {"samples": 40})]:
        together = f(net, x, target, features=labels, **kw).maps
        alone = f(net, x[:1], target[:1], features=halves, **kw).maps
        if f is not shapley_sampling:  # the orders are drawn over the batch's largest count
            np.testing.assert_allclose(together[:1], alone, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(together[1:], f(net, x[1:], target[1:], features=blocks, **kw).maps,
                                   rtol=1e-5, atol=1e-5)
    ablated = feature_ablation(net, x, target, features=labels)
    assert len(np.unique(ablated.maps[0])) <= 2


def test_default_segmentation_is_slic_50(setup):
    pytest.importorskip("skimage")
    from convscope._segments import superpixels

    net, x, target, _ = setup
    np.testing.assert_array_equal(feature_ablation(net, x, target).maps,
                                  feature_ablation(net, x, target, features=superpixels(x, 50)).maps)
