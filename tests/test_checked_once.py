"""Every method checks its images once, at entry; its passes take the backend's trusted path.

The check is a scan of every value (finite, dtype, shape): integrated gradients used to run
it six times a call and occlusion thirty."""
import sys

import numpy as np
import pytest

import convscope
from convscope import attribution as A
from convscope import metrics as M
from convscope import synthesis as S
from convscope._validate import as_images
from convscope.data import demo_path, shapes


@pytest.fixture
def counted(monkeypatch):
    calls = []

    def counting(x, **kw):
        calls.append(kw.get("owner"))
        return as_images(x, **kw)

    for name in ("convscope.backend", "convscope._targets"):  # every entry check goes through _targets
        monkeypatch.setattr(sys.modules[name], "as_images", counting)
    return calls


@pytest.fixture(scope="module")
def backend():
    pytest.importorskip("onnxruntime")
    return convscope.load(str(demo_path("onnx")))


@pytest.mark.parametrize("run, owner", [
    (lambda b, x: A.saliency(b, x), "saliency"),
    (lambda b, x: A.integrated_gradients(b, x, steps=50, batch_size=16), "integrated_gradients"),
    (lambda b, x: A.occlusion(b, x, window=16, stride=8, perturbations_per_eval=4), "occlusion"),
    (lambda b, x: A.grad_cam(b, x), "grad_cam"),
    (lambda b, x: A.score_cam(b, x, batch_size=8), "score_cam"),
    (lambda b, x: A.guided_grad_cam(b, x), "guided_grad_cam"),
    (lambda b, x: M.deletion(b, x, np.ones((2, 64, 64), np.float32), steps=8, batch_size=3), "deletion"),
    (lambda b, x: S.deepdream(b, x[:1], "relu3", octaves=2, steps=3, progress=False), "deepdream"),
])
def test_images_are_checked_once_per_call(backend, counted, run, owner):
    x = shapes(2, seed=1).images
    run(backend, x)
    assert counted == [owner]


def test_a_wrong_channel_count_is_reported_by_the_method_not_a_pass(backend):
    x = shapes(1, seed=1).images[:, :2]
    with pytest.raises(ValueError, match=r"The 'x' parameter of saliency must be an array with 3 channels"):
        A.saliency(backend, x)
