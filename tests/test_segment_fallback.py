"""segment() says when GrabCut could not run and the seed was used instead."""
import numpy as np
import pytest

from convscope.dissection import segment

pytest.importorskip("cv2")


def test_grabcut_without_background_falls_back_to_the_seed_and_says_so(rng):
    images = rng.random((3, 3, 16, 16), dtype=np.float32)
    maps = rng.random((3, 16, 16), dtype=np.float32)
    maps[1] = 1.0  # every pixel is sure foreground: GrabCut has no background sample and raises
    with pytest.warns(RuntimeWarning, match=r"GrabCut could not run on 1 of 3 images \(1: .*\); their masks are the "
                                            r"seed itself, map >= 0.5 x max"):
        masks = segment(maps, images, method="grabcut")
    assert masks.info["fallback"]["images"] == [1] and masks.info["method"] == "grabcut"
    assert masks[1].all()  # the seed: every pixel >= 0.5 x max
    assert masks.dtype == bool and masks.shape == (3, 16, 16)


def test_no_warning_when_grabcut_runs(rng, recwarn):
    images = rng.random((2, 3, 16, 16), dtype=np.float32)
    maps = np.zeros((2, 16, 16), np.float32)
    maps[:, 4:12, 4:12] = 1.0
    masks = segment(maps, images, method="grabcut")
    assert "fallback" not in masks.info and not [w for w in recwarn if "GrabCut" in str(w.message)]
    assert segment(maps).info == {"method": "threshold"}
