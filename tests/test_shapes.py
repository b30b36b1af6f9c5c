"""The generated concept dataset: determinism, masks that match the pixels, classes and concepts."""
import numpy as np
import pytest

from convscope.data import CATEGORIES, CONCEPTS, shapes


def test_deterministic_and_prefix_stable():
    a, b = shapes(12, seed=3), shapes(40, seed=3)
    np.testing.assert_array_equal(a.images, b.images[:12])
    np.testing.assert_array_equal(a.masks, b.batch(0, 12).masks)
    assert not np.array_equal(shapes(12, seed=4).images, a.images)
    np.testing.assert_array_equal(b.batch(20, 30).images, b.images[20:30])


def test_images_masks_and_labels_agree():
    data = shapes(200, seed=1)
    x, masks, labels, attrs = data.images, data.masks, data.labels, data.attributes
    assert x.shape == (200, 3, 64, 64) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert masks.shape == (200, len(CONCEPTS), 64, 64) and masks.dtype == bool
    np.testing.assert_array_equal(labels, attrs[:, 0])
    for i in range(200):
        present = np.flatnonzero(masks[i].any(axis=(1, 2)))
        shape, color, texture = attrs[i]
        assert list(present) == [shape, 4 + color, 10 + texture]
        obj = data.object_masks[i]
        assert 0.02 < obj.mean() < 0.5  # an object, not the whole picture
        # the object's pixels carry its colour: the brightest channel of the hue matches
        rgb = x[i][:, obj].mean(axis=1)
        from convscope.data.shapes import COLORS
        want = np.array(list(COLORS.values())[color])
        assert np.corrcoef(rgb, want)[0, 1] > 0.8
    # every concept occurs, classes are balanced-ish
    assert masks.any(axis=(2, 3)).sum(axis=0).min() > 5
    assert np.bincount(labels, minlength=4).min() > 30
    assert set(CATEGORIES) == {"shape", "color", "texture"}


def test_texture_really_is_a_second_tone():
    data = shapes(300, seed=2)
    for i in range(300):
        obj = data.object_masks[i]
        tone_count = np.unique(np.round(data.images[i][:, obj], 3), axis=1).shape[1]
        if data.attributes[i, 2] == 0:
            assert tone_count == 1  # plain
        else:
            assert tone_count == 2


def test_streaming_batches_cover_the_range():
    data = shapes(70, seed=0)
    batches = list(data.batches(32))
    assert [len(b) for b in batches] == [32, 32, 6]
    np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), data.labels)
    images, labels = next(iter(data))
    assert images.shape == (64, 3, 64, 64) and labels.shape == (64,)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=0), r"'n' parameter of shapes must be >= 1\. Got 0"),
    (dict(n=3, size=8), r"'size' parameter of shapes must be >= 16"),
    (dict(n=2.5), r"'n' parameter of shapes must be an int"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        shapes(**kwargs)
