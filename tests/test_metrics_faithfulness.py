"""Faithfulness metrics: ROAD, faithfulness correlation, IROF, infidelity.

References: hand-computed cases on linear models (whose score drops are known in closed form),
Quantus 0.6.0's ROAD, FaithfulnessCorrelation, IROF and Infidelity and Captum's infidelity on the
same model, maps and perturbations (subsets, noise, segments replayed into them), and the ROAD
authors' imputation as Quantus ships it."""
import copy

import numpy as np
import pytest
import torch

from convscope import metrics as M
from convscope.metrics._imputation import linear_imputation, noisy_linear_imputation


class Linear(torch.nn.Module):
    """Scores ``[sum(w * x), sum(-w * x)]``: the drop when a set S is removed to 0 is ``sum_S w x``."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float64), requires_grad=False)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        s = (x * self.w).flatten(1).sum(1)
        return torch.stack([s, -s], 1)


def tiny_net(channels=1, classes=3, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool2d(4),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 16, classes)).eval()
    return net


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(1)
    x = rng.random((3, 1, 16, 16)).astype(np.float32)
    maps = rng.standard_normal((3, 16, 16)).astype(np.float32)  # no ties: every ranking is the same in every library
    net = tiny_net()
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()
    return net, x, maps, y


# ---------------------------------------------------------------- hand-computed small cases

def test_imputation_by_hand():
    img = np.arange(9, dtype=np.float32).reshape(1, 3, 3)  # 0 1 2 / 3 4 5 / 6 7 8
    # the centre alone: (1 + 3 + 5 + 7) / 6 + (0 + 2 + 6 + 8) / 12 = 16/6 + 16/12 = 4
    np.testing.assert_allclose(linear_imputation(img, [4]), [[4.0]])
    # the corner 0: neighbours 1, 3 (1/6 each) and 4 (1/12), weights summing to 5/12:
    # (1/6 + 3/6 + 4/12) / (5/12) = (12/12) / (5/12) = 12/5
    np.testing.assert_allclose(linear_imputation(img, [0]), [[2.4]])
    # corner 0 (a) and its neighbour 1 (b) together:
    #   a: weights 1/6 (b), 1/6 (3), 1/12 (4) = 5/12:            5/12 a - 1/6 b = 3/6 + 4/12
    #   b: weights 1/6 (a, 2, 4), 1/12 (3, 5) = 8/12:  8/12 b - 1/6 a = 2/6 + 4/6 + 3/12 + 5/12
    # i.e. 5a - 2b = 10 and -a + 4b = 10: a = b = 10/3
    np.testing.assert_allclose(linear_imputation(img, [0, 1]), [[10 / 3, 10 / 3]], rtol=1e-12)
    # noise goes onto the imputed pixels only, column j on indices[j]
    out = noisy_linear_imputation(img, [1, 0], 0.5, np.random.default_rng(3))
    noise = 0.5 * np.random.default_rng(3).standard_normal((1, 2))
    np.testing.assert_allclose(out.reshape(-1)[[1, 0]], np.array([10 / 3, 10 / 3]) + noise[0], rtol=1e-6)
    np.testing.assert_array_equal(out.reshape(-1)[2:], img.reshape(-1)[2:])


def test_road_by_hand_on_a_linear_model():
    img = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    net = Linear(np.ones((1, 1, 3, 3)))
    maps = np.zeros((1, 3, 3), np.float32)
    maps[0, 0, 0], maps[0, 0, 1] = 2, 1  # MoRF removes pixel 0, then pixels 0 and 1
    r = M.road(net, img, maps, 0, fractions=(1 / 9, 2 / 9), noise=0.0)
    # sum = 36; pixel 0 -> 12/5: 38.4; pixels 0, 1 -> 10/3 each: 36 - 1 + 20/3
    curve = [36 + 2.4, 35 + 20 / 3]
    np.testing.assert_allclose(r.info["curve"], [curve], rtol=1e-6)
    assert r.scores[0] == pytest.approx((curve[0] + curve[1]) / 2 / 9, rel=1e-6)
    assert r.metric == "road_morf" and not r.higher_is_better
    np.testing.assert_array_equal(r.info["accuracy"], [1.0, 1.0])  # class 0 stays on top (its score is positive)
    lerf = M.road(net, img, maps, 0, order="lerf", fractions=(1 / 9, 2 / 9), noise=0.0)
    assert lerf.higher_is_better and lerf.metric == "road_lerf"
    # LeRF removes pixel 2 first (the first of the zeros, stable order): neighbours 1, 5 (1/6), 4 (1/12)
    assert lerf.info["curve"][0, 0] == pytest.approx(36 - 2 + (1 / 6 + 5 / 6 + 4 / 12) / (5 / 12), rel=1e-6)


def test_faithfulness_correlation_by_hand_on_a_linear_model():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((1, 1, 8, 8))
    x = rng.random((2, 1, 8, 8)).astype(np.float32)
    net = Linear(w)
    exact = (w[0] * x)[:, 0]  # gradient x input: the drop of removing S to zero is exactly its sum
    r = M.faithfulness_correlation(net, x, exact, 0, subset_size=5, samples=20, fill="zero")
    np.testing.assert_allclose(r.scores, [1, 1], atol=1e-6)
    np.testing.assert_allclose(r.info["drops"], r.info["attribution_sums"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(M.faithfulness_correlation(net, x, 3 - 2 * exact, 0, subset_size=5, samples=20,
                                                          fill="zero").scores, [-1, -1], atol=1e-6)
    # maps = square of the contribution: Pearson of (sum c^2, sum c) over the drawn subsets, by its formula
    r = M.faithfulness_correlation(net, x, exact ** 2, 0, subset_size=5, samples=20, fill="zero", seed=4)
    for i in range(2):
        c = exact[i].ravel()[r.info["subsets"][i]]
        a, b = (c ** 2).sum(1), c.sum(1)
        want = ((a - a.mean()) * (b - b.mean())).sum() / np.sqrt(((a - a.mean()) ** 2).sum() * ((b - b.mean()) ** 2).sum())
        assert r.scores[i] == pytest.approx(want, abs=1e-5)
    assert set(np.unique(r.info["subsets"][0])) <= set(range(64)) and r.info["subsets"].shape == (2, 20, 5)


def test_irof_by_hand():
    x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    net = Linear(np.ones((1, 1, 2, 2)))
    segments = np.array([[[0, 1], [2, 3]]])
    r = M.irof(net, x, x[:, 0], 0, segments=segments, fill="zero", output="score")
    # removed 4, 3, 2, 1: scores 10, 6, 3, 1, 0 -> 1, .6, .3, .1, 0 over 0, 1/4, ..., 1
    np.testing.assert_allclose(r.info["curve"], [[1, 0.6, 0.3, 0.1, 0]], atol=1e-7)
    assert r.scores[0] == pytest.approx(1 - 0.25 * (0.8 + 0.45 + 0.2 + 0.05))  # 0.625
    worst = M.irof(net, x, -x[:, 0], 0, segments=segments, fill="zero", output="score")  # removes 1, 2, 3, 4
    assert worst.scores[0] == pytest.approx(1 - 0.25 * ((1 + .9) + (.9 + .7) + (.7 + .4) + .4) / 2)  # 0.375
    # the segment's mean decides: two segments, mean attribution 2 (left) vs 3 (right)
    two = M.irof(net, x, x[:, 0], 0, segments=np.array([[[5, 9], [5, 9]]]), fill="zero", output="score")
    np.testing.assert_allclose(two.info["curve"], [[1, 0.4, 0]], atol=1e-7)  # right column (2 + 4) removed first


def test_infidelity_by_hand_on_a_linear_model():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((1, 3, 4, 4))
    x = rng.random((2, 3, 4, 4)).astype(np.float32)
    # the map is shared by the channels, so the model weighs every channel of a pixel alike
    net_gray = Linear(np.broadcast_to(w[0, :1], (1, 3, 4, 4)).copy())
    g = np.broadcast_to(w[0, 0], (2, 4, 4)).astype(np.float32)
    for kind in ("noisy-baseline", "gaussian", "square"):
        r = M.infidelity(net_gray, x, g, 0, perturbation=kind, samples=4, square_size=2)
        np.testing.assert_allclose(r.scores, 0, atol=1e-8)  # an exact linear explanation
    # twice the gradient: (2 I^T w - I^T w)^2 = (I^T w)^2; with I = ones: (sum over c, h, w of w)^2
    ones = lambda images, rng: np.ones_like(images)  # noqa: E731
    r = M.infidelity(net_gray, x, 2 * g, 0, perturbation=ones, samples=3)
    np.testing.assert_allclose(r.scores, (3 * w[0, 0].sum()) ** 2, rtol=1e-5)
    assert not r.higher_is_better
    np.testing.assert_allclose(M.infidelity(net_gray, x, 2 * g, 0, perturbation="gaussian", normalize=True).scores,
                               0, atol=1e-8)  # beta = 1/2 removes the scale


# ---------------------------------------------------------------- against Quantus and Captum

@pytest.fixture(scope="module")
def quantus():
    return pytest.importorskip("quantus")


def test_imputation_matches_the_authors_code_in_quantus(quantus, monkeypatch):
    from quantus.functions.perturb_func import noisy_linear_imputation as theirs

    rng = np.random.default_rng(5)
    img = rng.random((3, 12, 10)).astype(np.float32)
    idx = rng.permutation(120)[:90]
    noise = np.random.default_rng(6).standard_normal((3, 90))
    monkeypatch.setattr(np.random, "randn", lambda *shape: noise.reshape(shape))
    got = noisy_linear_imputation(img, idx, 0.01, np.random.default_rng(6))
    np.testing.assert_allclose(got, theirs(img, idx, noise=0.01), atol=1e-6)


def test_road_matches_quantus(quantus, case, monkeypatch):
    net, x, maps, y = case
    percentages = [10, 20, 30, 40, 50, 60, 70, 80, 90]
    ours = M.road(net, x, maps, y, fractions=[p / 100 for p in percentages], noise=0.05, seed=3, output="accuracy")
    calls = iter([(i, s) for s in range(9) for i in range(3)])  # Quantus: percentages outer, images inner
    monkeypatch.setattr(np.random, "randn", lambda *shape: np.random.default_rng([3, *next(calls)]).standard_normal(shape))
    theirs = quantus.ROAD(percentages=percentages, noise=0.05, normalise=False, abs=False, disable_warnings=True)(
        model=net, x_batch=x, y_batch=y, a_batch=maps[:, None], channel_first=True, device="cpu")
    np.testing.assert_allclose(ours.info["accuracy"], [theirs[p] for p in percentages], atol=1e-6)
    assert 0 < ours.info["accuracy"].min() < 1  # the comparison has something to compare
    np.testing.assert_allclose(ours.scores.mean(), np.trapezoid(ours.info["accuracy"], [p / 100 for p in percentages]))


def test_faithfulness_correlation_matches_quantus(quantus, case, monkeypatch):
    net, x, maps, y = case
    ours = M.faithfulness_correlation(net, x, maps, y, subset_size=20, samples=15, fill="zero", seed=1)
    order = iter([ours.info["subsets"][i, s] for s in range(15) for i in range(3)])  # runs outer, images inner
    monkeypatch.setattr(np.random, "choice", lambda *a, **k: next(order))
    theirs = quantus.FaithfulnessCorrelation(nr_runs=15, subset_size=20, perturb_baseline=0.0, normalise=False,
                                             abs=False, return_aggregate=False, disable_warnings=True)(
        model=net, x_batch=x, y_batch=y, a_batch=maps[:, None], channel_first=True, device="cpu")
    np.testing.assert_allclose(ours.scores, theirs, atol=1e-6)


@pytest.mark.parametrize("output", ["score", "probability"])
def test_irof_matches_quantus(quantus, case, monkeypatch, output):
    import quantus.helpers.utils as qutils

    net, x, maps, y = case
    net = copy.deepcopy(net)
    with torch.no_grad():
        net[-1].bias += 5.0  # positive scores, so that they can be normalised by the clean one
    rng = np.random.default_rng(7)
    segments = np.stack([rng.permutation(16)[np.add.outer(np.arange(16) // 4 * 4, np.arange(16) // 4)] for _ in range(3)])
    ours = M.irof(net, x, maps, y, segments=segments, fill=0.3, output=output)
    given = iter(segments)
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)  # Quantus 0.6 calls np.trapz, gone in NumPy 2.4
    monkeypatch.setattr(qutils, "get_superpixel_segments", lambda img, segmentation_method: next(given))
    theirs = quantus.IROF(perturb_baseline=0.3, normalise=False, abs=False, return_aggregate=False,
                          disable_warnings=True)(model=net, x_batch=x, y_batch=y, a_batch=maps[:, None],
                                                 channel_first=True, device="cpu", softmax=output == "probability")
    curve = ours.info["curve"][:, 1:]  # Quantus: L - unit-step trapezoids over l = 1..L
    # Quantus takes the softmax in float32 (here float64 of the same float32 scores): 16 ratios rounded to
    # float32 add up to ~2e-6 on the probability; the scores themselves agree to 1e-6
    np.testing.assert_allclose(16 - np.trapezoid(curve, axis=1), theirs, atol=1e-6 if output == "score" else 5e-6)
    # and the paper's normalised area from the same curve
    np.testing.assert_allclose(ours.scores, 1 - np.trapezoid(ours.info["curve"], dx=1 / 16, axis=1), atol=1e-12)


def _quantus_blocks(x, patch):
    """Quantus's Infidelity perturbation: black patches added one at a time in raster order."""
    n, c, h, w = x.shape
    state = {"j": 0}

    def perturb(images, rng):
        j = state["j"] = state["j"] + 1
        mask = np.zeros((h // patch) * (w // patch), bool)
        mask[:j] = True
        mask = np.kron(mask.reshape(h // patch, w // patch), np.ones((patch, patch), bool))
        return images * mask
    return perturb


def test_infidelity_matches_quantus(quantus, case):
    net, x, maps, y = case
    ours = M.infidelity(net, x, maps, y, perturbation=_quantus_blocks(x, 4), samples=16)
    theirs = quantus.Infidelity(perturb_patch_sizes=[4], n_perturb_samples=1, perturb_baseline=0.0,
                                normalise=False, abs=False, disable_warnings=True)(
        model=net, x_batch=x, y_batch=y, a_batch=maps[:, None], channel_first=True, device="cpu", softmax=False)
    np.testing.assert_allclose(ours.scores, theirs, rtol=1e-6)


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_matches_captum(case, normalize):
    captum_metrics = pytest.importorskip("captum.metrics")
    net, x, maps, y = case
    samples = 6
    changes = 0.1 * np.random.default_rng(8).standard_normal((samples, *x.shape)).astype(np.float32)
    state = {"s": -1}

    def ours_perturb(images, rng):
        state["s"] += 1
        return changes[state["s"]]

    ours = M.infidelity(net, x, maps, y, perturbation=ours_perturb, samples=samples, normalize=normalize)
    stacked = torch.from_numpy(changes.transpose(1, 0, 2, 3, 4).reshape(-1, *x.shape[1:]))  # image-major

    def captum_perturb(inputs):
        return stacked, inputs - stacked

    theirs = captum_metrics.infidelity(net, captum_perturb, torch.from_numpy(x),
                                       torch.from_numpy(np.broadcast_to(maps[:, None], x.shape).copy()),
                                       target=torch.from_numpy(y), n_perturb_samples=samples, normalize=normalize)
    np.testing.assert_allclose(ours.scores, theirs.numpy(), rtol=1e-6)


# ---------------------------------------------------------------- batching, backends, names, bad input

def test_batch_size_does_not_change_any_score(case):
    net, x, maps, y = case
    calls = [(M.road, {"fractions": (0.2, 0.5, 0.8)}), (M.faithfulness_correlation, {"samples": 5}),
             (M.irof, {"segments": np.arange(256).reshape(1, 16, 16).repeat(3, 0) // 32}),
             (M.infidelity, {"perturbation": "square", "square_size": 5})]
    for f, kw in calls:
        scores = [f(net, x, maps, y, batch_size=b, **kw).scores for b in (1, 2, 3, None)]
        for s in scores[1:]:  # the same perturbations; float32 convolutions differ by ~1e-7 with the batch
            np.testing.assert_allclose(s, scores[0], rtol=1e-5, atol=1e-5, err_msg=f.__name__)


def test_every_metric_is_registered_and_runs_by_name(case):
    net, x, maps, y = case
    options = {"road_morf": {"fractions": (0.3, 0.6)}, "road_lerf": {"fractions": (0.3, 0.6)},
               "faithfulness_correlation": {"samples": 4}, "irof": {"n_segments": 8}, "infidelity": {"samples": 2}}
    for name, opts in options.items():
        spec = M.get_metric(name)
        assert spec.family == "faithfulness"
        got = M.evaluate_metric(name, model=net, x=x, maps=maps, target=y, options=opts)
        assert got.metric == name and got.higher_is_better == spec.higher_is_better and got.scores.shape == (3,)
    irof = M.evaluate_metric("irof", model=net, x=x, maps=maps, options={"n_segments": 8})
    assert "SLIC" in irof.info["choices"]["segments"]  # chosen for the user, so said
    with pytest.raises(TypeError, match=r"'order' parameter of metric 'road_morf'"):
        M.evaluate_metric("road_morf", model=net, x=x, maps=maps, options={"order": "lerf"})


def test_the_same_numbers_on_the_onnx_backend():
    pytest.importorskip("onnxruntime")
    from convscope.data import demo_model, demo_path, shapes

    x = shapes(2, seed=3).images
    maps = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    for f, kw in [(M.road, {"fractions": (0.25, 0.5)}), (M.faithfulness_correlation, {"samples": 6}),
                  (M.irof, {"n_segments": 10}), (M.infidelity, {"samples": 3})]:
        a = f(demo_model("torch"), x, maps, **kw).scores
        b = f(str(demo_path("onnx")), x, maps, **kw).scores
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3, err_msg=f.__name__)


def test_bad_input_raises_before_any_pass():
    net = Linear(np.ones((1, 1, 4, 4)))
    x = np.ones((2, 1, 4, 4), np.float32)
    maps = np.ones((2, 4, 4), np.float32)
    bad = [
        (M.road, {"maps": np.ones((4, 4))}, ValueError, r"'maps' parameter of road must be \(N, H, W\)"),
        (M.road, {"maps": np.ones((3, 4, 4))}, ValueError, r"'maps' parameter of road must be one map per image \(2\)"),
        (M.road, {"maps": np.full((2, 4, 4), np.nan)}, ValueError, r"'maps' parameter of road must be finite"),
        (M.road, {"fractions": (0.0, 0.5)}, ValueError, r"'fractions' parameter of road must be at least two increasing"),
        (M.road, {"fractions": (0.5, 1.0)}, ValueError, r"'fractions' parameter of road"),
        (M.road, {"fractions": (0.6, 0.5)}, ValueError, r"'fractions' parameter of road"),
        (M.road, {"order": "random"}, ValueError, r"'order' parameter of road must be one of 'morf', 'lerf'"),
        (M.road, {"noise": -1.0}, ValueError, r"'noise' parameter of road must be >= 0"),
        (M.road, {"output": "logits"}, ValueError, r"'output' parameter of road must be one of"),
        (M.faithfulness_correlation, {"samples": 1}, ValueError, r"'samples' parameter of faithfulness_correlation must be >= 2"),
        (M.faithfulness_correlation, {"subset_size": 17}, ValueError, r"'subset_size' .* must be <= 16"),
        (M.faithfulness_correlation, {"fill": "white", "subset_size": 4}, ValueError, r"'fill' parameter of faithfulness_correlation"),
        (M.irof, {"segments": np.zeros((2, 3, 4), int)}, ValueError, r"'segments' parameter of irof must be integer labels of shape \(2, 4, 4\)"),
        (M.irof, {"segments": np.zeros((2, 4, 4))}, ValueError, r"'segments' parameter of irof must be integer labels"),
        (M.irof, {"n_segments": 0}, ValueError, r"'n_segments' parameter of irof must be >= 1"),
        (M.infidelity, {"samples": 0}, ValueError, r"'samples' parameter of infidelity must be >= 1"),
        (M.infidelity, {"perturbation": "uniform"}, ValueError, r"'perturbation' parameter of infidelity must be one of"),
        (M.infidelity, {"perturbation": "square", "square_size": 5}, ValueError, r"'square_size' parameter of infidelity must be <= 4"),
        (M.infidelity, {"normalize": "yes"}, TypeError, r"'normalize' parameter of infidelity must be True or False"),
        (M.infidelity, {"target": [0]}, ValueError, r"'target' parameter of infidelity must be one int per sample \(2\)"),
    ]
    for f, kw, error, message in bad:
        kw = {"maps": maps, **kw}
        with pytest.raises(error, match=message):
            f(net, x, **kw)
        assert net.calls == 0, (f.__name__, kw)
    with pytest.raises(ValueError, match=r"'target' parameter of irof must be a class index in \[0, 1\]"):
        M.irof(net, x, maps, 2, segments=np.zeros((2, 4, 4), int))
    with pytest.raises(ValueError, match=r"'perturbation' parameter of infidelity must be a callable"):
        M.infidelity(net, x, maps, perturbation=lambda images, rng: images[:1])


def test_a_missing_extra_is_named(monkeypatch, case):
    import builtins

    real = builtins.__import__

    def refuse(name, *args, **kwargs):
        if name.startswith(("scipy", "skimage")):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    net, x, maps, y = case
    monkeypatch.setattr(builtins, "__import__", refuse)
    with pytest.raises(ImportError, match=r"pip install 'convscope\[features\]'"):
        M.road(net, x, maps, y)
    with pytest.raises(ImportError, match=r"pip install 'convscope\[segmentation\]'"):
        M.irof(net, x, maps, y)


def test_superpixels_and_user_segments():
    pytest.importorskip("skimage")
    from skimage.segmentation import slic

    from convscope._segments import check_segments, superpixels

    from convscope.data import shapes

    x = shapes(2, seed=1).images
    labels = superpixels(x, 16, compactness=10.0)
    assert labels.shape == (2, 64, 64) and labels.dtype == np.int64
    for i in range(2):  # scikit-image's own labels (already 0..L-1), channels last
        np.testing.assert_array_equal(labels[i], slic(np.moveaxis(x[i], 0, -1).astype(np.float64), n_segments=16,
                                                      compactness=10.0, start_label=0))
    np.testing.assert_array_equal(superpixels(x, 16), superpixels(x, 16))  # SLIC draws nothing at random
    grey = superpixels(x[:, :1], 9)
    assert set(np.unique(grey[0])) == set(range(grey[0].max() + 1))
    np.testing.assert_array_equal(check_segments(np.array([[[5, 9], [9, 5]]]), (1, 3, 2, 2), "irof"), [[[0, 1], [1, 0]]])
    with pytest.raises(ValueError, match=r"'n_segments' parameter of superpixels must be >= 1"):
        superpixels(x, 0)
