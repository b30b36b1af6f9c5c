"""convscope.metrics on hand-computed cases: the pointing game and deletion/insertion curves."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from convscope import metrics as M
from convscope.attribution import AttributionMaps
from convscope.metrics.pointing import dilate

pytestmark = pytest.mark.backend("torch")


def _masks():
    masks = np.zeros((3, 10, 10), bool)
    masks[:, 2:5, 2:5] = True
    return masks


def test_pointing_game_counts_peaks_on_the_mask():
    maps = np.zeros((3, 10, 10), np.float32)
    maps[0, 3, 3] = 1  # on the object
    maps[1, 8, 8] = 1  # far away
    maps[2, 6, 3] = 1  # two pixels below the object
    assert M.pointing_game(maps, _masks()) == pytest.approx(1 / 3)
    assert M.pointing_game(maps, _masks(), per_sample=True).tolist() == [True, False, False]
    assert M.pointing_game(maps, _masks(), tolerance=2, per_sample=True).tolist() == [True, False, True]
    assert M.pointing_game(maps, _masks(), tolerance=5, per_sample=True).tolist() == [True, False, True]  # 5.66 away
    assert M.pointing_game(maps, _masks(), tolerance=6, per_sample=True).tolist() == [True, True, True]


def test_pointing_game_ties_need_a_majority_on_the_mask():
    maps = np.zeros((2, 10, 10), np.float32)
    maps[0, 2:5, 4:7] = 1  # a 3x3 plateau, 3 of its 9 pixels on the object (column 4)
    maps[1, 2:5, 3:6] = 1  # 6 of 9 on it
    assert M.pointing_game(maps, _masks()[:2], per_sample=True).tolist() == [False, True]


def test_pointing_game_takes_results_and_resizes_them():
    maps = np.zeros((1, 5, 5), np.float32)
    maps[0, 1, 1] = 1  # upsampled to 10x10 the peak lands at (2..3, 2..3)
    result = AttributionMaps(np.kron(maps, np.ones((2, 2), np.float32)), np.zeros((1, 3, 10, 10), np.float32), "x")
    assert M.pointing_game(result, _masks()[:1]) == 1.0
    assert M.pointing_game(maps, _masks()[:1]) == 1.0


def test_dilate_is_a_euclidean_disk():
    m = np.zeros((1, 9, 9), bool)
    m[0, 4, 4] = True
    grown = dilate(m, 2)[0]
    yy, xx = np.mgrid[:9, :9]
    assert (grown == ((yy - 4) ** 2 + (xx - 4) ** 2 <= 4)).all()


def test_pointing_game_bad_input():
    with pytest.raises(ValueError, match=r"'masks' parameter of pointing_game must be a boolean \(N, H, W\) array"):
        M.pointing_game(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"'masks' parameter of pointing_game must be one mask per map \(2\)"):
        M.pointing_game(np.zeros((2, 4, 4)), np.zeros((3, 4, 4), bool))
    with pytest.raises(ValueError, match=r"'tolerance' parameter of pointing_game must be >= 0"):
        M.pointing_game(np.zeros((2, 4, 4)), np.zeros((2, 4, 4), bool), tolerance=-1)


class RegionMean(torch.nn.Module):
    """Scores: [mean of the image over the top-left 4x4 block, 0]."""

    def forward(self, x):
        s = x[:, :, :4, :4].mean(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], dim=1)


def test_deletion_and_insertion_curves_by_hand():
    x = np.ones((1, 3, 8, 8), np.float32)
    maps = -np.arange(64, dtype=np.float32).reshape(1, 8, 8) / 100
    maps[0, :4, :4] += 1  # the 16 pixels the score depends on come first: a quarter of the image
    curve = M.deletion(RegionMean(), x, maps, 0, steps=4, fill="zero", output="score")
    np.testing.assert_allclose(curve.fractions, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(curve.scores, [[1, 0, 0, 0, 0]], atol=1e-6)
    assert curve.auc[0] == pytest.approx(0.125)  # trapezoid: (1 + 0) / 2 * 0.25
    curve = M.insertion(RegionMean(), x, maps, 0, steps=4, fill="zero", output="score")
    np.testing.assert_allclose(curve.scores, [[0, 1, 1, 1, 1]], atol=1e-6)
    assert curve.auc[0] == pytest.approx(0.875)
    # the reverse order removes the region last: half way through 8 steps nothing has changed
    late = M.deletion(RegionMean(), x, -maps, 0, steps=8, fill="zero", output="score")
    np.testing.assert_allclose(late.scores[0], [1, 1, 1, 1, 1, 1, 1, 0.5, 0], atol=1e-6)
    # probability: softmax([s, 0])[0]
    prob = M.deletion(RegionMean(), x, maps, 0, steps=4, fill="zero", output="probability")
    np.testing.assert_allclose(prob.scores[0], [np.exp(1) / (np.exp(1) + 1), 0.5, 0.5, 0.5, 0.5], rtol=1e-6)
    assert "mean AUC" in repr(prob)


def test_curve_bad_input():
    x = np.ones((1, 3, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"'steps' parameter of deletion must be >= 1"):
        M.deletion(RegionMean(), x, np.zeros((1, 8, 8)), 0, steps=0)
    with pytest.raises(ValueError, match=r"'maps' parameter of insertion must be one map per image \(1\)"):
        M.insertion(RegionMean(), x, np.zeros((2, 8, 8)), 0)
    with pytest.raises(ValueError, match=r"'target' parameter of deletion must be a class index in \[0, 1\]"):
        M.deletion(RegionMean(), x, np.zeros((1, 8, 8)), 2, steps=2)
