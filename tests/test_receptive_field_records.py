"""Receptive fields through what modern CNNs do, from layer records written by hand.

Each case states the records a backend reports for a small torch network, and checks the
field against the support of the input gradient of that same network (autograd, not the
code under test): the box contains the support and is at most one pixel wider per side
where the field is rounded outwards (upsampling, transposed convs)."""
import numpy as np
import pytest

from convscope.backend import Layer
from convscope.features.receptive_field import field_geometry

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


def box_of(records, layer, y, x):
    (sy, ay, by), (sx, ax, bx) = field_geometry(records)[layer]
    return (int(np.floor(sy * y + ay)), int(np.floor(sx * x + ax)), int(np.ceil(sy * y + by)) + 1,
            int(np.ceil(sx * x + bx)) + 1)


def support(net, size, y, x):
    """Bounding box of the input pixels that reach unit (y, x) of net's output (any channel)."""
    torch.manual_seed(0)
    xt = torch.rand(4, 3, *size, requires_grad=True)
    net(xt)[:, :, y, x].sum().backward()
    rows, cols = np.nonzero(xt.grad.abs().sum(dim=(0, 1)).numpy() > 0)
    return rows.min(), cols.min(), rows.max() + 1, cols.max() + 1


def within(box, want, slack=0):
    top, left, bottom, right = box
    t, l, b, r = want
    return top <= t and left <= l and bottom >= b and right >= r and \
        t - top <= slack and l - left <= slack and bottom - b <= slack and right - r <= slack


def clipped(box, size):
    return max(box[0], 0), max(box[1], 0), min(box[2], size[0]), min(box[3], size[1])


class SE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc = nn.Conv2d(c, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def test_a_squeeze_excitation_gate_leaves_the_field_of_x():
    # records of nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), SE(4), nn.Conv2d(4, 4, 3, padding=1))
    records = [
        Layer("0", "conv", (4, 16, 16), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), ("input",), layout="chw"),
        Layer("1.fc", "conv", (4, 1, 1), (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), ("0",), layout="chw"),
        Layer("1", "block", (4, 16, 16), inputs=("0", "1.fc"), layout="chw"),  # x * gate
        Layer("2", "conv", (4, 16, 16), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), ("1",), layout="chw"),
    ]
    # the gate depends on every pixel, but it is a per-channel factor: the field is that of x
    box = box_of(records, "2", 5, 6)
    assert box == (5 * 2 - 3, 6 * 2 - 3, 5 * 2 + 4, 6 * 2 + 4)
    g = field_geometry(records)["1.fc"]
    assert g != "whole"  # the 1 x 1 map itself has the field of the conv before the pooling


def test_padding_and_cropping_layers_shift_the_field():
    net = nn.Sequential(nn.ZeroPad2d((2, 1, 3, 0)), nn.Conv2d(3, 4, 3), nn.ZeroPad2d(-1), nn.Conv2d(4, 4, 3, stride=2))
    size = (20, 20)
    records = [
        Layer("0", "other", (3, 23, 23), (1, 1), (1, 1), (3, 2, 0, 1), (1, 1), ("input",), op="ZeroPad2d"),
        Layer("1", "conv", (4, 21, 21), (3, 3), (1, 1), (0, 0, 0, 0), (1, 1), ("0",)),
        Layer("2", "other", (4, 19, 19), (1, 1), (1, 1), (-1, -1, -1, -1), (1, 1), ("1",), op="ZeroPad2d"),
        Layer("3", "conv", (4, 9, 9), (3, 3), (2, 2), (0, 0, 0, 0), (1, 1), ("2",)),
    ]
    for y, x in ((0, 0), (4, 7), (8, 8)):
        assert clipped(box_of(records, "3", y, x), size) == support(net, size, y, x)


def test_a_permute_to_channels_last_and_back_keeps_the_field():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.dw = nn.Conv2d(3, 3, 7, padding=3, groups=3)
            self.norm = nn.LayerNorm(3)
            self.fc = nn.Linear(3, 6)

        def forward(self, x):
            return self.fc(self.norm(self.dw(x).permute(0, 2, 3, 1))).permute(0, 3, 1, 2)

    records = [
        Layer("dw", "conv", (3, 24, 24), (7, 7), (1, 1), (3, 3, 3, 3), (1, 1), ("input",), layout="chw"),
        Layer("norm", "norm", (24, 24, 3), inputs=("dw",), layout="hwc"),
        Layer("fc", "linear", (24, 24, 6), inputs=("norm",), layout="hwc"),
    ]
    assert field_geometry(records)["fc"] == field_geometry(records)["dw"]
    assert clipped(box_of(records, "fc", 10, 2), (24, 24)) == support(Block(), (24, 24), 10, 2)


def test_tokens_and_vectors_see_the_whole_image():
    records = [Layer("embed", "conv", (8, 4, 4), (4, 4), (4, 4), (0, 0, 0, 0), (1, 1), ("input",), layout="chw"),
               Layer("tokens", "other", (17, 8), inputs=("embed",), layout="tokens"),
               Layer("head", "linear", (10,), inputs=("tokens",), layout="vector")]
    geo = field_geometry(records)
    assert geo["tokens"] == "whole" and geo["head"] == "whole"


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsampling_rounds_the_field_outwards(mode):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.Upsample(scale_factor=2, mode=mode),
                        nn.Conv2d(4, 4, 3, padding=1))
    records = [Layer("0", "conv", (4, 8, 8), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), ("input",)),
               Layer("1", "upsample", (4, 16, 16), stride=(2, 2), inputs=("0",), op="Upsample"),
               Layer("2", "conv", (4, 16, 16), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), ("1",))]
    for y, x in ((0, 0), (7, 8), (15, 3)):
        got = clipped(box_of(records, "2", y, x), (16, 16))
        assert within(got, support(net, (16, 16), y, x), slack=4), (y, x, got)


def test_a_transposed_conv_field_contains_the_support():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, stride=2), nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1))
    records = [Layer("0", "conv", (4, 8, 8), (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), ("input",)),
               Layer("1", "deconv", (4, 16, 16), (4, 4), (2, 2), (1, 1, 1, 1), (1, 1), ("0",), op="ConvTranspose2d")]
    for y, x in ((0, 0), (5, 9), (15, 15)):
        got = clipped(box_of(records, "1", y, x), (16, 16))
        assert within(got, support(net, (16, 16), y, x), slack=2), (y, x, got)


def test_a_size_change_without_geometry_names_the_layer_and_the_operator():
    records = [Layer("0", "conv", (4, 16, 16), (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), ("input",)),
               Layer("1", "other", (4, 8, 8), inputs=("0",), op="Interpolate")]
    reason = field_geometry(records)["1"].reason
    assert "Interpolate layer '1'" in reason and "(16, 16) -> (8, 8)" in reason
