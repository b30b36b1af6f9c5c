"""Property-based tests (hypothesis) of the NumPy core: tone mapping, occlusion windows,
receptive fields, IoU counts and quantile thresholds, each against an independent reference."""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from convscope.attribution.occlusion import window_positions  # noqa: E402
from convscope.dissection.iou import count_iou  # noqa: E402
from convscope.dissection.threshold import (TopDigitCounts, float_keys, key_to_float, low_digit_counts,  # noqa: E402
                                            merge_counts, rank_k, select_counts)
from convscope.render import TONE_MODES, normalize, resize  # noqa: E402

FAST = settings(max_examples=60, deadline=None, derandomize=True)


def maps_strategy(low=-100.0, high=100.0):
    shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 6))
    return hnp.arrays(np.float32, shapes, elements=st.floats(low, high, width=32))


# --------------------------------------------------------------------------- tone mapping
@FAST
@given(maps_strategy(), st.sampled_from([m for m in TONE_MODES if m != "none"]), st.floats(1.0, 100.0))
def test_every_tone_mapping_lands_in_the_unit_interval(m, mode, percentile):
    out = normalize(m, mode, percentile=percentile)
    assert out.shape == m.shape and out.dtype == np.float32
    assert np.isfinite(out).all()
    assert out.min() >= 0 and out.max() <= 1


@FAST
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5)),
                  elements=st.floats(0, 1, width=32)))
def test_none_passes_values_through(m):
    np.testing.assert_array_equal(normalize(m, "none"), m)


@FAST
@given(maps_strategy(), st.sampled_from(["minmax", "batch"]))
def test_minmax_and_batch_are_idempotent(m, mode):
    once = normalize(m, mode)
    np.testing.assert_allclose(normalize(once, mode), once, atol=1e-6)


@FAST
@given(maps_strategy(), st.floats(0.1, 10.0), st.floats(-100.0, 100.0), st.sampled_from(["minmax", "batch"]))
def test_minmax_ignores_scale_and_shift(m, scale, shift, mode):
    per_map = m.reshape(len(m), -1)
    spread = per_map.max(axis=1) - per_map.min(axis=1) if mode == "minmax" else np.array([m.max() - m.min()])
    assume((spread >= 1.0).all() or (spread == 0).all())  # a spread far above float32 rounding, or none
    moved = (np.float32(scale) * m + np.float32(shift)).astype(np.float32)
    np.testing.assert_allclose(normalize(moved, mode), normalize(m, mode), atol=2e-4)
    if (spread > 0).all():  # a flip mirrors (a constant map is 0 either way)
        np.testing.assert_allclose(normalize(-m, mode), 1 - normalize(m, mode), atol=1e-5)


@FAST
@given(maps_strategy(), st.floats(0.01, 100.0), st.sampled_from(["symmetric", "symmetric-batch"]))
def test_symmetric_ignores_scale_and_keeps_zero_at_the_middle(m, scale, mode):
    scaled = (np.float32(scale) * m).astype(np.float32)
    np.testing.assert_allclose(normalize(scaled, mode), normalize(m, mode), atol=1e-5)
    out = normalize(m, mode)
    np.testing.assert_array_equal(out[m == 0], 0.5)
    assert (out[m > 0] >= 0.5).all() and (out[m < 0] <= 0.5).all()


@FAST
@given(maps_strategy(), st.sampled_from(["minmax", "symmetric", "percentile"]))
def test_per_map_modes_treat_each_map_alone(m, mode):
    """Per-map scales; "percentile" decides signed or not once for the batch (one colour
    convention per batch), so it is per map among maps of the same sign convention."""
    assume(len(m) > 1)
    if mode == "percentile":
        m = np.abs(m)
    alone = np.concatenate([normalize(m[i:i + 1], mode) for i in range(len(m))])
    np.testing.assert_allclose(normalize(m, mode), alone, atol=1e-6)


# --------------------------------------------------------------------------- occlusion windows
@FAST
@given(st.integers(1, 40), st.integers(1, 40), st.data())
def test_windows_cover_every_pixel_when_the_stride_is_at_most_the_window(h, w, data):
    wh, ww = data.draw(st.integers(1, h)), data.draw(st.integers(1, w))
    sh, sw = data.draw(st.integers(1, wh)), data.draw(st.integers(1, ww))
    corners = window_positions((h, w), (wh, ww), (sh, sw))
    covered = np.zeros((h, w), int)
    for y, x in corners:
        assert 0 <= y < h and 0 <= x < w  # every window starts inside the image
        covered[y:y + wh, x:x + ww] += 1
    assert covered.min() >= 1
    ys, xs = sorted({y for y, _ in corners}), sorted({x for _, x in corners})
    assert ys[0] == 0 and xs[0] == 0 and ys[-1] + wh >= h and xs[-1] + ww >= w  # the last window reaches the edge
    assert len(ys) == -(-(h - wh) // sh) + 1 and len(corners) == len(ys) * len(xs)  # and no window more
    assert all(b - a == sh for a, b in zip(ys, ys[1:]))


@FAST
@given(st.integers(2, 30), st.integers(1, 10), st.data())
def test_windows_leave_gaps_exactly_where_the_stride_skips(n, window, data):
    assume(window < n)
    stride = data.draw(st.integers(window + 1, n))
    starts = sorted({y for y, _ in window_positions((n, n), (window, window), (stride, stride))})
    covered = np.zeros(n, bool)
    for s in starts:
        covered[s:s + window] = True
    want = np.array([any(s <= i < s + window for s in range(0, n, stride)) for i in range(n)])
    np.testing.assert_array_equal(covered, want)


# --------------------------------------------------------------------------- receptive fields
def _conv_stack(torch, data, size):
    """A random stack of convolutions and average pools with positive weights: every input
    pixel in a unit's field then reaches it with a positive weight (no cancellation)."""
    layers = []
    for i in range(data.draw(st.integers(1, 4))):
        k, s, d = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
        pad = data.draw(st.integers(0, (d * (k - 1)) // 2))
        if data.draw(st.booleans()) or i == 0:
            layer = torch.nn.Conv2d(1, 1, k, stride=s, padding=pad, dilation=d)
            with torch.no_grad():
                layer.weight.uniform_(0.5, 1.0)
                layer.bias.zero_()
        else:
            k = max(k, 2)
            layer = torch.nn.AvgPool2d(k, stride=s, padding=min(pad, k // 2))
        span = size + 2 * pad - getattr(layer, "dilation", (1,))[0] * (k - 1) - 1
        if span < 0:
            break
        size = span // s + 1
        layers.append(layer)
    assume(layers)
    return torch.nn.Sequential(*layers).eval().double()


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.data())
def test_receptive_field_is_the_support_of_the_unit_gradient(data):
    torch = pytest.importorskip("torch")
    import convscope
    from convscope.features import receptive_field

    size = data.draw(st.integers(12, 24))
    model = _conv_stack(torch, data, size)
    x = torch.ones((1, 1, size, size), dtype=torch.float64, requires_grad=True)
    out = model(x)
    assume(out.shape[2] >= 1 and out.shape[3] >= 1)
    centre = data.draw(st.booleans())  # a central unit's field lies inside the image more often
    y = out.shape[2] // 2 if centre else data.draw(st.integers(0, out.shape[2] - 1))
    c = out.shape[3] // 2 if centre else data.draw(st.integers(0, out.shape[3] - 1))
    (g,) = torch.autograd.grad(out[0, 0, y, c], x)
    support = np.argwhere(g[0, 0].numpy() > 0)

    backend = convscope.load(model, input_shape=(1, size, size))
    last = str(len(model) - 1)
    field = receptive_field(backend, last, y, c, image_size=(size, size))
    t, l, b, r = field.clipped
    if len(support) == 0:  # a unit that sees padding only (or the holes of a dilated kernel)
        return
    seen = (support[:, 0].min(), support[:, 1].min(), support[:, 0].max() + 1, support[:, 1].max() + 1)
    assert t <= seen[0] and l <= seen[1] and seen[2] <= b and seen[3] <= r  # nothing outside the field
    if field.box == field.clipped:  # wholly inside the image: the field is exactly the support's extent
        hypothesis.event("field inside the image")
        assert seen == field.box


# --------------------------------------------------------------------------- IoU counts
@FAST
@given(st.data())
def test_iou_counts_equal_full_upsampling(data):
    n, units, concepts = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    H, W = data.draw(st.integers(1, 3 * h)), data.draw(st.integers(1, 3 * w))
    acts = data.draw(hnp.arrays(np.float32, (n, units, h, w), elements=st.floats(-2, 2, width=32)))
    masks = data.draw(hnp.arrays(bool, (n, concepts, H, W)))
    pick = data.draw(st.sampled_from(["value", "random"]))
    if pick == "value":  # a threshold equal to an activation, as the quantile threshold is
        thresholds = np.array([acts[:, u].ravel()[data.draw(st.integers(0, n * h * w - 1))] for u in range(units)])
    else:
        thresholds = data.draw(hnp.arrays(np.float32, units, elements=st.floats(-2, 2, width=32)))
    inter, above = count_iou(acts, masks, thresholds)
    up = resize(acts, (H, W)) >= thresholds[None, :, None, None]  # every map upsampled in full
    np.testing.assert_array_equal(above, up.sum(axis=(0, 2, 3)))
    np.testing.assert_array_equal(inter, np.einsum("nuhw,nchw->uc", up.astype(np.int64), masks.astype(np.int64)))


# --------------------------------------------------------------------------- quantile thresholds
def _radix_threshold(acts, quantile, shards=1, batch=2):
    """The exact top-quantile value per unit as dissect computes it: candidate high-digit
    counts per shard, batch by batch, then low-digit counts in the chosen buckets, each
    summed over shards."""
    parts = [p for p in np.array_split(acts, shards) if len(p)]
    units = acts.shape[1]
    k = rank_k(acts.shape[0] * int(np.prod(acts.shape[2:])), quantile)
    counted = []
    for part in parts:
        top = TopDigitCounts(units, k)
        for b in range(0, len(part), batch):
            top.add(part[b:b + batch])
        counted.append((top.codes, top.counts))
    high, rank = select_counts(*merge_counts(counted), np.full(units, k))
    low, _ = select_counts(*merge_counts([low_digit_counts(p, high) for p in parts]), rank)
    return key_to_float((high.astype(np.uint32) << np.uint32(16)) | low), k


finite32 = st.floats(width=32, allow_nan=False, allow_infinity=True)


@FAST
@given(hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
                  elements=st.one_of(finite32, st.sampled_from([0.0, -0.0, 1.0, -1.0]))),
       st.floats(1e-4, 0.999), st.integers(1, 3), st.integers(1, 3))
def test_radix_selection_equals_sorting(acts, quantile, shards, batch):
    got, k = _radix_threshold(acts, quantile, shards, batch)
    for u in range(acts.shape[1]):
        want = np.sort(acts[:, u].ravel())[::-1][k - 1]
        assert got[u] == want, (u, got[u], want)
        assert (acts[:, u] >= got[u]).sum() >= k  # at least k values at or above the threshold


@FAST
@given(hnp.arrays(np.float32, st.integers(1, 64), elements=finite32))
def test_float_keys_sort_like_the_floats_and_invert(values):
    keys = float_keys(values)
    np.testing.assert_array_equal(key_to_float(keys).view(np.uint32), values.view(np.uint32))  # bit for bit
    ordered = values[np.argsort(keys, kind="stable")]
    assert (ordered[:-1] <= ordered[1:]).all()  # infinities included
    signs = np.signbit(ordered[ordered == 0])
    assert (signs[:-1] >= signs[1:]).all()  # -0.0 before +0.0


@FAST
@given(st.floats(-1e6, 1e6, width=32), st.integers(1, 6), st.integers(1, 6), st.integers(1, 20), st.integers(1, 20))
def test_a_flat_map_stays_exactly_flat_when_resized_and_counted(value, h, w, H, W):
    """A saturated unit (ReLU6 at 6, say) whose threshold is its flat value counts every pixel:
    bilinear interpolation written as ``a + f (b - a)`` keeps equal neighbours exact."""
    acts = np.full((1, 1, h, w), value, np.float32)
    up = resize(acts, (H, W))
    assert (up == np.float32(value)).all()
    inter, above = count_iou(acts, np.ones((1, 1, H, W), bool), np.array([value], np.float32))
    assert above[0] == H * W and inter[0, 0] == H * W
