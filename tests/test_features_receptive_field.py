"""Receptive fields from layer geometry, checked against the support of input gradients."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.backend("torch")

from torch import nn  # noqa: E402

from convscope.backends.torch import TorchBackend  # noqa: E402
from convscope.data import demo_model  # noqa: E402
from convscope.features import receptive_field  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    backend = TorchBackend(demo_model())
    backend.forward(np.zeros((1, 3, 64, 64), np.float32))  # layer records for 64 x 64 input
    return backend


def support_box(backend, layer, y, x, images):
    """Bounding box (top, left, bottom, right) of the pixels whose gradient is non-zero when
    every channel of unit (y, x) is seeded, over a batch of images."""
    acts = backend.activations(images, [layer])[layer]
    seed = np.zeros_like(acts)
    seed[:, :, y, x] = 1.0
    grad = backend.gradient(images, {layer: seed})["input"]
    support = np.abs(grad).sum(axis=(0, 1)) > 0
    rows, cols = np.nonzero(support)
    return (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1), support


@pytest.mark.parametrize("layer,y,x", [("conv1", 5, 7), ("relu2", 0, 31), ("conv3", 7, 3), ("pool3", 2, 5),
                                       ("conv4", 4, 4), ("relu4", 0, 0), ("relu4", 7, 7)])
def test_demo_fields_equal_the_gradient_support(demo, layer, y, x):
    images = np.random.default_rng(1).random((8, 3, 64, 64), dtype=np.float32)
    got = receptive_field(demo, layer, y, x, image_size=(64, 64))
    want, _ = support_box(demo, layer, y, x, images)
    assert got.clipped == tuple(int(v) for v in want)


def test_demo_field_by_hand(demo):
    # conv 3x3 p1 -> pool 2 -> conv -> pool -> conv -> pool -> conv: size 1+2+2*2+2*4+2*8 = 38... per axis,
    # jump 8, first unit starts at -1 - 2 - 4 - 8 = -15
    rf = receptive_field(demo, "relu4", 1, 2)
    assert rf.box == (-15 + 8, -15 + 16, -15 + 8 + 38, -15 + 16 + 38)
    assert rf.size == (38, 38) and rf.stride == (8, 8) and rf.clipped is None


class Geometry(nn.Module):
    """Stride, dilation, asymmetric 'same' padding (even kernel) and padded average pooling."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 4, 4, padding="same")  # pads 1 before, 2 after
        self.pool = nn.AvgPool2d(3, stride=2, padding=1)
        self.c = nn.Conv2d(4, 4, 3, dilation=2, padding=1)
        self.d = nn.Conv2d(4, 2, (1, 3), stride=(1, 2), padding=(0, 1))
        for m in (self.a, self.b, self.c, self.d):  # positive weights: the support is the whole field
            nn.init.uniform_(m.weight, 0.1, 1.0)

    def forward(self, x):
        return self.d(self.c(self.pool(self.b(self.a(x))))).flatten(1)


@pytest.mark.filterwarnings("ignore:Using padding=.same.")
@pytest.mark.parametrize("layer", ["a", "b", "pool", "c", "d"])
def test_strides_dilation_and_asymmetric_padding(layer):
    backend = TorchBackend(Geometry(), input_shape=(3, 37, 41))
    images = np.ones((1, 3, 37, 41), np.float32)
    shape = next(r.shape for r in backend.layers() if r.name == layer)
    for y, x in [(0, 0), (shape[1] // 2, shape[2] // 3), (shape[1] - 1, shape[2] - 1)]:
        rf = receptive_field(backend, layer, y, x, image_size=(37, 41))
        box, support = support_box(backend, layer, y, x, images)
        assert rf.clipped == tuple(int(v) for v in box), (layer, y, x)
        rows, cols = rf.slices()
        assert support[rows, cols].all()  # the support fills the box


def test_residual_network_field_is_the_union_of_its_paths():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from torch_models import TinyResNet

    backend = TorchBackend(TinyResNet(), input_shape=(3, 16, 16))
    rf = receptive_field(backend, "layer1.conv2", 8, 8, image_size=(16, 16))
    box, _ = support_box(backend, "layer1.conv2", 8, 8, np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32))
    assert rf.clipped == tuple(int(v) for v in box)


def test_residual_block_output_field():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from torch_models import TinyResNet

    backend = TorchBackend(TinyResNet(), input_shape=(3, 16, 16))
    images = np.random.default_rng(0).random((4, 3, 16, 16), dtype=np.float32)
    for layer in ("layer1", "layer2.relu#2"):
        rf = receptive_field(backend, layer, 4, 4, image_size=(16, 16))
        box, _ = support_box(backend, layer, 4, 4, images)
        assert rf.clipped == tuple(int(v) for v in box), layer


def test_bad_units_and_layers(demo):
    with pytest.raises(ValueError, match=r"The 'y' parameter of receptive_field must be <= 7. Got 8 instead."):
        receptive_field(demo, "relu4", 8, 0)
    with pytest.raises(ValueError, match=r"The 'x' parameter of receptive_field must be >= 0. Got -1 instead."):
        receptive_field(demo, "relu4", 0, -1)
    with pytest.raises(ValueError, match=r"must be a layer with a spatial \(C, H, W\) output. Got 'fc'"):
        receptive_field(demo, "fc", 0, 0)
    with pytest.raises(ValueError, match="known layer name. Got 'relu9' instead; closest: relu"):
        receptive_field(demo, "relu9", 0, 0)
