"""Do the maps fall on the object? The demo model over 200 generated images whose object
masks are the ground truth: pointing game and deletion against a random map."""
import numpy as np
import pytest

pytest.importorskip("torch")

import convscope
from convscope import attribution as A
from convscope import metrics as M
from convscope.metrics.pointing import dilate

pytestmark = pytest.mark.backend("torch")

#: Zhang et al.'s 15-pixel tolerance at ~224 pixels, scaled to the 64-pixel images.
TOLERANCE = 4


@pytest.fixture(scope="module")
def data():
    return convscope.data.shapes(200, seed=1000)


@pytest.fixture(scope="module")
def model():
    return convscope.load(convscope.data.demo_model("torch"))


@pytest.fixture(scope="module")
def random_maps(data):
    return np.random.default_rng(0).random(data.object_masks.shape).astype(np.float32)


@pytest.fixture(scope="module")
def grad_cam_maps(model, data):
    return A.grad_cam(model, data.images, data.labels)


def test_random_map_scores_at_chance(data, random_maps):
    chance = dilate(data.object_masks, TOLERANCE).mean()  # the area a random peak can hit
    score = M.pointing_game(random_maps, data.object_masks, tolerance=TOLERANCE)
    assert abs(score - chance) < 0.08, (score, chance)  # 0.08: about 2.5 binomial standard errors
    assert abs(M.pointing_game(random_maps, data.object_masks) - data.object_masks.mean()) < 0.07


def test_grad_cam_points_at_the_object(data, grad_cam_maps):
    assert M.pointing_game(grad_cam_maps, data.object_masks, tolerance=TOLERANCE) >= 0.9


def test_guided_backprop_points_at_the_object(model, data):
    maps = A.guided_backprop(model, data.images, data.labels)
    assert M.pointing_game(maps, data.object_masks, tolerance=TOLERANCE) >= 0.9
    assert M.pointing_game(maps, data.object_masks) >= 0.9  # even without tolerance


def test_occlusion_points_at_the_object(model, data):
    maps = A.occlusion(model, data.images, data.labels, window=16, stride=12, output="probability")
    assert M.pointing_game(maps, data.object_masks, tolerance=TOLERANCE) >= 0.9


def test_deletion_and_insertion_rank_grad_cam_above_a_random_map(model, data, grad_cam_maps, random_maps):
    gc = M.deletion(model, data.images, grad_cam_maps, steps=8)
    rnd = M.deletion(model, data.images, random_maps, data.labels, steps=8)
    assert gc.mean_auc < rnd.mean_auc - 0.1, (gc, rnd)
    assert (gc.auc < rnd.auc).mean() > 0.8
    gc = M.insertion(model, data.images[:100], grad_cam_maps[:100], steps=8)
    rnd = M.insertion(model, data.images[:100], random_maps[:100], data.labels[:100], steps=8)
    assert gc.mean_auc > rnd.mean_auc + 0.05, (gc, rnd)
