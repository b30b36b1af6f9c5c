"""Every attribution method, top patches and one synthesis step on keras.applications models
with squeeze-excitation, depthwise and channels-last blocks (``weights=None``)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

keras = pytest.importorskip("keras")
pytest.importorskip("tensorflow")

import convscope  # noqa: E402
from convscope import synthesis  # noqa: E402
from convscope.features import receptive_field, top_patches  # noqa: E402

pytestmark = [pytest.mark.backend("tensorflow"), pytest.mark.slow]

# squeeze-excitation, hard-swish and depthwise (MobileNetV3); channels-last blocks inside Keras layers (ConvNeXt).
# The other families run saliency and Grad-CAM in test_keras_applications.py.
ARCHITECTURES = [("MobileNetV3Small", 64), ("ConvNeXtTiny", 32)]
METHODS = {"saliency": {}, "smoothgrad": {"samples": 2}, "integrated_gradients": {"steps": 4}, "input_x_gradient": {},
           "guided_backprop": {}, "deconvnet": {}, "occlusion": {"window": 16, "stride": 16}, "grad_cam": {},
           "grad_cam_pp": {}, "layer_cam": {}, "score_cam": {"batch_size": 64}, "eigen_cam": {}, "guided_grad_cam": {}}


@pytest.fixture(scope="module", params=ARCHITECTURES, ids=[a for a, _ in ARCHITECTURES])
def app(request):
    name, size = request.param
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=5)
    x = np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)
    yield name, convscope.load(model, preprocess="keras"), x
    keras.backend.clear_session()


def test_every_method_runs_on_the_default_layer(app):
    name, backend, x = app
    assert backend.choices["preprocess"].startswith("preprocess: the '") and "output" in backend.choices
    for method, kwargs in METHODS.items():
        maps = getattr(convscope, method)(backend, x, **kwargs)
        assert maps.maps.shape == (2, *x.shape[2:]) and np.isfinite(maps.maps).all(), method
        if method in ("grad_cam", "score_cam"):  # the last channels-first map before global pooling
            record = {r.name: r for r in backend.layers()}[maps.info["layer"]]
            assert record.layout == "chw" and record.shape[1] * record.shape[2] > 1


def test_top_patches_crop_the_receptive_field_and_synthesis_moves(app):
    name, backend, x = app
    records = backend.layers()
    maps = [r for r in records if r.spatial and 1 < r.shape[1] * r.shape[2] <= 64 and r.shape[1] >= 4]
    layer = maps[len(maps) // 2].name  # a map in the middle, after the first SE blocks where there are some
    data = np.random.default_rng(1).random((4, *x.shape[1:]), dtype=np.float32)
    top = top_patches(backend, data, layer, [0, 1], k=2, progress=False)
    size = x.shape[2]
    for i, j in np.ndindex(2, 2):
        y0, x0 = top.locations[i, j]
        field = receptive_field(backend, layer, int(y0), int(x0), image_size=(size, size))
        if "crop" not in top.info:
            assert tuple(top.boxes[i, j]) == field.box
        assert top.patches[i, j].shape[-2] <= size + 2 * size and top.patches[i, j].shape[-1] <= 3 * size
    dream = synthesis.deepdream(backend, x[:1], layer, octaves=1, steps=1, jitter=0, progress=False)
    assert not np.array_equal(dream.image, x[:1])
    vis = synthesis.visualize(backend, synthesis.channel(layer, 0), steps=2, size=size, progress=False)
    assert np.isfinite(vis.images).all() and vis.images.std() > 0
