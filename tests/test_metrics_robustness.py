"""Robustness metrics against Quantus 0.6 on the same model, maps and noise, and on cases
worked out by hand: max- and average sensitivity (Yeh et al. 2019), the local Lipschitz
estimate (Alvarez-Melis and Jaakkola 2018)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
quantus = pytest.importorskip("quantus")

import convscope
from convscope import metrics as M
from convscope.attribution import AttributionMaps
from convscope.data import demo_model, shapes

pytestmark = pytest.mark.backend("torch")


@pytest.fixture(scope="module")
def demo():
    x = shapes(3, seed=1).images.astype(np.float32)
    model = demo_model("torch")
    return model, x, convscope.load(model).forward(x).argmax(axis=1)


def draws(seed, radius):
    """Quantus's perturb_func giving the noise the docstring promises: draw k of ``seed``."""
    state = {"k": 0}

    def perturb(arr, indices, **_):
        noise = np.random.default_rng([seed, state["k"]]).uniform(-radius, radius, arr.shape)
        state["k"] += 1
        out = arr.copy()
        out[:] = arr + noise  # float64 sum rounded to the images' float32, as Quantus's own noise is
        return out
    return perturb


def saliency_for_quantus(model, inputs, targets, **_):
    return convscope.saliency(model, np.asarray(inputs, np.float32), np.asarray(targets)).maps[:, None]


PER_IMAGE = {"normalise_axes": (1, 2, 3)}  # Quantus's max over each image, not over the batch


@pytest.mark.parametrize("ours, theirs", [(M.max_sensitivity, quantus.MaxSensitivity),
                                          (M.avg_sensitivity, quantus.AvgSensitivity)])
@pytest.mark.parametrize("normalise", [True, False])
def test_sensitivity_equals_quantus(demo, ours, theirs, normalise):
    model, x, y = demo
    q = theirs(nr_samples=4, normalise=normalise, normalise_func_kwargs=PER_IMAGE, perturb_func=draws(7, 0.05),
               disable_warnings=True)
    expected = np.array(q(model, x, y, None, explain_func=saliency_for_quantus, channel_first=True))
    got = ours(model, x, "saliency", samples=4, radius=0.05, seed=7, normalise=normalise)
    assert got.metric == ours.__name__ and not got.higher_is_better
    np.testing.assert_allclose(got.scores, expected, rtol=1e-6)
    assert got.scores.min() > 0.05  # the demo model is not linear: the maps do move
    assert got.info["target"].tolist() == y.tolist()
    assert "predicted on each clean image" in got.info["choices"]["target"]


@pytest.mark.parametrize("normalise", [False, True])
def test_local_lipschitz_equals_quantus(demo, normalise):
    model, x, y = demo
    q = quantus.LocalLipschitzEstimate(nr_samples=4, normalise=normalise, normalise_func_kwargs=PER_IMAGE,
                                       perturb_func=draws(3, 0.1), disable_warnings=True)
    expected = np.array(q(model, x, y, None, explain_func=saliency_for_quantus, channel_first=True))
    got = M.local_lipschitz_estimate(model, x, "saliency", samples=4, radius=0.1, seed=3, normalise=normalise)
    np.testing.assert_allclose(got.scores, expected, rtol=1e-6)  # Quantus adds 1e-10 to ||x - x'|| (~3.2)


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_scores_do_not_depend_on_the_batch_size(demo, batch_size):
    model, x, _ = demo
    whole = M.max_sensitivity(model, x, "input_x_gradient", samples=3, batch_size=64)
    part = M.max_sensitivity(model, x, "input_x_gradient", samples=3, batch_size=batch_size)
    np.testing.assert_allclose(part.scores, whole.scores, rtol=1e-5)  # the same draws; float32 kernels vary


def test_the_method_explains_stacks_of_perturbed_copies(demo):
    model, x, _ = demo
    calls = []

    def method(model, images, target):
        calls.append((len(images), np.asarray(target).tolist()))
        return convscope.saliency(model, images, target)
    M.avg_sensitivity(model, x, method, samples=4, batch_size=8, target=2)
    assert calls == [(3, [2, 2, 2]), (8, [2] * 8), (4, [2] * 4)]  # clean, then 12 copies in 2 calls


class Linear(torch.nn.Module):
    def __init__(self, features=3 * 8 * 8, classes=3):
        super().__init__()
        self.fc = torch.nn.Linear(features, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_saliency_of_a_linear_model_has_zero_sensitivity():
    """The gradient of W x + b is W: no noise can move it, in any norm."""
    torch.manual_seed(0)
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    for fn in (M.max_sensitivity, M.avg_sensitivity):
        for norm in ("fro", "inf"):
            assert fn(Linear(), x, "saliency", radius=0.3, samples=5, norm=norm).scores.tolist() == [0.0, 0.0]
    assert M.local_lipschitz_estimate(Linear(), x, "saliency", samples=5).scores.tolist() == [0.0, 0.0]
    assert M.max_sensitivity(Linear(), x, "input_x_gradient", radius=0.3).scores.min() > 0.01


def scripted(maps):
    """A method that returns the given (1, 1, 2) maps in turn: the clean one, then one per draw."""
    queue = [np.asarray(m, np.float32).reshape(1, 1, 2) for m in maps]
    seen = []

    def method(model, x, target):
        seen.append(np.asarray(target).tolist())
        return AttributionMaps(queue.pop(0), x, "scripted", np.asarray(target))
    return method, seen


def test_sensitivity_by_hand():
    """Clean map [3, 4] (norm 5); the copies' maps [3, 5] and [3, 6] differ by norms 1 and 2.

    As they come: ratios 1/5 and 2/5, max 0.4, mean 0.3. Each divided by its own maximum:
    [0.75, 1] against [0.6, 1] and [0.5, 1]: differences 0.15 and 0.25 over the clean norm
    1.25, ratios 0.12 and 0.2, max 0.2, mean 0.16. In the L-inf norm, as they come: 1/4, 2/4.
    """
    model, x = Linear(2), np.ones((1, 1, 1, 2), np.float32)  # a 1x2 image, maps of 1x2

    def run(fn, **kw):
        method, seen = scripted([[3, 4], [3, 5], [3, 6]])
        scores = fn(model, x, method, target=1, samples=2, batch_size=1, **kw).scores
        assert seen == [[1], [1], [1]]  # every copy explains the clean image's class
        return scores[0]
    assert run(M.max_sensitivity, normalise=False) == pytest.approx(0.4)
    assert run(M.avg_sensitivity, normalise=False) == pytest.approx(0.3)
    assert run(M.max_sensitivity) == pytest.approx(0.2)
    assert run(M.avg_sensitivity) == pytest.approx(0.16)
    assert run(M.max_sensitivity, normalise=False, norm="inf") == pytest.approx(0.5)
    assert run(M.avg_sensitivity, normalise=False, norm="inf") == pytest.approx(0.375)


def test_local_lipschitz_of_a_scaled_identity_is_the_scale():
    """phi(x) = 2.5 x (one channel): ||phi(x) - phi(x')|| / ||x - x'|| = 2.5 for every draw."""
    x = np.random.default_rng(1).random((2, 1, 4, 4), dtype=np.float32)

    def method(model, images, target):
        return AttributionMaps(2.5 * images[:, 0], images, "scaled", np.asarray(target))
    got = M.local_lipschitz_estimate(Linear(16), x, method, samples=6)
    np.testing.assert_allclose(got.scores, 2.5, rtol=1e-5)
    np.testing.assert_allclose(got.info["ratios"], 2.5, rtol=1e-5)


def test_a_zero_map_has_no_relative_change():
    x = np.ones((1, 1, 1, 2), np.float32)
    method, _ = scripted([[0, 0], [1, 0]])
    got = M.max_sensitivity(Linear(2), x, method, samples=1)
    assert np.isnan(got.scores[0]) and "zero everywhere" in got.info["undefined"]


def test_registered_and_run_by_name(demo):
    model, x, _ = demo
    for name in ("max_sensitivity", "avg_sensitivity", "local_lipschitz_estimate"):
        spec = M.get_metric(name)
        assert spec.family == "robustness" and not spec.higher_is_better
        by_name = M.evaluate_metric(name, model=model, x=x[:1], method=("smoothgrad", {"samples": 2}), maps=None,
                             options={"samples": 2})
        direct = getattr(M, name)(model, x[:1], ("smoothgrad", {"samples": 2}), samples=2)
        np.testing.assert_array_equal(by_name.scores, direct.scores)


def test_bad_arguments_are_refused_before_any_pass(demo):
    model, x, _ = demo
    with pytest.raises(ValueError, match=r"'method' parameter of max_sensitivity must be an attribution method.*"
                                         r"did you mean 'saliency'"):
        M.max_sensitivity(model, x, "salency")
    with pytest.raises(ValueError, match=r"'norm' parameter of avg_sensitivity must be one of 'fro', 'inf'"):
        M.avg_sensitivity(model, x, "saliency", norm="l1")
    with pytest.raises(ValueError, match=r"'radius' parameter of local_lipschitz_estimate must be > 0"):
        M.local_lipschitz_estimate(model, x, "saliency", radius=0)
    with pytest.raises(ValueError, match=r"'samples' parameter of max_sensitivity must be >= 1"):
        M.max_sensitivity(model, x, "saliency", samples=0)
    with pytest.raises(TypeError, match=r"'normalise' parameter of max_sensitivity must be True or False"):
        M.max_sensitivity(model, x, "saliency", normalise="yes")
    with pytest.raises(ValueError, match=r"'target' parameter of max_sensitivity must be a class index in \[0, 3\]"):
        M.max_sensitivity(model, x, "saliency", target=7)


def test_the_model_is_left_as_it_was(demo):
    model, x, _ = demo
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    M.max_sensitivity(model, x[:1], "saliency", samples=2)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model.eval()


@pytest.mark.parametrize("kind", ["onnx", "keras"])
def test_the_same_scores_on_every_backend(demo, kind):
    """The demo files hold the same weights: the scores agree across frameworks."""
    pytest.importorskip({"onnx": "onnxruntime", "keras": "tensorflow"}[kind])
    from convscope.data import demo_path
    _, x, _ = demo
    here = M.max_sensitivity(demo[0], x, "saliency", samples=3)
    there = M.max_sensitivity(str(demo_path(kind)), x, "saliency", samples=3)
    np.testing.assert_allclose(there.scores, here.scores, rtol=1e-3)
