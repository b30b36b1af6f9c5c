"""Sanity checks (Adebayo et al. 2018; Sixt et al. 2020): model-parameter randomisation and the
random-logit test, with their similarity measures.

References: scipy.stats.spearmanr and scikit-image (structural_similarity, hog) for the
measures; Quantus 0.6.0's MPRT and RandomLogit on the same model, maps and randomised weights
(convscope's ``randomize`` given Quantus's own draw: ``torch.manual_seed(seed + 1)`` then the
module's ``reset_parameters``); small cases worked out by hand; and the paper's qualitative
result on the demo model.
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import convscope  # noqa: E402
from convscope.attribution import saliency  # noqa: E402
from convscope.data import demo_model, shapes  # noqa: E402
from convscope.metrics import evaluate_metric, model_randomisation, random_logit  # noqa: E402
from convscope.metrics._similarity import hog_similarity, pearson, spearman, ssim  # noqa: E402


class Tiny(torch.nn.Module):
    """Named layers, no batch norm (Quantus's reset_parameters also resets its statistics)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = torch.nn.ReLU()
        self.conv2 = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.relu2 = torch.nn.ReLU()
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.flat = torch.nn.Flatten()
        self.fc = torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(self.flat(self.pool(self.relu2(self.conv2(self.relu1(self.conv1(x)))))))


X = np.random.default_rng(0).random((6, 3, 16, 16)).astype(np.float32)


def quantus_draw(model, seed):
    """Quantus's randomisation of a layer (PyTorchModel.get_random_layer_generator) as a ``randomize``."""
    def randomize(name, weights, rng):
        module = copy.deepcopy(model.get_submodule(name))
        torch.manual_seed(seed + 1)
        module.reset_parameters()
        return {k: v.detach().numpy().copy() for k, v in module.named_parameters(recurse=False)}
    return randomize


def explain(model, inputs, targets, **kwargs):
    return saliency(model, np.asarray(inputs, np.float32), np.asarray(targets)).maps


def per_sample_ssim(a, b, batched=True, **kwargs):
    """Quantus's ssim on the 2-d maps (Quantus's own flattens them first: a 1-d SSIM)."""
    from skimage.metrics import structural_similarity

    side = int(round(np.sqrt(a.shape[1])))
    out = []
    for aa, bb in zip(a, b):
        both = np.concatenate([aa, bb])
        out.append(structural_similarity(aa.reshape(side, side), bb.reshape(side, side),
                                         data_range=float(both.max() - both.min())))
    return np.array(out)


# ----------------------------------------------------------------- the measures
def test_spearman_matches_scipy_with_ties_and_by_hand():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    a = np.round(rng.random((5, 12, 12)), 1)  # many ties
    b = a + rng.random((5, 12, 12))
    b[0] = 0.5 * b[0] ** 2
    want = [spearmanr(u.ravel(), v.ravel())[0] for u, v in zip(a, b)]
    np.testing.assert_allclose(spearman(a, b), want, atol=1e-12)
    # by hand: ranks [1, 2, 3, 4] and [1, 3, 2, 4]: 1 - 6 * (0 + 1 + 1 + 0) / (4 * 15) = 0.8
    assert spearman(np.array([[[1, 2], [3, 4]]]), np.array([[[1, 3], [2, 4]]]))[0] == pytest.approx(0.8)
    # ties: [1, 1, 2, 3] ranks [1.5, 1.5, 3, 4] against [1, 2, 3, 4]: 4.5 / sqrt(4.5 * 5)
    assert spearman(np.array([[[1, 1], [2, 3]]]), np.array([[[1, 2], [3, 4]]]))[0] == pytest.approx(4.5 / np.sqrt(22.5))
    assert np.isnan(spearman(np.ones((1, 3, 3)), a[:1, :3, :3])[0])  # a constant map has no ranks


def test_ssim_matches_skimage_and_by_hand():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(2)
    a = rng.random((4, 20, 17))
    b = 0.7 * a + 0.3 * rng.random((4, 20, 17))
    b[1] = 1 - a[1]
    want = [structural_similarity(u, v, data_range=max(u.max(), v.max()) - min(u.min(), v.min())) for u, v in zip(a, b)]
    np.testing.assert_allclose(ssim(a, b), want, atol=1e-12)
    np.testing.assert_allclose(ssim(a, a), 1.0)
    # by hand: one 7 x 7 window, map 0 against map 1: means 0 and 1, variances 0, R = 1:
    # (2 * 0 * 1 + C1) (0 + C2) / ((0 + 1 + C1) (0 + C2)) = C1 / (1 + C1), C1 = (0.01 * 1)^2
    got = ssim(np.zeros((1, 7, 7)), np.ones((1, 7, 7)))[0]
    assert got == pytest.approx(1e-4 / (1 + 1e-4), rel=1e-12)


def test_hog_similarity_matches_skimage_and_pearson_by_hand():
    from skimage.feature import hog

    rng = np.random.default_rng(3)
    a = rng.random((3, 32, 32))
    b = a + 0.5 * rng.random((3, 32, 32))
    want = [np.corrcoef(hog(u), hog(v))[0, 1] for u, v in zip(a, b)]
    np.testing.assert_allclose(hog_similarity(a, b), want, atol=1e-12)
    # Pearson by hand: [1, 2, 3] and [2, 4, 7]: cov 5, variances 2 and 114 / 9
    assert pearson([[1, 2, 3]], [[2, 4, 7]])[0] == pytest.approx(5 / np.sqrt(2 * 114 / 9))
    stripes = np.tile((np.arange(32) // 4 % 2).astype(float), (32, 1))
    assert hog_similarity(stripes[None], 3 * stripes[None])[0] == pytest.approx(1.0, abs=1e-6)  # scale-free
    assert hog_similarity(stripes[None], stripes.T[None])[0] < 0  # vertical edges against horizontal ones


# ----------------------------------------------------------------- against Quantus
@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_model_randomisation_matches_quantus_mprt(order):
    quantus = pytest.importorskip("quantus")
    model = Tiny()
    backend = convscope.load(model)
    y = backend.forward(X).argmax(1)
    a = explain(model, X, y)
    layers = ["fc", "conv2", "conv1"] if order == "cascading" else ["conv1", "conv2", "fc"]
    ours = model_randomisation(model, X, explain, y, order=order, layers=layers, similarity=("spearman", "ssim"),
                               randomize=quantus_draw(model, 42))
    for measure, fn, kw in [("spearman", None, {}),
                            ("ssim", per_sample_ssim, {"normalise_func_kwargs": {"normalise_axes": [1, 2, 3]}})]:
        metric = quantus.MPRT(similarity_func=fn, layer_order="top_down" if order == "cascading" else "independent",
                              seed=42, disable_warnings=True, **kw)
        theirs = metric(model=copy.deepcopy(model), x_batch=X, y_batch=y, a_batch=a, channel_first=True,
                        explain_func=explain, device="cpu")
        assert list(theirs)[1:] == layers
        for step, name in enumerate(layers):
            np.testing.assert_allclose(ours.similarity[measure][step], theirs[name], atol=1e-6)


@pytest.mark.parametrize("similarity", ["spearman", "ssim"])
def test_random_logit_matches_quantus(similarity):
    quantus = pytest.importorskip("quantus")
    from quantus.functions.similarity_func import correlation_spearman

    model = Tiny(seed=1)
    y = convscope.load(model).forward(X).argmax(1)
    a = explain(model, X, y)
    metric = quantus.RandomLogit(num_classes=3, seed=7, abs=False, disable_warnings=True,
                                 similarity_func=correlation_spearman if similarity == "spearman" else per_sample_ssim,
                                 normalise_func_kwargs={"normalise_axes": [1, 2, 3]})
    theirs = metric(model=model, x_batch=X, y_batch=y, a_batch=a, channel_first=True, explain_func=explain, device="cpu")
    ours = random_logit(model, X, explain, y, similarity=similarity, seed=7)
    np.testing.assert_allclose(ours.scores, theirs, atol=1e-6)
    given = random_logit(model, X, explain, None, maps=saliency(model, X, y), similarity=similarity, seed=7)
    np.testing.assert_allclose(given.scores, theirs, atol=1e-6)  # the maps' own target
    assert not ours.higher_is_better and (ours.info["other"] != y).all()


# ----------------------------------------------------------------- by hand
def test_a_method_that_ignores_the_model_fails_both_tests():
    """Adebayo et al.'s edge detector: the same map whatever the weights or the class."""
    def edges(model, x, target=None):
        grey = np.asarray(x).mean(axis=1)
        return np.hypot(*np.gradient(grey, axis=(1, 2)))

    x = np.random.default_rng(5).random((2, 3, 32, 32)).astype(np.float32)  # HOG takes 24 x 24 and up
    result = model_randomisation(Tiny(), x, edges, 0, similarity=("spearman", "ssim", "hog"))
    for measure in ("spearman", "ssim", "hog"):
        np.testing.assert_allclose(result.similarity[measure], 1.0, atol=1e-12)
    np.testing.assert_allclose(random_logit(Tiny(), x, edges, 0).scores, 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="'similarity' parameter of model_randomisation must be without 'hog'"):
        model_randomisation(Tiny(), X, edges, 0)  # 16 x 16


def test_random_logit_by_hand():
    """A map x[:, 0] for class 0 and 1 - x[:, 0] otherwise: rank correlation -1 for the images
    explained as class 0 (every other class gets the reversed map), +1 for the others as long as
    the other class is not 0. The other class is j + (j >= target), j = RandomState(seed).randint(0, K - 1)."""
    def flip(model, x, target):
        t = np.asarray(target)[:, None, None]
        return np.where(t == 0, x[:, 0], 1 - x[:, 0])

    target = np.array([0, 0, 1, 2, 1, 2])
    got = random_logit(Tiny(), X, flip, target, similarity="spearman", seed=3)
    j = np.random.RandomState(3).randint(0, 2, 6)
    other = j + (j >= target)
    np.testing.assert_array_equal(got.info["other"], other)
    want = np.where(target == 0, -1.0, np.where(other == 0, -1.0, 1.0))
    np.testing.assert_allclose(got.scores, want, atol=1e-12)


def test_cascading_steps_accumulate_and_independent_ones_do_not():
    """With a randomize that zeroes a layer, the cascading step k model equals the trained one with
    the first k layers zeroed; independent step k only layer k (checked through the maps)."""
    model = Tiny()
    zero = lambda name, w, rng: {k: np.zeros_like(v) for k, v in w.items()}  # noqa: E731
    backend = convscope.load(model)
    casc = model_randomisation(model, X, "saliency", 0, layers=["fc", "conv2"], randomize=zero, similarity="spearman")
    ind = model_randomisation(model, X, "saliency", 0, layers=["fc", "conv2"], randomize=zero, similarity="spearman",
                              order="independent")
    zeros = {n: zero(n, backend.weights(n), None) for n in ("fc", "conv2")}
    np.testing.assert_allclose(casc.maps[2], saliency(backend.with_weights(zeros), X, 0).maps)
    np.testing.assert_allclose(ind.maps[2], saliency(backend.with_weights({"conv2": zeros["conv2"]}), X, 0).maps)
    np.testing.assert_allclose(casc.maps[0], saliency(model, X, 0).maps)


# ----------------------------------------------------------------- behaviour
def test_same_draws_in_both_orders_batch_invariance_and_model_untouched():
    model = Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    runs = [model_randomisation(model, X, "saliency", None, batch_size=b, similarity="spearman") for b in (1, 2, 3, None)]
    for r in runs[1:]:
        np.testing.assert_allclose(r.similarity["spearman"], runs[0].similarity["spearman"], atol=1e-6)
    assert runs[0].layers == ["fc", "conv2", "conv1"]
    assert "target" in runs[0].info["choices"]
    ind = model_randomisation(model, X, "saliency", None, order="independent", similarity="spearman")
    np.testing.assert_allclose(ind.similarity["spearman"][0], runs[0].similarity["spearman"][0], atol=1e-12)  # fc alone
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert runs[0].to_rgb().shape[1] > 4 * 16 and runs[0].final().shape == (6,)


def test_registered_metrics_through_evaluate():
    model = Tiny()
    got = evaluate_metric("model_randomisation", model=model, x=X, method="saliency", target=0)
    want = model_randomisation(model, X, "saliency", 0, similarity="spearman").similarity["spearman"][-1]
    np.testing.assert_allclose(got.scores, want)
    assert not got.higher_is_better and got.info["layers"] == ["fc", "conv2", "conv1"]
    rl = evaluate_metric("random_logit", model=model, x=X, method="grad_cam", options={"similarity": "spearman"})
    assert rl.scores.shape == (6,) and rl.metric == "random_logit"


@pytest.mark.parametrize("kwargs, error, match", [
    ({"order": "sideways"}, ValueError, r"'order' parameter of model_randomisation"),
    ({"similarity": "pearson"}, ValueError, r"'similarity' parameter of model_randomisation"),
    ({"similarity": []}, TypeError, r"'similarity' parameter of model_randomisation"),
    ({"layers": ["conv3"]}, ValueError, r"'layers' parameter of model_randomisation .*conv1"),
    ({"layers": ["relu1"]}, ValueError, r"'layers' parameter of model_randomisation"),
    ({"randomize": 3}, TypeError, r"'randomize' parameter of model_randomisation"),
    ({"seed": -1}, ValueError, r"'seed' parameter of model_randomisation"),
    ({"batch_size": 0}, ValueError, r"'batch_size' parameter of model_randomisation"),
    ({"absolute": "yes"}, TypeError, r"'absolute' parameter of model_randomisation"),
    ({"target": 7}, ValueError, r"'target' parameter"),
])
def test_bad_arguments_raise_before_any_explanation(kwargs, error, match):
    calls = []

    def method(model, x, target=None):
        calls.append(1)
        return saliency(model, x, target)

    kwargs = {"target": None, "similarity": ("spearman", "ssim"), **kwargs}
    target = kwargs.pop("target")
    with pytest.raises(error, match=match):
        model_randomisation(Tiny(), X, method, target, **kwargs)
    assert target == 7 or not calls


def test_random_logit_bad_arguments():
    for kwargs, match in [({"similarity": "l2"}, "'similarity' parameter of random_logit"),
                          ({"num_classes": 1}, "'num_classes' parameter of random_logit"),
                          ({"num_classes": 9}, "'num_classes' parameter of random_logit"),
                          ({"target": 5}, "'target' parameter of random_logit")]:
        kwargs = {"target": None, **kwargs}
        with pytest.raises(ValueError, match=match):
            random_logit(Tiny(), X, "saliency", kwargs.pop("target"), **kwargs)
    with pytest.raises(ValueError, match="'method' parameter of random_logit"):
        random_logit(Tiny(), X, "salency")


# ----------------------------------------------------------------- the paper's result on the demo model
@pytest.mark.slow
def test_paper_result_on_the_demo_model():
    """Adebayo et al. 2018, Fig. 2 and 4: gradients and Grad-CAM decorrelate under cascading
    randomisation; guided backprop stays tied to the image's edges (it fails the test)."""
    x = shapes(16, seed=1).images
    model = demo_model("torch")
    grey = x.mean(axis=1)
    edges = np.hypot(*np.gradient(grey, axis=(1, 2)))
    runs = {name: model_randomisation(model, x, method, similarity="spearman")
            for name, method in [("saliency", "saliency"), ("grad_cam", ("grad_cam", {"clip": False})),
                                 ("guided", "guided_backprop")]}
    curve = {k: np.nanmean(r.similarity["spearman"], axis=1) for k, r in runs.items()}
    assert curve["saliency"][0] > 0.6 and curve["saliency"][-1] < 0.15
    assert curve["grad_cam"][0] > 0.6 and curve["grad_cam"][-1] < 0.15
    assert (curve["guided"] > curve["saliency"]).all()  # guided backprop stays closer at every step
    edge = {k: [np.nanmean(spearman(np.abs(m), edges)) for m in (r.maps[0], r.maps[-1])] for k, r in runs.items()}
    assert edge["guided"][1] > edge["saliency"][1] + 0.04  # after every layer is randomised
    assert edge["guided"][1] > 0.6 * edge["guided"][0]  # as tied to the edges as the trained model's map


def test_the_same_check_on_torch_and_onnx_gives_the_same_numbers():
    pytest.importorskip("onnxruntime")
    from convscope.data import demo_path

    x = shapes(4, seed=5).images
    torch_backend, onnx_backend = convscope.load(demo_model("torch")), convscope.load(demo_path("onnx"))
    kwargs = dict(layers=["fc", "conv4", "bn4"], similarity=("spearman", "ssim"), seed=3)
    a = model_randomisation(torch_backend, x, "saliency", 1, **kwargs)
    b = model_randomisation(onnx_backend, x, "saliency", 1, **kwargs)
    scale = np.abs(a.maps).max()
    assert np.abs(a.maps - b.maps).max() / scale < 1e-3  # the same draws reach both frameworks
    for measure in ("spearman", "ssim"):
        np.testing.assert_allclose(a.similarity[measure], b.similarity[measure], atol=2e-3)
