"""Complexity metrics: hand-computed cases, Quantus 0.6 on the demo model's saliency maps,
batching and bad input."""
import warnings

import numpy as np
import pytest

from convscope import metrics as M

COMPLEXITY = {"sparseness": True, "complexity": False, "effective_complexity": False}  # name: higher is better


def _row(*values):
    return np.asarray(values, np.float64).reshape(1, 1, -1)


def test_sparseness_is_the_gini_index_by_hand():
    # sorted |a| = a_(1..4), Gini = sum (2k - 5) a_(k) / (4 sum a), weights -3, -1, 1, 3
    assert M.sparseness(_row(0, 0, 0, 1)).scores[0] == pytest.approx(3 / 4)  # one pixel: 1 - 1/P
    assert M.sparseness(_row(1, 1, 1, 1)).scores[0] == pytest.approx(0)  # uniform
    assert M.sparseness(_row(1, 2, 3, 4)).scores[0] == pytest.approx((-3 - 2 + 3 + 12) / 40)
    assert M.sparseness(_row(-1, 2, -3, 4)).scores[0] == pytest.approx(0.25)  # magnitudes
    assert M.sparseness(_row(4, 3, 2, 1)).scores[0] == pytest.approx(0.25)  # order does not matter
    assert M.sparseness(_row(2, 4, 6, 8)).scores[0] == pytest.approx(0.25)  # nor scale


def test_complexity_is_the_entropy_of_the_fractions_by_hand():
    assert M.complexity(_row(1, 1, 0, 0)).scores[0] == pytest.approx(np.log(2))
    assert M.complexity(_row(1, 1, 1, 1)).scores[0] == pytest.approx(np.log(4))  # the most complex
    assert M.complexity(_row(0, 0, 5, 0)).scores[0] == 0.0  # one pixel
    # |a| = 2, 1, 1, 0: fractions 1/2, 1/4, 1/4: 1/2 ln 2 + 2 (1/4 ln 4) = 1.5 ln 2
    assert M.complexity(_row(2, -1, 1, 0)).scores[0] == pytest.approx(1.5 * np.log(2))


def test_effective_complexity_counts_magnitudes_above_eps_by_hand():
    maps = _row(1e-6, -2e-5, 0.5, 0)
    assert M.effective_complexity(maps).scores[0] == 2  # |-2e-5| and 0.5 exceed 1e-5
    assert M.effective_complexity(maps, eps=0).scores[0] == 3
    assert M.effective_complexity(maps, eps=0.5).scores[0] == 0  # strictly above
    result = M.effective_complexity(np.zeros((2, 3, 3)))
    assert result.scores.tolist() == [0, 0] and result.info == {"eps": 1e-5}


@pytest.mark.parametrize("name", ["sparseness", "complexity"])
def test_an_all_zero_map_is_undefined_and_said(name):
    maps = np.zeros((3, 2, 2))
    maps[1, 0, 0] = 1
    result = getattr(M, name)(maps)
    assert np.isnan(result.scores[[0, 2]]).all() and np.isfinite(result.scores[1])
    assert result.info["undefined"] == {"all-zero map": [0, 2]}


def test_more_concentrated_maps_are_less_complex():
    rng = np.random.default_rng(0)
    spread = rng.random((4, 16, 16))
    peaked = spread ** 8  # the same order, the mass on fewer pixels
    assert (M.sparseness(peaked).scores > M.sparseness(spread).scores).all()
    assert (M.complexity(peaked).scores < M.complexity(spread).scores).all()
    assert (M.effective_complexity(peaked, eps=0.1).scores < M.effective_complexity(spread, eps=0.1).scores).all()


# ---------------------------------------------------------------- against Quantus

@pytest.fixture(scope="module")
def demo_saliency():
    pytest.importorskip("torch")
    quantus = pytest.importorskip("quantus")
    from convscope.attribution import saliency
    from convscope.data import demo_model, shapes

    model = demo_model("torch")
    data = shapes(12, seed=4)
    maps = saliency(model, data.images).maps.astype(np.float64)  # signed, no exact zeros

    def peer(metric, a, **options):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            instance = getattr(quantus, metric)(disable_warnings=True, **options)
            n = len(a)  # the images are not used by these metrics, only counted
            scores = instance(model=model, x_batch=data.images[:n], y_batch=data.labels[:n], a_batch=a[:, None].copy(),
                              channel_first=True, device="cpu")
        return np.asarray(scores, np.float64)
    return maps, peer


@pytest.mark.slow  # importing Quantus imports TensorFlow: about 20 s once
@pytest.mark.backend("torch")
def test_sparseness_matches_quantus(demo_saliency):
    maps, peer = demo_saliency
    # Quantus takes |a| and adds 1e-7 before the Gini formula: give convscope the same values
    np.testing.assert_allclose(M.sparseness(np.abs(maps) + 1e-7).scores, peer("Sparseness", maps, normalise=False),
                               atol=1e-6)
    # Quantus's defaults (divided by the maximum first) differ only by that shift
    np.testing.assert_allclose(M.sparseness(maps).scores, peer("Sparseness", maps), atol=1e-5)


@pytest.mark.slow
@pytest.mark.backend("torch")
def test_complexity_matches_quantus(demo_saliency):
    maps, peer = demo_saliency
    ours = M.complexity(maps).scores
    np.testing.assert_allclose(ours, peer("Complexity", maps, normalise=False), atol=1e-6)
    np.testing.assert_allclose(ours, peer("Complexity", maps), atol=1e-6)  # scale does not matter
    assert (ours < np.log(64 * 64)).all()


@pytest.mark.slow
@pytest.mark.backend("torch")
def test_effective_complexity_matches_quantus(demo_saliency):
    maps, peer = demo_saliency
    for eps in (1e-5, 1e-3, 0.05):
        np.testing.assert_array_equal(M.effective_complexity(maps, eps=eps).scores,
                                      peer("EffectiveComplexity", maps, eps=eps, normalise=False))
    # Quantus's default first divides by the largest magnitude in the whole batch (normalise_by_max
    # over every axis), so an image's count depends on the other images it is passed with
    ours = M.effective_complexity(maps / np.abs(maps).max(), eps=0.01).scores
    np.testing.assert_array_equal(ours, peer("EffectiveComplexity", maps, eps=0.01))
    assert 0 < ours.min() and ours.max() < 64 * 64
    alone = peer("EffectiveComplexity", maps[1:2], eps=0.01)
    assert alone[0] != ours[1]  # the same map, alone in its batch, counts differently in Quantus


# ---------------------------------------------------------------- batching, registry, bad input

@pytest.mark.parametrize("name", COMPLEXITY)
def test_scores_are_per_map_across_chunks(name):
    maps = np.random.default_rng(1).normal(size=(40, 64, 64)) ** 3  # chunks of 16 maps of 64 x 64
    maps[37] = 0
    together = getattr(M, name)(maps)
    one_by_one = [getattr(M, name)(maps[i:i + 1]).scores[0] for i in range(40)]
    np.testing.assert_allclose(together.scores, one_by_one, rtol=1e-12)
    if name != "effective_complexity":
        assert together.info["undefined"] == {"all-zero map": [37]}


@pytest.mark.parametrize("name", COMPLEXITY)
def test_registered_and_run_by_name(name):
    spec = M.get_metric(name)
    assert spec.family == "complexity" and spec.higher_is_better is COMPLEXITY[name] and spec.needs == {"maps"}
    assert name in M.__all__
    from convscope.attribution import AttributionMaps

    maps = np.random.default_rng(2).random((3, 5, 5)).astype(np.float32)
    result = AttributionMaps(maps, np.zeros((3, 3, 5, 5), np.float32), "x")
    by_name = M.evaluate_metric(name, maps=result, masks=None, model=None)
    assert by_name.metric == name and by_name.higher_is_better is COMPLEXITY[name]
    np.testing.assert_array_equal(by_name.scores, getattr(M, name)(maps).scores)


@pytest.mark.parametrize("name", COMPLEXITY)
def test_complexity_bad_input(name):
    fn = getattr(M, name)
    bad = np.zeros((2, 4, 4))
    bad[0, 1, 1] = np.inf
    with pytest.raises(ValueError, match=rf"'maps' parameter of {name} must be finite \(no NaN or Inf\). Got 1 "):
        fn(bad)
    with pytest.raises(ValueError, match=rf"'maps' parameter of {name} must be \(N, H, W\) maps .* Got shape \(4, 4\)"):
        fn(np.zeros((4, 4)))
    with pytest.raises(TypeError, match=rf"'maps' parameter of {name} must be a numeric \(N, H, W\) array"):
        fn(np.zeros((1, 4, 4), bool))
    with pytest.raises(TypeError, match=rf"'maps' parameter of {name} must be \(N, H, W\) maps"):
        fn("maps.npy")


def test_effective_complexity_bad_eps():
    with pytest.raises(ValueError, match=r"'eps' parameter of effective_complexity must be >= 0. Got -1"):
        M.effective_complexity(np.ones((1, 2, 2)), eps=-1)
    with pytest.raises(TypeError, match=r"'eps' parameter of effective_complexity must be a number"):
        M.effective_complexity(np.ones((1, 2, 2)), eps="small")


@pytest.mark.backend("torch")
def test_the_docs_complexity_numbers_are_recomputed():
    pytest.importorskip("torch")
    from test_metrics_localisation import _docs_table, demo_maps

    _, maps = demo_maps()
    quoted = _docs_table("Complexity")
    assert set(quoted) == set(maps)
    for name, m in maps.items():
        ours = [getattr(M, metric)(m).mean for metric in COMPLEXITY]
        np.testing.assert_allclose(ours, quoted[name], rtol=0.01, err_msg=name)
