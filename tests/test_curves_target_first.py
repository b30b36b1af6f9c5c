"""Deletion and insertion score the unperturbed images first: a target out of range is refused
after that one pass (n images), before any perturbed image is run."""
import numpy as np
import pytest

import convscope
from convscope.data import demo_model, shapes
from convscope.metrics import deletion, insertion

from _assertions import batch_sizes

pytest.importorskip("torch")
X = shapes(2, seed=1).images


@pytest.mark.parametrize("curve", [deletion, insertion])
def test_a_target_out_of_range_is_refused_after_the_clean_pass(curve):
    backend = convscope.load(demo_model("torch"))
    maps = np.random.default_rng(0).random((2, 64, 64)).astype(np.float32)
    with batch_sizes(backend, "_forward") as sizes:
        with pytest.raises(ValueError, match=r"'target' parameter of " + curve.__name__):
            curve(backend, X, maps, [1, 9], steps=8)
    assert sizes == [2]
    with batch_sizes(backend, "_forward") as sizes:
        good = curve(backend, X, maps, [1, 2], steps=8, incremental=False)
    assert sum(sizes) == 9 * 2 and good.scores.shape == (2, 9)
