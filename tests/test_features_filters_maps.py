"""Filter pictures and activation maps: values against hand computation and torch itself."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.backend("torch")

from convscope.backends.torch import TorchBackend  # noqa: E402
from convscope.data import demo_model, shapes  # noqa: E402
from convscope.features import activation_maps, filters  # noqa: E402

CAPTION = 14  # height of the caption strip above every picture


@pytest.fixture(scope="module")
def model():
    return demo_model()


@pytest.fixture(scope="module")
def demo(model):
    return TorchBackend(model)


def test_first_layer_filters_are_rgb_tiles_scaled_per_filter(model, demo):
    w = model.conv1.weight.detach().numpy()
    got = filters(demo)  # the first conv by default
    assert got.layer == "conv1" and got.rgb and got.weights.shape == (16, 3, 3, 3)
    lo, hi = w.min(axis=(1, 2, 3), keepdims=True), w.max(axis=(1, 2, 3), keepdims=True)
    assert np.allclose(got.values, (w - lo) / (hi - lo), atol=1e-6)
    picture = got.to_rgb()
    f = got.tile // 3  # each weight is a 4 x 4 block for tile=12
    first = picture[CAPTION + 1:CAPTION + 1 + 3 * f, 1:1 + 3 * f]
    assert np.allclose(first[::f, ::f], got.values[0].transpose(1, 2, 0), atol=1e-6)


def test_scales_shared_and_symmetric(model, demo):
    w = model.conv1.weight.detach().numpy()
    shared = filters(demo, "conv1", scale="layer").values
    assert np.isclose(shared.min(), 0) and np.isclose(shared.max(), 1)
    assert np.allclose(shared, (w - w.min()) / (w.max() - w.min()), atol=1e-6)
    sym = filters(demo, "conv1", scale="symmetric").values
    assert np.allclose(sym, 0.5 + w / (2 * np.abs(w).max()), atol=1e-6)  # zero is mid-grey
    each_sym = filters(demo, "conv1", scale="symmetric-each").values
    assert np.allclose(each_sym, 0.5 + w / (2 * np.abs(w).max(axis=(1, 2, 3), keepdims=True)), atol=1e-6)


def test_deeper_filters_are_a_grid_of_grey_kernels(model, demo):
    w = model.conv2.weight.detach().numpy()[:5, :4]
    got = filters(demo, "conv2", max_out=5, max_in=4, scale="symmetric", tile=3)
    assert not got.rgb and got.weights.shape == (5, 4, 3, 3)
    picture = got.to_rgb()
    assert picture.shape[0] == CAPTION + 5 * 4 + 1 and picture.shape[1] >= 4 * 4 + 1  # wider for the caption
    kernel = picture[CAPTION + 1 + 2 * 4:CAPTION + 1 + 2 * 4 + 3, 1 + 3 * 4:1 + 3 * 4 + 3, 0]  # out 2, in 3
    assert np.allclose(kernel, 0.5 + w[2, 3] / (2 * np.abs(w).max()), atol=1e-6)


def test_filter_bad_input(demo):
    with pytest.raises(ValueError, match=r"must be a convolution layer with 4-d weights .* Got 'fc' with weight \(4, 64\)"):
        filters(demo, "fc")
    with pytest.raises(ValueError, match="The 'scale' parameter of filters must be one of 'each', 'layer'"):
        filters(demo, "conv1", scale="global")
    with pytest.raises(ValueError, match="The 'rgb' parameter of filters must be False for filters that do not have 3"):
        filters(demo, "conv2", rgb=True)
    with pytest.raises(ValueError, match="known layer name. Got 'conv7'"):
        filters(demo, "conv7")


def test_activation_maps_equal_the_torch_layers(model, demo):
    x = shapes(3, seed=2).images
    got = activation_maps(demo, x, "relu2", channels=[1, 5, 6])
    with torch.no_grad():
        t = torch.from_numpy(x)
        want = model.relu2(model.bn2(model.conv2(model.pool1(model.relu1(model.bn1(model.conv1(t)))))))[:, [1, 5, 6]]
    assert got.maps.shape == (3, 3, 32, 32)
    assert np.allclose(got.maps, want.numpy(), atol=1e-5)
    picture = got.picture(2)
    tile = got.maps[2, 0]
    cell = picture[CAPTION + 1:CAPTION + 1 + 64, 1 + 65:1 + 65 + 64, 0]  # 2 x 2 grid: the input, then the first map
    assert np.allclose(cell[::2, ::2], (tile - tile.min()) / (tile.max() - tile.min()), atol=1e-6)


def test_activation_maps_one_image_and_bad_input(demo, tmp_path):
    image = shapes(1).images[0]
    got = activation_maps(demo, image, "conv4", scale="layer")
    assert got.maps.shape == (1, 64, 8, 8)
    assert got.save(tmp_path / "maps.png").stat().st_size > 0
    with pytest.raises(ValueError, match="The 'channels' parameter of activation_maps must be <= 63. Got 64 instead."):
        activation_maps(demo, image, "conv4", channels=64)
    with pytest.raises(ValueError, match=r"spatial \(C, H, W\) output. Got 'flatten'"):
        activation_maps(demo, image, "flatten")
    with pytest.raises(ValueError, match="The 'x' parameter of activation_maps must be a 4-d array"):
        activation_maps(demo, image[0], "conv4")
