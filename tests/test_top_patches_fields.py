"""top_patches on layers whose receptive field is larger than the image, or not a map."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from convscope.features import top_patches  # noqa: E402


def test_a_field_larger_than_the_image_is_clamped_to_it_and_said(rng):
    torch.manual_seed(0)
    net = nn.Sequential(*[m for _ in range(3) for m in (nn.Conv2d(3, 3, 7, padding=3), nn.ReLU())]).eval()
    x = rng.random((6, 3, 12, 12), dtype=np.float32)
    got = top_patches(net, x, "5", [0, 1], k=2, progress=False)  # field 19 x 19 on a 12 x 12 image
    assert got.patches.shape == (2, 2, 3, 12, 12)
    assert (got.boxes[..., 0] == 0).all() and (got.boxes[..., 2] == 12).all()
    assert "larger than the image (12, 12)" in got.info["crop"]
    for i, c in enumerate([0, 1]):  # a whole-image patch is the image itself
        for j in range(2):
            np.testing.assert_array_equal(got.patches[i, j], x[got.indices[i, j]])
    small = top_patches(net, x, "1", [0], k=2, progress=False)  # field 7 x 7: no clamping
    assert small.patches.shape[-2:] == (7, 7) and "crop" not in small.info


def test_a_channels_last_layer_is_refused_with_its_layout():
    class Last(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.norm = nn.LayerNorm(4)

        def forward(self, x):
            return self.norm(self.conv(x).permute(0, 2, 3, 1)).mean((1, 2))

    import convscope

    backend = convscope.load(Last().eval(), input_shape=(3, 8, 8))
    assert {r.name: r.layout for r in backend.layers()}["norm"] == "hwc"
    with pytest.raises(ValueError, match=r"must be a layer with a channels-first \(C, H, W\) output. Got 'norm', a 'hwc'"):
        top_patches(backend, np.zeros((2, 3, 8, 8), np.float32), "norm", [0], k=1, progress=False)
