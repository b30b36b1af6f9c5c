"""The box arithmetic of incremental occlusion (convscope._incremental) against brute force in
float64: which outputs of a conv or pool a box of changed inputs can reach (an indicator map
convolved with a kernel of ones), and that the input box it names computes exactly those
outputs with padding 0 (torch conv2d, max_pool2d, avg_pool2d with asymmetric padding, dilation,
ceil mode); union and upsampling against the changed set of a perturbed map."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from convscope._incremental import (Region, through_upsample, through_window, union, window_patches,  # noqa: E402
                                    window_region)


def _random_case(rng):
    kernel = tuple(int(v) for v in rng.integers(1, 6, 2))
    stride = tuple(int(v) for v in rng.integers(1, 4, 2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    padding = tuple(int(rng.integers(0, 1 + (dilation[a % 2] * (kernel[a % 2] - 1)) // 2 + 1)) for a in range(4))
    shape = tuple(int(v) for v in rng.integers(6, 20, 2))
    batch = int(rng.integers(1, 5))
    size = tuple(int(rng.integers(1, s + 1)) for s in shape)
    starts = np.stack([rng.integers(0, shape[a] - size[a] + 1, batch) for a in (0, 1)], axis=1)
    return kernel, stride, dilation, padding, Region(starts, size, shape)


def _out_shape(n, k, s, d, p_lo, p_hi, ceil=False):
    span = n + p_lo + p_hi - d * (k - 1) - 1
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + p_lo:  # the last window must start inside the input or the left padding
        out -= 1
    return out


def _indicator(region, b):
    m = np.zeros(region.shape)
    (y, x), (h, w) = region.starts[b], region.size
    m[y:y + h, x:x + w] = 1
    return m


def _bbox(mask):
    rows, cols = np.nonzero(mask)
    return rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def _reach(region, b, kernel, stride, dilation, padding):
    m = F.pad(torch.from_numpy(_indicator(region, b))[None, None], (padding[1], padding[3], padding[0], padding[2]))
    return F.conv2d(m, torch.ones((1, 1, *kernel), dtype=torch.float64), stride=stride, dilation=dilation)[0, 0] > 0


def _check_region_contains_reach(region, out, kernel, stride, dilation, padding):
    """Every output whose receptive field (dilated taps) meets the box lies in the out box; the
    box is as long as the largest reach of the interval hulls of the receptive fields in the
    batch, axis by axis (a tap skipping the box counts: recomputing it is harmless), at least 1."""
    longest = [1, 1]
    hull = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    for b in range(len(region.starts)):
        reach = _reach(region, b, kernel, stride, dilation, padding)
        assert tuple(reach.shape) == out.shape
        (y, x), (h, w) = out.starts[b], out.size
        assert 0 <= y and y + h <= out.shape[0] and 0 <= x and x + w <= out.shape[1]
        if reach.any():
            r0, r1, c0, c1 = _bbox(reach.numpy())
            assert y <= r0 and r1 <= y + h and x <= c0 and c1 <= x + w
        for a in (0, 1):  # each axis on its own: the box's rows (columns) over the whole other axis
            starts, size = region.starts.copy(), list(region.size)
            starts[:, 1 - a], size[1 - a] = 0, region.shape[1 - a]
            wide = _reach(Region(starts, tuple(size), region.shape), b, hull, stride, (1, 1), padding)
            if wide.any():
                lo, hi = _bbox(wide.numpy())[2 * a:2 * a + 2]
                longest[a] = max(longest[a], hi - lo)
    assert tuple(out.size) == tuple(longest)


def _crops(padded, starts, size):
    return torch.stack([padded[0, :, y:y + size[0], x:x + size[1]] for y, x in starts])


def _out_crops(full, region):
    return torch.stack([full[0, :, y:y + region.size[0], x:x + region.size[1]] for y, x in region.starts])


@pytest.mark.parametrize("seed", range(150))
def test_conv_region_and_input_box(seed):
    rng = np.random.default_rng(seed)
    while True:  # draw again until the kernel fits the padded map (every seed tests a case)
        kernel, stride, dilation, padding, region = _random_case(rng)
        h, w = region.shape
        out_shape = (_out_shape(h, kernel[0], stride[0], dilation[0], padding[0], padding[2]),
                     _out_shape(w, kernel[1], stride[1], dilation[1], padding[1], padding[3]))
        if min(out_shape) >= 1:
            break
    out, in_starts, in_size = through_window(region, kernel, stride, padding, dilation, out_shape)
    _check_region_contains_reach(region, out, kernel, stride, dilation, padding)
    x = torch.from_numpy(rng.standard_normal((1, 2, h, w)))
    weight = torch.from_numpy(rng.standard_normal((3, 2, *kernel)))
    padded = F.pad(x, (padding[1], padding[3], padding[0], padding[2]))
    full = F.conv2d(padded, weight, stride=stride, dilation=dilation)
    assert tuple(full.shape[-2:]) == out_shape
    got = F.conv2d(_crops(padded, in_starts, in_size), weight, stride=stride, dilation=dilation)
    torch.testing.assert_close(got, _out_crops(full, out), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(100))
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pool_region_and_input_box_with_ceil_mode(seed, pool):
    rng = np.random.default_rng(1000 + seed)
    while True:  # draw again until the kernel fits the padded map (every seed tests a case)
        kernel, stride, _, _, region = _random_case(rng)
        dilation = (1, 1) if pool == "avg" else tuple(int(v) for v in rng.integers(1, 3, 2))
        pad = tuple(int(rng.integers(0, k // 2 + 1)) for k in kernel)
        ceil = bool(rng.integers(0, 2))
        h, w = region.shape
        if all(d * (k - 1) + 1 <= n + 2 * p for d, k, n, p in zip(dilation, kernel, (h, w), pad)):
            break
    x = torch.from_numpy(rng.standard_normal((1, 2, h, w)))
    if pool == "max":
        full = F.max_pool2d(x, kernel, stride, pad, dilation, ceil_mode=ceil)
    else:
        full = F.avg_pool2d(x, kernel, stride, pad, ceil_mode=ceil, count_include_pad=True)
    out_shape = tuple(full.shape[-2:])
    assert out_shape == tuple(_out_shape(n, k, s, d, p, p, ceil) for n, k, s, d, p in
                              zip((h, w), kernel, stride, dilation, pad))
    padding = (pad[0], pad[1], pad[0], pad[1])
    out, in_starts, in_size = through_window(region, kernel, stride, padding, dilation, out_shape)
    ends = in_starts + np.asarray(in_size)
    extra = [max(0, int(ends[:, a].max()) - (region.shape[a] + 2 * pad[a])) for a in (0, 1)]
    assert ceil or extra == [0, 0]  # past the padded map only in ceil mode
    fill = float("-inf") if pool == "max" else 0.0
    padded = F.pad(x, (pad[1], pad[1] + extra[1], pad[0], pad[0] + extra[0]), value=fill)
    crops = _crops(padded, in_starts, in_size)
    if pool == "max":
        torch.testing.assert_close(F.max_pool2d(crops, kernel, stride, 0, dilation), _out_crops(full, out))
    elif not ceil:  # the divisor of a window hanging past the map is not the kernel's area
        torch.testing.assert_close(F.avg_pool2d(crops, kernel, stride, 0), _out_crops(full, out))


def test_threshold_caps_the_box_and_one_is_exact():
    rng = np.random.default_rng(5)
    region = Region(rng.integers(0, 20, (4, 2)), (12, 12), (32, 32))
    exact = through_window(region, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (32, 32))[0]
    assert through_window(region, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (32, 32), threshold=1.0)[0].size == exact.size
    capped = through_window(region, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), (32, 32), threshold=0.25)[0]
    assert capped.size == (8, 8) and exact.size == (14, 14)


@pytest.mark.parametrize("seed", range(40))
def test_union_holds_every_box(seed):
    rng = np.random.default_rng(2000 + seed)
    shape, batch = (int(rng.integers(5, 30)), int(rng.integers(5, 30))), 4
    regions = []
    for _ in range(int(rng.integers(1, 4))):
        size = tuple(int(rng.integers(1, s + 1)) for s in shape)
        regions.append(Region(np.stack([rng.integers(0, shape[a] - size[a] + 1, batch) for a in (0, 1)], 1),
                              size, shape))
    u = union(regions)
    hull = []
    for b in range(batch):
        mask = sum(_indicator(r, b) for r in regions) > 0
        r0, r1, c0, c1 = _bbox(mask)
        (y, x), (h, w) = u.starts[b], u.size
        assert y <= r0 and r1 <= y + h and x <= c0 and c1 <= x + w and y + h <= shape[0] and x + w <= shape[1]
        hull.append((r1 - r0, c1 - c0))
    assert tuple(u.size) == tuple(np.max(hull, axis=0))
    with pytest.raises(ValueError, match="different shapes"):
        union([regions[0], Region(regions[0].starts, (1, 1), (shape[0] + 1, shape[1]))])


@pytest.mark.parametrize("mode, halo", [("nearest", 0), ("bilinear", 1)])
@pytest.mark.parametrize("seed", range(20))
def test_upsample_region_holds_the_changed_outputs(mode, halo, seed):
    rng = np.random.default_rng(3000 + seed)
    shape = (int(rng.integers(4, 12)), int(rng.integers(4, 12)))
    scale = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    size = tuple(int(rng.integers(1, s)) for s in shape)
    region = Region(np.stack([rng.integers(0, shape[a] - size[a] + 1, 3) for a in (0, 1)], 1), size, shape)
    out_shape = (shape[0] * scale[0], shape[1] * scale[1])
    up = through_upsample(region, scale, out_shape, halo)
    x = torch.from_numpy(rng.standard_normal((1, 1, *shape)))
    base = F.interpolate(x, scale_factor=scale, mode=mode)
    for b in range(3):
        changed = F.interpolate(x + torch.from_numpy(_indicator(region, b))[None, None], scale_factor=scale, mode=mode)
        r0, r1, c0, c1 = _bbox((changed != base)[0, 0].numpy())
        (y, xx), (h, w) = up.starts[b], up.size
        assert y <= r0 and r1 <= y + h and xx <= c0 and c1 <= xx + w


def test_window_patches_paste_the_occluded_image():
    rng = np.random.default_rng(7)
    image = rng.random((3, 10, 13)).astype(np.float32)
    filled = rng.random((3, 10, 13)).astype(np.float32)
    corners = np.array([[0, 0], [8, 11], [4, 9], [9, 0]])  # three cut at the border
    patches, starts = window_patches(image, filled, corners, (4, 5))
    assert patches.shape == (4, 3, 4, 5)
    assert (starts == window_region(corners, (4, 5), (10, 13)).starts).all()
    for (y, x), (sy, sx), p in zip(corners, starts, patches):
        occluded = image.copy()
        occluded[:, y:y + 4, x:x + 5] = filled[:, y:y + 4, x:x + 5]
        pasted = image.copy()
        pasted[:, sy:sy + 4, sx:sx + 5] = p
        assert np.array_equal(pasted, occluded)
