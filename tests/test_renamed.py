"""Old argument spellings still work, give the same result as the new ones, and warn once."""
import warnings

import numpy as np
import pytest

import convscope
import convscope._renamed
from convscope.data import demo_model, shapes

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(convscope._renamed, "_warned", set())


@pytest.fixture(scope="module")
def demo():
    return convscope.load(demo_model("torch"))


def test_cam_relu_is_clip(demo):
    x = shapes(2, seed=1).images
    with pytest.warns(DeprecationWarning, match=r"grad_cam\(\): the argument 'relu' is now called 'clip'"):
        old = convscope.grad_cam(demo, x, relu=False)
    np.testing.assert_array_equal(old.maps, convscope.grad_cam(demo, x, clip=False).maps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        convscope.grad_cam(demo, x, relu=False)
    with pytest.raises(TypeError, match=r"grad_cam\(\) got both 'relu' and its new name 'clip'; pass only 'clip'"):
        convscope.grad_cam(demo, x, relu=False, clip=True)


def test_top_patches_guided_is_rule_guided(demo):
    data = shapes(6, seed=2).images
    with pytest.warns(DeprecationWarning, match="'guided' is now called 'rule'"):
        old = convscope.features.top_patches(demo, data, "relu3", [0], k=2, guided=True, progress=False)
    new = convscope.features.top_patches(demo, data, "relu3", [0], k=2, rule="guided", progress=False)
    assert old.rule == "guided" and np.array_equal(old.gradients, new.gradients) and old.guided is old.gradients


def test_synthesis_image_is_x_and_relu_is_rule(demo):
    x = shapes(1, seed=3).images
    with pytest.warns(DeprecationWarning, match="'image' is now called 'x'"):
        old = convscope.synthesis.deepdream(demo, image=x, layer="relu3", octaves=1, steps=1, jitter=0, progress=False)
    new = convscope.synthesis.deepdream(demo, x, "relu3", octaves=1, steps=1, jitter=0, progress=False)
    np.testing.assert_array_equal(old.image, new.image)
    with pytest.warns(DeprecationWarning, match="'relu' is now called 'rule'"):
        convscope.synthesis.deepdream(demo, x, "relu3", octaves=1, steps=1, relu="guided", progress=False)


def test_embed_random_state_is_seed(rng):
    features = rng.standard_normal((20, 5)).astype(np.float32)
    with pytest.warns(DeprecationWarning, match="'random_state' is now called 'seed'"):
        old = convscope.features.embed(features, "pca", random_state=3)
    np.testing.assert_array_equal(old.points, convscope.features.embed(features, "pca", seed=3).points)
