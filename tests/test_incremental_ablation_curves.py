"""Incremental inference for feature ablation and the early steps of deletion/insertion curves
(core/_incremental_runs.py). The reference is always the plain path (``incremental=False``,
every perturbed image through the whole network) on the same inputs, plus hand-computed
values on a linear model. A pasting plan (the image with the patches pasted, then the
backend's forward) checks the boxes and patches; the torch and ONNX plans, where the backends
have them, check the whole path."""
import copy
import importlib.util

import numpy as np
import pytest

import convscope as cs
from convscope._imageops import fill_images, gaussian_blur
from convscope._incremental import NotIncremental
import convscope._incremental_runs as runs
from convscope._incremental_runs import feature_boxes, growing_boxes
from convscope.attribution import feature_ablation
from convscope.metrics import deletion, insertion

from _assertions import assert_close, batch_sizes

torch = pytest.importorskip("torch")
from torch_models import scaled_small_net  # noqa: E402


small_net = scaled_small_net


class PastingPlan:
    """The plan of the contract done the slow way: paste, then the whole forward. It checks
    what the caller hands it: one window size, boxes inside the image, one base image."""

    def __init__(self, backend, image, window, log):
        self.backend, self.image, self.window, self.log = backend, image.copy(), window, log
        log.append({"image": self.image, "window": window, "patches": 0, "largest": 0})
        self.info = {"pasting": True}

    def scores(self, patches, corners):
        h, w = self.image.shape[2:]
        assert patches.shape[1:] == (self.image.shape[1], min(self.window[0], h), min(self.window[1], w))
        assert patches.dtype == np.float32 and corners.shape == (len(patches), 2)
        assert (corners >= 0).all() and (corners + patches.shape[2:] <= (h, w)).all()
        images = np.repeat(self.image, len(patches), axis=0)
        for b, (y, x) in enumerate(corners):
            images[b, :, y:y + patches.shape[2], x:x + patches.shape[3]] = patches[b]
        self.log[-1]["patches"] += len(patches)
        self.log[-1]["largest"] = max(self.log[-1]["largest"], len(patches))
        return self.backend._forward(images)


def pasting(net):
    """A backend for ``net`` with the pasting plan, and the log of its plans."""
    backend, log = cs.load(net), []
    backend._incremental_plan = lambda image, window, threshold: PastingPlan(backend, image, window, log)
    return backend, log


def refusing(net, why="attention at layer 'attn' (a global operation)"):
    backend = cs.load(net)

    def plan(image, window, threshold):
        raise NotIncremental(why)
    backend._incremental_plan = plan
    return backend


def grid(size, cell):
    return ((np.arange(size)[:, None] // cell) * (-(-size // cell)) + np.arange(size)[None] // cell).astype(np.int64)


@pytest.fixture
def any_count(monkeypatch):
    """"auto" plans for any number of small boxes per image (32 at least otherwise)."""
    monkeypatch.setattr(runs, "MIN_EVALUATIONS", 1)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).random((3, 3, 24, 24), dtype=np.float32)


def test_boxes_by_hand():
    labels = np.array([[0, 0, 1], [2, 1, 1], [2, 2, 1]])
    np.testing.assert_array_equal(feature_boxes(labels, 4), [[0, 0, 1, 2], [0, 1, 3, 3], [1, 0, 3, 2], [0, 0, 0, 0]])
    # pixels 5 (1, 1), 0 (0, 0), 11 (2, 3) on rows of 4
    np.testing.assert_array_equal(growing_boxes([5, 0, 11], 4), [[1, 1, 2, 2], [0, 0, 2, 2], [0, 0, 3, 4]])


@pytest.mark.parametrize("baseline", [0.3, [0.1, 0.5, 0.9], "blurred"])
@pytest.mark.parametrize("output", ["score", "probability"])
def test_feature_ablation_over_a_grid_equals_the_plain_path(images, baseline, output):
    net = small_net()
    if isinstance(baseline, str):
        baseline = gaussian_blur(images, 2.0)
    backend, log = pasting(net)
    features = grid(24, 4)  # 36 windows of 4 x 4
    got = feature_ablation(backend, images, features=features, baseline=baseline, output=output,
                           perturbations_per_eval=5)
    ref = feature_ablation(net, images, features=features, baseline=baseline, output=output, incremental=False)
    assert_close(got.maps, ref.maps, 1e-5)
    info = got.info
    assert info["incremental"] and info["incremental_images"] == 3 and info["incremental_evaluated"] == 108
    assert info["incremental_windows"] == [(4, 4)] and info["plain_evaluated"] == 0 and "incremental_why" not in info
    assert info["plan"] == {"pasting": True}
    assert [entry["window"] for entry in log] == [(4, 4)] * 3 and [entry["patches"] for entry in log] == [36] * 3
    assert max(entry["largest"] for entry in log) == 3 * 5  # perturbations_per_eval copies of each of the 3 images
    for i, entry in enumerate(log):  # one plan per image, on the image itself
        np.testing.assert_array_equal(entry["image"], images[i:i + 1])
    assert ref.info["incremental"] is False and ref.info["plain_evaluated"] == 108
    assert ref.info["incremental_why"] == "incremental=False was passed"


def test_too_few_small_features_take_the_plain_path(images):
    net = small_net()
    ref = feature_ablation(net, images, features=grid(24, 6), incremental=False)
    backend, log = pasting(net)
    got = feature_ablation(backend, images, features=grid(24, 6))  # 16 windows an image: the plan would not pay
    np.testing.assert_array_equal(got.maps, ref.maps)
    assert got.info["incremental"] is False and log == [] and "fewer than 32 small boxes" in got.info["incremental_why"]
    forced = feature_ablation(backend, images, features=grid(24, 6), incremental=True)
    assert_close(forced.maps, ref.maps, 1e-5)
    assert forced.info["incremental_evaluated"] == 48 and [entry["window"] for entry in log] == [(6, 6)] * 3


def test_irregular_features_share_one_box_and_large_ones_take_the_plain_path(images, any_count):
    net = small_net(1)
    rng = np.random.default_rng(3)
    labels = grid(24, 4).copy()  # 36 cells, then merged unevenly: boxes of 4x4, 4x8, 8x4, 8x8, cut at the border
    labels[labels % 7 == 1] -= 1
    labels[(labels // 6) % 5 == 2] -= 6
    labels = np.stack([labels, rng.permutation(36)[grid(24, 4)], labels.T.copy()])
    labels[2, :, 18:] = 99  # a 24 x 6 column: a side over half the image's, so "auto" leaves it to the plain path
    backend, log = pasting(net)
    got = feature_ablation(backend, images, features=labels, baseline=0.0, perturbations_per_eval=3)
    ref = feature_ablation(net, images, features=labels, baseline=0.0, incremental=False)
    assert_close(got.maps, ref.maps, 1e-5)
    info = got.info
    assert info["incremental"] and info["plain_evaluated"] == 1 and "1 evaluations had a box" in info["incremental_why"]
    assert info["incremental_evaluated"] + 1 == info["evaluated"]
    forced = feature_ablation(pasting(net)[0], images, features=labels, baseline=0.0, incremental=True)
    assert_close(forced.maps, ref.maps, 1e-5)
    assert forced.info["plain_evaluated"] == 0 and (24, 8) in forced.info["incremental_windows"]


def test_feature_ablation_by_hand_on_a_linear_model(any_count):
    """f(x) = w . x: a_l = sum over the pixels p of feature l and the channels of w_p (x_p - b)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 1, bias=False)).eval()
    x = np.random.default_rng(0).random((1, 2, 4, 4), dtype=np.float32)
    labels = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 3, 3, 3]])
    weights = net[1].weight.detach().numpy().reshape(2, 4, 4).astype(np.float64)
    contribution = (weights * (x[0] - 0.5)).sum(axis=0)
    want = np.array([contribution[labels == f].sum() for f in range(4)])[labels]
    got = feature_ablation(pasting(net)[0], x, 0, features=labels, baseline=0.5)
    assert got.info["incremental"]
    np.testing.assert_allclose(got.maps[0], want, rtol=1e-5, atol=1e-6)


def test_no_plan_falls_back_and_says_why_and_true_raises(images, any_count):
    net = small_net()
    features = grid(24, 6)
    ref = feature_ablation(net, images, features=features, incremental=False)
    got = feature_ablation(refusing(net), images, features=features)
    np.testing.assert_array_equal(got.maps, ref.maps)
    assert got.info["incremental"] is False and "no incremental path: attention" in got.info["incremental_why"]
    with pytest.raises(ValueError, match=r"'incremental' parameter of feature_ablation .*attention"):
        feature_ablation(refusing(net), images, features=features, incremental=True)
    curve = deletion(refusing(net), images, blob_maps(3, 24), steps=16)
    assert curve.info["incremental"] is False and "no incremental path: attention" in curve.info["incremental_why"]
    with pytest.raises(ValueError, match=r"'incremental' parameter of insertion .*attention"):
        insertion(refusing(net), images, blob_maps(3, 24), steps=16, incremental=True)


@pytest.mark.parametrize("call", [
    lambda b, x: feature_ablation(b, x, features=grid(24, 6), incremental="yes"),
    lambda b, x: deletion(b, x, np.ones((3, 24, 24)), incremental=1),
    lambda b, x: insertion(b, x, np.ones((3, 24, 24)), incremental=None)])
def test_a_bad_incremental_is_refused_before_any_pass(images, call):
    backend, log = pasting(small_net())
    with batch_sizes(backend, "_forward") as sizes:
        with pytest.raises((ValueError, TypeError), match=r"'incremental' parameter of .* must be 'auto', True or "):
            call(backend, images)
    assert sizes == [] and log == []


def blob_maps(n, size, seed=0):
    """Smooth maps with one peak each: their top pixels lie in a growing box."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    centres = rng.uniform(4, size - 4, (n, 2))
    return np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 20.0).astype(np.float32)


@pytest.mark.parametrize("kind", [deletion, insertion])
@pytest.mark.parametrize("fill", ["mean", "blur", "zero", 0.7, [0.2, 0.4, 0.6]])
def test_early_curve_steps_equal_the_plain_path(images, kind, fill, any_count):
    net = small_net(2)
    maps = blob_maps(3, 24)
    backend, log = pasting(net)
    got = kind(backend, images, maps, steps=16, fill=fill, batch_size=4)
    ref = kind(net, images, maps, steps=16, fill=fill, incremental=False)
    assert_close(got.scores, ref.scores, 1e-5)
    assert_close(got.auc, ref.auc, 1e-5)
    info = got.info
    assert info["incremental"] and info["incremental_images"] == 3
    assert info["incremental_evaluated"] + info["plain_evaluated"] == 17 * 3
    assert info["incremental_evaluated"] >= 3 * 2  # at least the first two steps (16 and 32 pixels) of every image
    start = images if kind is deletion else fill_images(images, fill, "t", sigma=5.0)
    for i, entry in enumerate(log):  # the plan of insertion runs on the filled image
        np.testing.assert_array_equal(entry["image"], start[i:i + 1])
        assert max(entry["window"]) <= 12 and entry["largest"] <= 4  # batch_size


@pytest.mark.parametrize("output", ["score", "probability"])
def test_every_step_through_the_plan_when_forced(images, output):
    net = small_net(3)
    maps = np.random.default_rng(5).random((3, 24, 24)).astype(np.float32)  # scattered: no small box
    auto = deletion(pasting(net)[0], images, maps, steps=8, output=output)
    assert auto.info["incremental"] is False and "had a box with a side over 0.5" in auto.info["incremental_why"]
    forced = deletion(pasting(net)[0], images, maps, steps=8, output=output, incremental=True)
    ref = deletion(net, images, maps, steps=8, output=output, incremental=False)
    assert_close(forced.scores, ref.scores, 1e-5)
    assert forced.info["incremental_evaluated"] == 8 * 3 and forced.info["plain_evaluated"] == 3  # step 0: the image
    scored = cs.metrics.evaluate_metric("deletion", model=pasting(net)[0], x=images, maps=maps,
                                        options={"steps": 8, "incremental": True, "output": output})
    assert_close(scored.scores, ref.auc, 1e-5)
    assert scored.info["incremental"] and scored.info["curve"].info["incremental_evaluated"] == 24


def test_deletion_by_hand_on_a_linear_model(any_count):
    """f(x) = sum of the pixels: deleting the top k pixels to the fill c lowers it by sum (x_p - c)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1, bias=False)).eval()
    with torch.no_grad():
        net[1].weight.fill_(1.0)
    x = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8) / 64
    maps = np.zeros((1, 8, 8), np.float32)
    maps[0, 1, 1], maps[0, 1, 2], maps[0, 2, 1], maps[0, 2, 2] = 4, 3, 2, 1  # then the zeros in raster order
    curve = deletion(pasting(net)[0], x, maps, 0, steps=16, fill=0.25)
    order = [9, 10, 17, 18] + [p for p in range(64) if p not in (9, 10, 17, 18)]
    flat = x.ravel().astype(np.float64)
    want = [flat.sum() - (flat[order[:4 * k]] - 0.25).sum() for k in range(17)]
    np.testing.assert_allclose(curve.scores[0], want, rtol=1e-6)
    # step 1: the 2 x 2 box at (1, 1); step 2 adds row 0's first four pixels: 3 x 4; step 3 is 3 x 8
    assert curve.info["incremental_evaluated"] == 2 and curve.info["incremental_windows"] == [(3, 4)]


def real_plans():
    from torch_models import TinyResNet, randomise_bn

    torch.manual_seed(4)
    net = randomise_bn(TinyResNet().eval())
    cases = [("torch", net, np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32))]
    if importlib.util.find_spec("onnxruntime") is not None:
        cases.append(("onnx", cs.data.demo_path("onnx"), cs.data.shapes(2, seed=3).images))
    return cases


def ablation_in_float64(net, x, features, baseline, classes):
    """Feature ablation by its formula on a float64 copy of ``net``: every ablated image at once."""
    net64 = copy.deepcopy(net).double()
    count = features.max() + 1
    masks = (features[None] == np.arange(count)[:, None, None])[None, :, None]  # (1, L, 1, H, W)
    ablated = np.where(masks, baseline, x[:, None].astype(np.float64))  # (N, L, C, H, W)
    with torch.no_grad():
        clean = net64(torch.from_numpy(x.astype(np.float64))).numpy()[np.arange(len(x)), classes]
        scores = net64(torch.from_numpy(ablated.reshape(-1, *x.shape[1:]))).numpy().reshape(len(x), count, -1)
    drops = clean[:, None] - scores[np.arange(len(x)), :, classes]  # (N, L)
    return drops[:, features]


@pytest.mark.parametrize("name, model, x", real_plans(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_backends_plans_give_the_plain_paths_numbers(name, model, x, any_count):
    backend = cs.load(model)
    if not hasattr(backend, "_incremental_plan"):
        pytest.skip(f"the {name} backend has no incremental plan yet")
    size = x.shape[-1]
    state = None
    if name == "torch":
        state = (model.training, [p.requires_grad for p in model.parameters()], dict(model._forward_hooks))
    features = grid(size, size // 8)  # 64 windows an image: "auto" plans without the fixture too
    got = feature_ablation(backend, x, features=features, baseline=0.5, perturbations_per_eval=7)
    ref = feature_ablation(backend, x, features=features, baseline=0.5, incremental=False)
    assert got.info["incremental"] and got.info["incremental_evaluated"] == 128, got.info
    if name == "torch":  # the drops are small differences of small scores: both paths against float64
        exact = ablation_in_float64(model, x, features, 0.5, got.target)
        scale = np.abs(exact).max()
        plain_error = np.abs(ref.maps - exact).max() / scale
        assert np.abs(got.maps - exact).max() / scale <= 2 * plain_error + 1e-6, plain_error
        assert plain_error < 1e-3
    else:
        assert_close(got.maps, ref.maps, 1e-5)
    maps = blob_maps(2, size, seed=1)
    for kind, fill in [(deletion, "mean"), (insertion, "blur"), (deletion, [0.1, 0.2, 0.3])]:
        curve = kind(backend, x, maps, steps=48, fill=fill, batch_size=5)
        plain = kind(backend, x, maps, steps=48, fill=fill, incremental=False)
        assert curve.info["incremental"] and curve.info["incremental_evaluated"] >= 2 * 4, curve.info
        assert_close(curve.scores, plain.scores, 1e-5)
    if state is not None:  # the user's model as it was
        assert state == (model.training, [p.requires_grad for p in model.parameters()], dict(model._forward_hooks))
