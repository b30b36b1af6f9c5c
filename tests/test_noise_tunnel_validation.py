"""noise_tunnel checks the inner method's options before any pass: a backend that counts its
framework calls sees none before the error, which names the option and the inner method; good
options cost no extra pass; a user's callable is never called before the clean pass."""
import numpy as np
import pytest

import convscope
from convscope import attribution as A
from convscope.data import demo_model, demo_path, shapes
from _assertions import batch_sizes

X = shapes(2, seed=0).images
GRID = ((np.arange(64)[:, None] // 16) * 4 + np.arange(64)[None] // 16).astype(np.int64)  # 16 features

BAD = [
    ("integrated_gradients", {"steps": 0}, ValueError, "'steps' parameter of integrated_gradients"),
    ("integrated_gradients", {"baseline": np.zeros(5)}, ValueError, "'baseline' parameter of integrated_gradients"),
    ("saliency", {"variant": "loud"}, ValueError, "'variant' parameter of saliency"),
    ("saliency", {"layer": "relu9"}, ValueError, "'layer' parameter of saliency"),
    ("lime", {"samples": 1, "features": GRID}, ValueError, "'samples' parameter of lime"),
    ("kernel_shap", {"features": "nope"}, ValueError, "'features' parameter of kernel_shap"),
    ("shapley_sampling", {"samples": 0, "features": GRID}, ValueError, "'samples' parameter of shapley_sampling"),
    ("feature_ablation", {"baseline": "grey"}, TypeError, "'baseline' parameter of feature_ablation"),
    ("rise", {"p": 2.0}, ValueError, "'p' parameter of rise"),
    ("occlusion", {"window": 100}, ValueError, "'window' parameter of occlusion"),
    ("lrp", {"composite": "nope"}, ValueError, "'composite' parameter of lrp"),
    ("lrp", {"rules": {"relu9": "epsilon"}}, ValueError, "'rules' parameter of lrp"),
    ("deeplift", {"baseline": "x"}, TypeError, "'baseline' parameter of deeplift"),
    # names: one the method does not take, one noise_tunnel gives itself
    ("integrated_gradients", {"stepz": 3}, TypeError, "'method' parameter of noise_tunnel .* option 'stepz' for "
                                                      "integrated_gradients"),
    ("saliency", {"target": 1}, TypeError, "option 'target' for saliency"),
]


def counted(backend):
    """Context managers counting the backend's forward, activation and gradient calls."""
    return [batch_sizes(backend, m) for m in ("_forward", "_activations", "_gradient")]


def run_counting(backend, **kwargs):
    f, a, g = counted(backend)
    with f as fw, a as ac, g as gr:
        try:
            return A.noise_tunnel(backend, X, samples=4, perturbations_per_eval=2, **kwargs), fw + ac + gr
        except Exception as err:  # the error and the calls made before it
            err.calls = fw + ac + gr
            raise


@pytest.fixture(scope="module", params=["torch", "onnx"])
def backend(request):
    return convscope.load(demo_model("torch").eval() if request.param == "torch" else demo_path("onnx"))


@pytest.mark.parametrize("method, options, kind, message", BAD, ids=[f"{m}-{next(iter(o))}" for m, o, _, _ in BAD])
def test_a_bad_inner_option_raises_before_any_pass(backend, method, options, kind, message):
    with pytest.raises(kind, match=message) as caught:
        run_counting(backend, method=(method, options))
    assert caught.value.calls == [], caught.value.calls


def test_good_options_cost_no_extra_pass(backend, monkeypatch):
    # saliency: one clean forward of the 2 images, then one gradient call per chunk of 2 draws x 2 images
    _, calls = run_counting(backend, method="saliency")
    assert calls == [2, 4, 4]
    cases = [("integrated_gradients", {"steps": 4, "batch_size": 16}), ("lime", {"samples": 8, "features": GRID}),
             ("lrp", {"composite": "EpsilonGammaBox"}), ("rise", {"masks": 8})]
    checked = [run_counting(backend, method=m)[1] for m in cases]
    module = __import__("convscope.attribution.noise_tunnel", fromlist=["_check_options"])
    monkeypatch.setattr(module, "_check_options", lambda *args: None)  # the tunnel without the early checks
    assert checked == [run_counting(backend, method=m)[1] for m in cases]


def test_a_callable_is_called_only_after_the_clean_pass(backend):
    seen = []

    def inner(model, x, target, *, scale=1.0):
        seen.append(len(x))
        return A.saliency(model, x, target)

    with pytest.raises(TypeError, match="option 'shift' for inner"):
        run_counting(backend, method=(inner, {"shift": 1.0}))
    assert seen == []
    _, calls = run_counting(backend, method=(inner, {"scale": 2.0}))
    assert seen == [4, 4] and calls == [2, 4, 4]


def test_the_result_is_unchanged_by_the_checks(backend):
    noise = np.random.default_rng(0).normal(0, 0.1, (4, *X.shape)).astype(np.float32)
    got = A.noise_tunnel(backend, X, method=("integrated_gradients", {"steps": 4}), noise=noise)
    classes = got.target
    ref = np.mean([A.integrated_gradients(backend, X + e, classes, steps=4).attributions for e in noise], axis=0)
    np.testing.assert_allclose(got.attributions, ref, rtol=1e-5, atol=1e-7)
