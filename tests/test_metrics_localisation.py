"""Localisation metrics: hand-computed cases, Quantus 0.6 on the demo model's Grad-CAM maps,
ties, masks of other sizes and bad input."""
import warnings

import numpy as np
import pytest

from convscope import metrics as M
from convscope.metrics.localisation import bounding_boxes

LOCALISATION = ("relevance_mass_accuracy", "relevance_rank_accuracy", "top_k_intersection", "mask_auc",
                "energy_pointing_game")
SMALL = {"top_k_intersection": {"k": 0.25}}  # options for maps smaller than top-k's default 1000 pixels


def _fn(name):
    """The metric ``name`` with the options small test maps need."""
    fn = getattr(M, name)
    return lambda maps, masks: fn(maps, masks, **SMALL.get(name, {}))


def _one(values, mask):
    return np.asarray(values, np.float64)[None], np.asarray(mask, bool)[None]


# ---------------------------------------------------------------- hand-computed cases

def test_relevance_mass_accuracy_counts_positive_relevance_only():
    maps, mask = _one([[3, -1, 0], [1, 2, -4]], [[1, 1, 0], [0, 0, 0]])
    # positive part 3, 0, 0 / 1, 2, 0: total 6, inside the mask 3 (the -1 inside counts 0)
    assert M.relevance_mass_accuracy(maps, mask).scores[0] == pytest.approx(0.5)
    # Quantus's signed ratio would be (3 - 1) / (3 - 1 + 1 + 2 - 4) = 2: not a share


def test_relevance_mass_accuracy_is_undefined_without_mask_or_positive_relevance():
    maps = np.array([[[1.0, 2.0], [3.0, 4.0]], [[-1.0, -2.0], [0.0, -4.0]], [[1.0, 0.0], [0.0, 1.0]]])
    masks = np.array([[[0, 0], [0, 0]], [[1, 0], [0, 0]], [[1, 0], [0, 0]]], bool)
    result = M.relevance_mass_accuracy(maps, masks)
    assert np.isnan(result.scores[:2]).all() and result.scores[2] == 0.5
    assert result.info["undefined"] == {"empty mask": [0], "no positive relevance": [1]}
    assert result.mean == 0.5  # the mean leaves undefined images out


def test_relevance_rank_accuracy_by_hand():
    maps, mask = _one([[5, 4, 3], [2, 1, 0]], [[1, 0, 0], [0, 1, 0]])
    # K = 2: the two most relevant pixels are 5 (in the mask) and 4 (not)
    assert M.relevance_rank_accuracy(maps, mask).scores[0] == pytest.approx(0.5)
    assert M.relevance_rank_accuracy(-maps, mask).scores[0] == pytest.approx(0.5)  # 0 (in) and 1 (not)
    assert M.relevance_rank_accuracy(maps, [[[1, 1, 0], [0, 0, 0]]]).scores[0] == 1.0


def test_rank_accuracy_counts_ties_by_their_expected_share():
    maps = np.array([[[1, 1, 1], [1, 0, 0]]] * 2, np.float64)
    masks = np.array([[[1, 0, 0], [0, 0, 0]], [[1, 1, 0], [0, 0, 0]]], bool)
    # K = 1: four pixels tie at the top, one of them on the mask: 1/4 of a hit on average
    # K = 2: two of the four tied pixels are on the mask, two are taken: 2 * 2/4 hits of 2
    np.testing.assert_allclose(M.relevance_rank_accuracy(maps, masks).scores, [0.25, 0.5])
    # the same in any raster order: flip the map and the mask together
    np.testing.assert_allclose(M.relevance_rank_accuracy(maps[:, ::-1, ::-1], masks[:, ::-1, ::-1]).scores,
                               [0.25, 0.5])


def test_top_k_intersection_by_hand():
    maps = np.arange(12, dtype=np.float64).reshape(1, 3, 4)  # value = raster index
    mask = np.zeros((1, 3, 4), bool)
    mask.flat[[11, 10, 0]] = True
    scores = {k: M.top_k_intersection(maps, mask, k=k).scores[0] for k in (1, 2, 3, 0.25, 12, 1.0)}
    # top 2: pixels 11, 10 (both in); top 3 adds 9 (out); 0.25 of 12 pixels is 3; all 12: 3 of 12
    assert scores == pytest.approx({1: 1.0, 2: 1.0, 3: 2 / 3, 0.25: 2 / 3, 12: 0.25, 1.0: 0.25})
    assert M.top_k_intersection(maps, mask, k=0.25).info["pixels"] == 3
    ties = np.ones((1, 3, 4))
    assert M.top_k_intersection(ties, mask, k=4).scores[0] == pytest.approx(3 / 12)  # 4 * 3/12 hits of 4


def test_mask_auc_by_hand():
    maps, mask = _one([[0.9, 0.8, 0.7], [0.6, 0.5, 0.4]], [[1, 0, 1], [0, 0, 0]])
    # object pixels 0.9 and 0.7 against 0.8, 0.6, 0.5, 0.4: 0.9 wins 4 pairs, 0.7 wins 3, of 8
    assert M.mask_auc(maps, mask).scores[0] == pytest.approx(7 / 8)
    assert M.mask_auc(-maps, mask).scores[0] == pytest.approx(1 / 8)
    ties, mask = _one([[1, 1, 0], [0, 0, 0]], [[1, 0, 0], [0, 0, 0]])
    # the object's 1 against the background's 1 (a tie: half) and four 0s: 4.5 of 5 pairs
    assert M.mask_auc(ties, mask).scores[0] == pytest.approx(4.5 / 5)
    flat = M.mask_auc(np.zeros((1, 2, 3)), mask)
    assert flat.scores[0] == 0.5  # a constant map cannot tell object from background: chance
    full = M.mask_auc(maps, np.ones((1, 2, 3), bool))
    assert np.isnan(full.scores[0]) and full.info["undefined"] == {"mask covers the map": [0]}


def test_bounding_boxes_by_hand():
    masks = np.zeros((3, 4, 5), bool)
    masks[0, 1, 1] = masks[0, 2, 3] = True  # two pixels: box rows 1..2, columns 1..3
    masks[1, 3, 4] = True
    boxes = bounding_boxes(masks)
    expected = np.zeros((3, 4, 5), bool)
    expected[0, 1:3, 1:4] = True
    expected[1, 3, 4] = True
    np.testing.assert_array_equal(boxes, expected)  # an empty mask has an empty box


def test_energy_pointing_game_by_hand():
    maps = np.ones((1, 4, 4))
    maps[0, 1, 2] = 5  # inside the box, not on the mask
    maps[0, 0, 0] = -3  # negative: no energy
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 1, 1] = mask[0, 2, 2] = True  # box rows 1..2, columns 1..2
    # energy 14 x 1 + 5 = 19; in the box 1 + 5 + 1 + 1 = 8
    assert M.energy_pointing_game(maps, mask).scores[0] == pytest.approx(8 / 19)
    # a uniform map scores the box's share of the image
    assert M.energy_pointing_game(np.ones((1, 4, 4)), mask).scores[0] == pytest.approx(4 / 16)
    none = M.energy_pointing_game(-np.ones((1, 4, 4)), mask)
    assert np.isnan(none.scores[0]) and none.info["undefined"] == {"no positive energy": [0]}


# ---------------------------------------------------------------- against Quantus

@pytest.fixture(scope="module")
def demo_cams():
    pytest.importorskip("torch")
    quantus = pytest.importorskip("quantus")
    from convscope.attribution import grad_cam
    from convscope.data import demo_model, shapes

    model = demo_model("torch")
    data = shapes(12, seed=3)
    maps = grad_cam(model, data.images).maps.astype(np.float64)
    # a little noise: no ties (Quantus breaks them in argsort's order) and some negative relevance
    noisy = maps + np.random.default_rng(0).normal(0, 1e-3 * maps.max(), maps.shape)

    def peer(metric, a, s=data.object_masks, **options):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            instance = getattr(quantus, metric)(disable_warnings=True, **options)
            scores = instance(model=model, x_batch=data.images, y_batch=data.labels, a_batch=a[:, None].copy(),
                              s_batch=s[:, None].astype(np.float64), channel_first=True, device="cpu")
        return np.asarray(scores, np.float64)
    return maps, noisy, data.object_masks, peer


@pytest.mark.slow  # importing Quantus imports TensorFlow: about 20 s once
@pytest.mark.backend("torch")
def test_relevance_mass_accuracy_matches_quantus(demo_cams):
    maps, noisy, masks, peer = demo_cams
    assert (noisy < 0).any()
    ours = M.relevance_mass_accuracy(noisy, masks).scores
    # the paper's positive relevance: Quantus given the positive part
    np.testing.assert_allclose(ours, peer("RelevanceMassAccuracy", np.maximum(noisy, 0), normalise=False), atol=1e-6)
    # a clipped CAM has no negative values: Quantus's defaults (normalised by the maximum) agree
    np.testing.assert_allclose(M.relevance_mass_accuracy(maps, masks).scores, peer("RelevanceMassAccuracy", maps),
                               atol=1e-6)
    assert 0.2 < ours.mean() < 0.6  # the shapes cover about a fifth of the images: above chance


@pytest.mark.slow  # importing Quantus imports TensorFlow: about 20 s once
@pytest.mark.backend("torch")
def test_relevance_rank_accuracy_matches_quantus(demo_cams):
    _, noisy, masks, peer = demo_cams
    np.testing.assert_allclose(M.relevance_rank_accuracy(noisy, masks).scores,
                               peer("RelevanceRankAccuracy", noisy, normalise=False), atol=1e-6)


@pytest.mark.slow  # importing Quantus imports TensorFlow: about 20 s once
@pytest.mark.backend("torch")
@pytest.mark.parametrize("k", [1, 300, 1000])
def test_top_k_intersection_matches_quantus(demo_cams, k):
    _, noisy, masks, peer = demo_cams
    np.testing.assert_allclose(M.top_k_intersection(noisy, masks, k=k).scores,
                               peer("TopKIntersection", noisy, k=k, normalise=False), atol=1e-6)


@pytest.mark.slow  # importing Quantus imports TensorFlow: about 20 s once
@pytest.mark.backend("torch")
def test_mask_auc_matches_quantus_with_and_without_ties(demo_cams):
    maps, noisy, masks, peer = demo_cams
    assert (maps == 0).mean() > 0.05  # the clipped CAM has many tied zeros: sklearn counts ties half too
    for m in (maps, noisy):
        np.testing.assert_allclose(M.mask_auc(m, masks).scores, peer("AUC", m, normalise=False), atol=1e-6)


@pytest.mark.slow  # importing Quantus imports TensorFlow: about 20 s once
@pytest.mark.backend("torch")
def test_energy_pointing_game_matches_quantus_attribution_localisation_on_boxes(demo_cams):
    _, noisy, masks, peer = demo_cams
    boxes = bounding_boxes(masks)
    assert (boxes.sum((1, 2)) > masks.sum((1, 2))).all()  # the boxes are larger than the shapes
    theirs = peer("AttributionLocalisation", noisy, boxes, positive_attributions=True, abs=False, normalise=False)
    np.testing.assert_allclose(M.energy_pointing_game(noisy, masks).scores, theirs, atol=1e-6)


# ---------------------------------------------------------------- batching, masks, registry

@pytest.mark.parametrize("name", LOCALISATION)
def test_scores_are_per_map_across_chunks(name):
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(70, 64, 64))  # 70 maps of 64 x 64: two chunks of 2^18 pixels
    masks = rng.random((70, 64, 64)) < 0.3
    masks[65] = False  # an empty mask in the second chunk
    together = getattr(M, name)(maps, masks)
    one_by_one = [getattr(M, name)(maps[i:i + 1], masks[i:i + 1]).scores[0] for i in range(70)]
    np.testing.assert_allclose(together.scores, one_by_one, rtol=1e-12)
    assert together.info["undefined"]["empty mask"] == [65]


@pytest.mark.parametrize("name", LOCALISATION)
def test_numeric_zero_one_masks_and_results_are_accepted(name):
    from convscope.attribution import AttributionMaps

    rng = np.random.default_rng(2)
    maps = rng.random((3, 8, 8))
    masks = rng.random((3, 8, 8)) < 0.4
    fn = _fn(name)
    expected = fn(maps, masks).scores
    np.testing.assert_array_equal(fn(maps, masks.astype(np.uint8)).scores, expected)
    np.testing.assert_array_equal(fn(maps, masks.astype(np.float32)).scores, expected)
    result = AttributionMaps(maps.astype(np.float32), np.zeros((3, 3, 8, 8), np.float32), "x")
    np.testing.assert_allclose(fn(result, masks).scores, fn(maps.astype(np.float32), masks).scores)


@pytest.mark.parametrize("name", LOCALISATION)
def test_maps_are_resized_to_masks_of_the_same_aspect_and_it_is_said(name):
    masks = np.zeros((1, 8, 12), bool)
    masks[0, 2:6, 3:9] = True
    small = np.zeros((1, 4, 6))
    small[0, 1:3, 2:4] = 1  # upsampled, the peak block lands inside the mask
    result = _fn(name)(small, masks)
    assert result.info["choices"] == {"maps": "resized bilinearly from (4, 6) to (8, 12), the masks' size"}
    from convscope.render import resize

    np.testing.assert_allclose(result.scores, _fn(name)(resize(small.astype(np.float32), (8, 12)), masks).scores)
    assert "choices" not in _fn(name)(resize(small.astype(np.float32), (8, 12)), masks).info
    with pytest.raises(ValueError, match=rf"'masks' parameter of {name} must be \(N, H, W\) masks of the maps' "
                                         r"size \(4, 6\) or of the same aspect ratio.*Got shape \(1, 8, 8\)"):
        getattr(M, name)(small, np.zeros((1, 8, 8), bool))


@pytest.mark.parametrize("name", LOCALISATION)
def test_localisation_bad_input(name):
    fn, maps, masks = getattr(M, name), np.zeros((2, 4, 4)), np.ones((2, 4, 4), bool)
    with pytest.raises(ValueError, match=rf"'masks' parameter of {name} must be one mask per map \(2\). Got 3"):
        fn(maps, np.ones((3, 4, 4), bool))
    with pytest.raises(ValueError, match=rf"'masks' parameter of {name} must be a boolean \(N, H, W\) array. "
                                         r"Got shape \(4, 4\)"):
        fn(maps, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match=rf"'masks' parameter of {name} must be a boolean .* or numbers that are "
                                         r"all 0 or 1. Got the value 255"):
        fn(maps, masks.astype(np.uint8) * 255)
    with pytest.raises(TypeError, match=rf"'masks' parameter of {name} must be a boolean"):
        fn(maps, "mask.png")
    with pytest.raises(TypeError, match=rf"'masks' parameter of {name} must be a boolean"):
        fn(maps, masks.astype(str))
    bad = maps.copy()
    bad[1, 2, 2] = np.nan
    with pytest.raises(ValueError, match=rf"'maps' parameter of {name} must be finite \(no NaN or Inf\). Got 1 "):
        fn(bad, masks)
    with pytest.raises(ValueError, match=rf"'maps' parameter of {name} must be \(N, H, W\) maps"):
        fn(np.zeros((2, 1, 4, 4)), masks)
    with pytest.raises(ValueError, match=rf"'maps' parameter of {name} must be \(N, H, W\) maps"):
        fn(np.zeros((0, 4, 4)), masks[:0])
    with pytest.raises(TypeError, match=rf"'maps' parameter of {name} must be \(N, H, W\) maps"):
        fn(None, masks)


def test_top_k_bad_k():
    maps, masks = np.zeros((1, 4, 4)), np.ones((1, 4, 4), bool)
    with pytest.raises(ValueError, match=r"'k' parameter of top_k_intersection must be <= 16, the pixels of a map "
                                         r"\(a fraction such as k=0.25 fits any size\). Got 17"):
        M.top_k_intersection(maps, masks, k=17)
    with pytest.raises(ValueError, match=r"'k' parameter of top_k_intersection must be >= 1"):
        M.top_k_intersection(maps, masks, k=0)
    with pytest.raises(ValueError, match=r"'k' parameter of top_k_intersection must be > 0"):
        M.top_k_intersection(maps, masks, k=0.0)
    with pytest.raises(ValueError, match=r"'k' parameter of top_k_intersection must be an int number of pixels "
                                         r"or a fraction in \(0, 1\]. Got 1.5"):
        M.top_k_intersection(maps, masks, k=1.5)
    with pytest.raises(TypeError, match=r"'k' parameter of top_k_intersection must be an int number of pixels"):
        M.top_k_intersection(maps, masks, k="all")


@pytest.mark.parametrize("name", LOCALISATION)
def test_registered_and_run_by_name(name):
    spec = M.get_metric(name)
    assert spec.family == "localisation" and spec.higher_is_better and spec.needs == {"maps", "masks"}
    assert name in M.__all__
    rng = np.random.default_rng(4)
    maps, masks = rng.random((3, 6, 6)), rng.random((3, 6, 6)) < 0.5
    by_name = M.evaluate_metric(name, maps=maps, masks=masks, x=None, model=None, options=SMALL.get(name))
    np.testing.assert_array_equal(by_name.scores, _fn(name)(maps, masks).scores)
    assert by_name.metric == name and by_name.scores.dtype == np.float64


def test_object_maps_beat_random_ones_on_the_concept_masks():
    from convscope.data import shapes

    data = shapes(8, seed=5)
    masks = data.object_masks
    rng = np.random.default_rng(0)
    on_object = masks + 0.1 * rng.random(masks.shape)
    noise = rng.random(masks.shape)
    for name in LOCALISATION:
        fn = getattr(M, name)
        good, chance = fn(on_object, masks).mean, fn(noise, masks).mean
        assert good > chance + 0.2, (name, good, chance)
    # a random map scores about the mask's share of the image (mass, rank, top-k) or 0.5 (AUC)
    share = masks.mean()
    assert M.relevance_mass_accuracy(noise, masks).mean == pytest.approx(share, abs=0.02)
    assert M.mask_auc(noise, masks).mean == pytest.approx(0.5, abs=0.03)


def _docs_table(section: str, maps_names=("grad_cam", "saliency", "random (uniform noise)")):
    """{maps: [numbers]} from the first table of docs/metrics.md's ``section`` whose rows start with a map's name."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    body = text.split(f"## {section}\n")[1].split("\n## ")[0]
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] in maps_names:
            rows[cells[0]] = [float(c) for c in cells[1:]]
    return rows


def demo_maps():
    """The maps the docs' tables are computed on: the demo model on shapes(64, seed=0)."""
    from convscope.attribution import grad_cam, saliency
    from convscope.data import demo_model, shapes

    model, data = demo_model("torch"), shapes(64, seed=0)
    return data, {"grad_cam": grad_cam(model, data.images).maps, "saliency": saliency(model, data.images).maps,
                  "random (uniform noise)": np.random.default_rng(0).random((64, 64, 64))}


@pytest.mark.backend("torch")
def test_the_docs_localisation_numbers_are_recomputed():
    pytest.importorskip("torch")
    data, maps = demo_maps()
    quoted = _docs_table("Localisation")
    assert set(quoted) == set(maps)
    for name, m in maps.items():
        ours = [M.evaluate_metric(metric, maps=m, masks=data.object_masks).mean for metric in LOCALISATION]
        np.testing.assert_allclose(ours, quoted[name], rtol=0.01, atol=0.002, err_msg=name)
    assert data.object_masks.mean() == pytest.approx(0.138, abs=5e-4)  # "objects cover 13.8% of the pixels"
