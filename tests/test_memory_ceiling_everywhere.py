"""Every method whose batch size is left open stays under the backend's memory ceiling
(``backend.memory_ceiling(h, w)``, what a backend on a GPU states): with a ceiling of 3 images
no framework call gets more than 3 (+ the clean images some methods add to their first call),
and the result equals the run without a ceiling."""
import numpy as np
import pytest

import convscope
from convscope import attribution as A
from convscope import metrics as M
from convscope.data import demo_model, shapes

from _assertions import batch_sizes

pytest.importorskip("torch")
X = shapes(1, seed=3).images
GRID = (np.arange(64)[:, None] // 16 * 4 + np.arange(64)[None, :] // 16)  # 16 features of 16 x 16

CASES = {
    "occlusion": ("_forward", lambda b: A.occlusion(b, X, 1, window=16, stride=8, incremental=False)),
    "feature_ablation": ("_forward", lambda b: A.feature_ablation(b, X, 1, features=GRID, incremental=False)),
    "shapley_sampling": ("_forward", lambda b: A.shapley_sampling(b, X, 1, features=GRID, samples=2)),
    "kernel_shap": ("_forward", lambda b: A.kernel_shap(b, X, 1, features=GRID, samples=40)),
    "lime": ("_forward", lambda b: A.lime(b, X, 1, features=GRID, samples=40)),
    "rise": ("_forward", lambda b: A.rise(b, X, 1, masks=40)),
    "score_cam": ("_forward", lambda b: A.score_cam(b, X, 1, layer="relu3")),
    "deeplift_shap": ("_forward", lambda b: A.deeplift_shap(b, X, 1, baselines=shapes(8, seed=5).images)),
    "noise_tunnel": ("_gradient", lambda b: A.noise_tunnel(b, X, 1, samples=12)),
    "deletion": ("_forward", lambda b: M.deletion(b, X, np.random.default_rng(0).random((1, 64, 64)), 1,
                                                  steps=16, incremental=False)),
}


def _values(result):
    for name in ("maps", "scores", "curves"):
        if hasattr(result, name):
            return np.asarray(getattr(result, name), np.float64)
    return np.asarray(result, np.float64)


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_memory_ceiling_bounds_every_automatic_batch(name):
    method, run = CASES[name]
    backend = convscope.load(demo_model("torch"))
    with batch_sizes(backend, method) as free:
        want = run(backend)
    backend.memory_ceiling = lambda h, w: 3
    try:
        with batch_sizes(backend, method) as limited:
            got = run(backend)
    finally:
        del backend.memory_ceiling
    assert max(free) > 4, f"{name}: the test needs batches larger than the ceiling ({free})"
    assert max(limited) <= 3 + len(X), limited
    want, got = _values(want), _values(got)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(1e-12, np.abs(want).max()))
