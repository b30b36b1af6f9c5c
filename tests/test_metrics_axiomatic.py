"""Axiomatic metrics against Captum (integrated gradients' convergence delta), Quantus 0.6 on
the same model and maps, and cases worked out by hand: completeness (Sundararajan et al.
2017), input invariance (Kindermans et al. 2017), non-sensitivity (Nguyen and Martinez 2020)."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
quantus = pytest.importorskip("quantus")
captum_attr = pytest.importorskip("captum.attr")

import convscope
from convscope import metrics as M
from convscope.data import demo_model, shapes

pytestmark = pytest.mark.backend("torch")


@pytest.fixture(scope="module")
def demo():
    x = shapes(3, seed=2).images.astype(np.float32)
    model = demo_model("torch")
    return model, x, convscope.load(model).forward(x).argmax(axis=1)


# --------------------------------------------------------------------------- integrated gradients' delta
# not riemann_trapezoid: Captum's trapezoid weights are 1/n (1/(2n) at the ends) on nodes 1/(n-1)
# apart, summing to (n-1)/n, so its attributions are (n-1)/n of the trapezoid rule's (convscope's)
@pytest.mark.parametrize("method", ["riemann_middle", "riemann_right", "gausslegendre"])
@pytest.mark.parametrize("target, baseline", [(None, None), (1, 0.5)])
def test_integrated_gradients_delta_equals_captums(demo, method, target, baseline):
    model, x, y = demo
    ours = convscope.integrated_gradients(model, x, target, steps=12, method=method, baseline=baseline)
    explained = y if target is None else np.full(len(x), target)
    base = torch.zeros(x.shape) if baseline is None else torch.full(x.shape, baseline)
    a, delta = captum_attr.IntegratedGradients(model).attribute(
        torch.tensor(x), base, target=torch.tensor(explained), n_steps=12, method=method,
        return_convergence_delta=True)
    np.testing.assert_allclose(ours.attributions, a.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(ours.info["delta"], delta.detach().numpy(), atol=1e-5)
    assert np.abs(ours.info["delta"]).max() > 1e-3  # 12 steps on a ReLU net are not exact: the test can fail
    assert ours[1:].info["delta"].shape == (2,)  # a sub-batch keeps its own deltas


# --------------------------------------------------------------------------- completeness
class Doubler(torch.nn.Module):
    """Scores [2 sum(x) + 1, -sum(x)]."""

    def forward(self, x):
        s = x.flatten(1).sum(dim=1, keepdim=True)
        return torch.cat([2 * s + 1, -s], dim=1)


def test_completeness_by_hand():
    """x = 0.5 on 4 pixels: S0(x) = 2 * 2 + 1 = 5, S0(0) = 1, a change of 4. Maps of ones add up
    to 4 (gap 0), of twos to 8 (gap 4); against baseline 0.25, S0(x') = 3: change 2."""
    x = np.full((1, 1, 2, 2), 0.5, np.float32)
    ones, twos = np.ones((1, 2, 2), np.float32), np.full((1, 2, 2), 2, np.float32)
    assert M.completeness(Doubler(), x, ones, 0).scores.tolist() == [0.0]
    got = M.completeness(Doubler(), x, twos, 0)
    assert got.scores.tolist() == [4.0] and got.info["delta"].tolist() == [4.0]
    assert got.info["difference"].tolist() == [4.0] and got.info["sum"].tolist() == [8.0]
    assert M.completeness(Doubler(), x, ones, 0, baseline=0.25).scores.tolist() == [2.0]
    # class 1: S1(x) - S1(0) = -2, ones add up to 4: gap 6
    assert M.completeness(Doubler(), x, ones, 1).scores.tolist() == [6.0]
    # integrated gradients of a linear score is exact
    ig = convscope.integrated_gradients(Doubler(), x, 0, steps=3)
    assert M.completeness(Doubler(), x, ig).scores[0] < 1e-6


def test_completeness_equals_quantus_on_the_same_maps(demo):
    """Quantus answers ``sum a == f(x) - f(x')``; its output_func sees the difference itself."""
    model, x, y = demo
    ig = convscope.integrated_gradients(model, x, steps=8)
    seen = []
    q = quantus.Completeness(normalise=False, perturb_baseline=0.0, disable_warnings=True,
                             output_func=lambda d: seen.append(np.array(d)) or d)
    verdict = q(model, x, y, ig.attributions, channel_first=True)
    got = M.completeness(model, x, ig)
    np.testing.assert_allclose(got.info["difference"], seen[0], rtol=1e-6, atol=1e-6)  # float32 rounding
    np.testing.assert_allclose(got.scores, np.abs(ig.attributions.reshape(3, -1).sum(1) - seen[0]), atol=2e-5)
    assert list(verdict) == list(got.scores == 0) == [False] * 3
    np.testing.assert_allclose(got.info["delta"], ig.info["delta"], atol=1e-5)  # the metric is IG's own delta
    assert got.info["summed"] == "attributions"
    assert got.info["target"].tolist() == y.tolist()


def test_completeness_on_probabilities(demo):
    model, x, y = demo
    maps = np.zeros((3, 64, 64), np.float32)
    got = M.completeness(model, x, maps, output="probability", baseline="mean")
    p = convscope._targets.softmax
    out, base = convscope.load(model).forward(x), convscope.load(model).forward(
        np.broadcast_to(x.mean(axis=(2, 3), keepdims=True), x.shape).copy())
    expected = np.abs(p(out)[np.arange(3), y] - p(base)[np.arange(3), y])
    np.testing.assert_allclose(got.scores, expected, atol=1e-6)


# --------------------------------------------------------------------------- input invariance
def unpadded(channels=3):
    """conv 3x3 without padding, ReLU, linear: a first layer that can absorb a shift (a
    Sequential, whose first module is the conv, as Quantus's shifted copy expects)."""
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(channels, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 6 * 6, 3)).eval()  # Quantus refuses a model in training mode


def _explainer(name):
    def explain(model, inputs, targets, **_):
        return getattr(convscope, name)(model, np.asarray(inputs, np.float32), np.asarray(targets)).maps[:, None]
    return explain


@pytest.mark.parametrize("method, invariant", [("saliency", 1.0), ("input_x_gradient", 0.0)])
def test_input_invariance_equals_quantus(method, invariant):
    """Kindermans et al.: the gradient ignores a constant shift absorbed by the first bias,
    input x gradient does not."""
    model = unpadded()
    x = np.random.default_rng(0).random((4, 3, 8, 8), dtype=np.float32)
    y = convscope.load(model).forward(x).argmax(axis=1)
    # Quantus 0.6's perturb_batch hands its shift indices[i][1:]: the first value of every image
    # stays unshifted, which is not the paper's shift; this one shifts every value
    q = quantus.InputInvariance(input_shift=-1, disable_warnings=True,
                                perturb_func=lambda arr, input_shift, **_: arr + input_shift)
    expected = np.array(q(model, x, y, None, explain_func=_explainer(method), channel_first=True), np.float64)
    got = M.input_invariance(model, x, method, shift=-1.0)
    assert got.scores.tolist() == expected.tolist() == [invariant] * 4
    assert got.info["output_difference"].max() < 1e-4  # the shifted model computes the same function
    assert got.info["shifted_model"] == "the bias of '0' absorbs the shift"


def test_input_invariance_with_a_shifted_model_made_by_hand():
    model = unpadded()
    shifted = copy.deepcopy(model)
    with torch.no_grad():  # b' = b - shift * sum W, shift = 0.5
        shifted[0].bias -= 0.5 * shifted[0].weight.sum(dim=(1, 2, 3))
    x = np.random.default_rng(1).random((2, 3, 8, 8), dtype=np.float32)
    by_hand = M.input_invariance(model, x, "input_x_gradient", shift=0.5, shifted_model=shifted)
    made = M.input_invariance(model, x, "input_x_gradient", shift=0.5)
    assert by_hand.scores.tolist() == made.scores.tolist() == [0.0, 0.0]
    np.testing.assert_allclose(by_hand.info["max_difference"], made.info["max_difference"], rtol=1e-5)
    # a = x g against a' = (x + 0.5) g with the same g: the difference is 0.5 * sum_c g_c
    g = convscope.saliency(model, x, variant="raw").maps
    np.testing.assert_allclose(made.info["max_difference"], 0.5 * np.abs(g).reshape(2, -1).max(1), rtol=1e-4)


def test_input_invariance_says_when_a_padded_first_layer_breaks_the_premise(demo):
    model, x, _ = demo  # conv1 pads by 1: the border sees zeros, not shifted values
    got = M.input_invariance(model, x, "saliency")
    assert np.isnan(got.scores).all() and "padded first layer" in got.info["undefined"]
    assert got.info["output_difference"].min() > 1e-3


# --------------------------------------------------------------------------- non-sensitivity
class LeftHalf(torch.nn.Module):
    """One channel, 8 x 8; the right half of the image never reaches the scores."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.net = unpadded(1)
        self.register_buffer("keep", (torch.arange(8) < 4).float().expand(8, 8).clone())
        self.eval()

    def forward(self, x):
        return self.net(x * self.keep)


@pytest.mark.parametrize("maps_kind", ["saliency", "random"])
def test_non_sensitivity_equals_quantus(maps_kind):
    model = LeftHalf()
    x = np.random.default_rng(3).random((3, 1, 8, 8), dtype=np.float32)
    sal = convscope.saliency(model, x)
    maps = sal.maps if maps_kind == "saliency" else np.random.default_rng(4).random((3, 8, 8)).astype(np.float32)
    q = quantus.NonSensitivity(abs=True, normalise=True, normalise_func_kwargs={"normalise_axes": (1, 2, 3)},
                               perturb_baseline=0.0, features_in_step=1, eps=1e-5, disable_warnings=True)
    expected = np.array(q(model, x, sal.target, maps[:, None], channel_first=True, softmax=False), np.float64)
    got = M.non_sensitivity(model, x, maps, sal.target, fill=0.0, batch_size=17)
    assert got.scores.tolist() == expected.tolist()
    if maps_kind == "saliency":  # the right half: zero gradient and no effect, never counted
        assert got.scores.max() < 32
    else:  # every right-half pixel is attributed but changes nothing
        assert (got.info["attributed_but_insensitive"] >= 32).all()
    probs = np.array(q(model, x, sal.target, maps[:, None], channel_first=True, softmax=True), np.float64)
    assert M.non_sensitivity(model, x, maps, sal.target, fill=0.0, output="probability").scores.tolist() == \
        probs.tolist()


class TopLeft(torch.nn.Module):
    """Scores [x[0, 0], 0] of a one-channel 2 x 2 image."""

    def forward(self, x):
        s = x[:, 0, 0, 0]
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_non_sensitivity_by_hand():
    """The score reads pixel (0, 0) only; the map attributes (0, 0) and (1, 0).

    Pixel by pixel: (0, 0) attributed and sensitive, (0, 1) neither, (1, 1) neither: agree;
    (1, 0) attributed but replacing it changes nothing: 1. In pairs (raster order), the first
    pair {(0, 0), (0, 1)} changes the score, so (0, 1) is zero but sensitive, and (1, 0) is still
    attributed in an insensitive pair: 2.
    """
    x = np.full((1, 1, 2, 2), 0.7, np.float32)
    maps = np.array([[[1.0, 0.0], [0.3, 0.0]]], np.float32)
    got = M.non_sensitivity(TopLeft(), x, maps, 0)
    assert got.scores.tolist() == [1.0]
    assert got.info["attributed_but_insensitive"].tolist() == [1] and got.info["zero_but_sensitive"].tolist() == [0]
    got = M.non_sensitivity(TopLeft(), x, maps, 0, features_in_step=2)
    assert got.scores.tolist() == [2.0] and got.info["zero_but_sensitive"].tolist() == [1]
    # an attribution below eps of the map's maximum counts as zero
    tiny = np.array([[[1.0, 1e-7], [0.0, 0.0]]], np.float32)
    assert M.non_sensitivity(TopLeft(), x, tiny, 0).scores.tolist() == [0.0]


# --------------------------------------------------------------------------- the registry, bad input
def test_registered_with_their_directions(demo):
    model, x, _ = demo
    assert {n: (M.get_metric(n).family, M.get_metric(n).higher_is_better)
            for n in ("completeness", "input_invariance", "non_sensitivity")} == \
        {"completeness": ("axiomatic", False), "input_invariance": ("axiomatic", True),
         "non_sensitivity": ("axiomatic", False)}
    ig = convscope.integrated_gradients(model, x[:1], steps=4)
    assert M.evaluate_metric("completeness", model=model, x=x[:1], maps=ig).scores == pytest.approx(
        np.abs(ig.info["delta"]), abs=1e-5)
    small = M.evaluate_metric("non_sensitivity", model=model, x=x[:1], maps=ig, options={"features_in_step": 256})
    assert small.info["features_in_step"] == 256 and 0 <= small.scores[0] <= 64 * 64


def test_bad_arguments_are_refused(demo):
    model, x, _ = demo
    maps = np.ones((3, 64, 64), np.float32)
    with pytest.raises(ValueError, match=r"'output' parameter of completeness must be one of 'score', 'probability'"):
        M.completeness(model, x, maps, output="logit")
    with pytest.raises(ValueError, match=r"'maps' parameter of completeness must be one map per image \(3\)"):
        M.completeness(model, x, maps[:2])
    with pytest.raises(ValueError, match=r"'baseline' parameter of completeness must be 'mean', 'zero', 'blur'"):
        M.completeness(model, x, maps, baseline="black")
    with pytest.raises(ValueError, match=r"'features_in_step' parameter of non_sensitivity must be <= 4096"):
        M.non_sensitivity(model, x, maps, features_in_step=5000)
    with pytest.raises(ValueError, match=r"'eps' parameter of non_sensitivity must be >= 0"):
        M.non_sensitivity(model, x, maps, eps=-1)
    with pytest.raises(ValueError, match=r"'target' parameter of non_sensitivity must be a class index in \[0, 3\]"):
        M.non_sensitivity(model, x, maps, 9)
    with pytest.raises(ValueError, match=r"'method' parameter of input_invariance must be an attribution method"):
        M.input_invariance(model, x, "gradcam")
    with pytest.raises(ValueError, match=r"'model' parameter of input_invariance must be a model whose first layer "
                                         r"is a conv or linear layer with a bias"):
        M.input_invariance(Doubler(), np.ones((1, 1, 2, 2), np.float32), "saliency")


@pytest.mark.slow
def test_input_invariance_on_an_onnx_export():
    """The ONNX backend replaces the first Conv's bias initializer: the same verdicts as torch."""
    pytest.importorskip("onnxruntime")
    import io
    import warnings

    net = unpadded()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 8, 8),), buffer, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, opset_version=17, dynamo=False)
    exported = convscope.load(buffer.getvalue())
    x = np.random.default_rng(5).random((3, 3, 8, 8), dtype=np.float32)
    for method, verdict in (("saliency", 1.0), ("input_x_gradient", 0.0)):
        got = M.input_invariance(exported, x, method)
        assert got.scores.tolist() == M.input_invariance(net, x, method).scores.tolist() == [verdict] * 3
        assert got.info["output_difference"].max() < 1e-4


@pytest.mark.slow
def test_input_invariance_on_a_keras_model():
    """Keras's with_weights (a clone) shifts a Conv2D whose ReLU is fused into it: the bias is
    added before the activation, so the verdicts are those of torch's unpadded net."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, activation="relu"),
                            keras.layers.Flatten(), keras.layers.Dense(3)])
    x = np.random.default_rng(5).random((3, 3, 8, 8), dtype=np.float32)
    for method, verdict in (("saliency", 1.0), ("input_x_gradient", 0.0)):
        got = M.input_invariance(net, x, method)
        assert got.scores.tolist() == [verdict] * 3 and got.info["output_difference"].max() < 1e-4
