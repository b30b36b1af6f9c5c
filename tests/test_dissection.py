"""Network Dissection: exact thresholds and counts against brute force (candidate-only digit
counts, shards with fewer than k values, counts in pieces), the cache in memory and on disk,
a planted unit, the demo model, Dask, Broden, bad input; weakly supervised segmentation."""
import csv
import os
import tracemalloc

import numpy as np
import pytest
from PIL import Image

import convscope
from convscope.data import CONCEPTS, demo_model, shapes
from convscope.dissection import (Broden, ConceptArrays, centre_box, compare, dissect, label_changes, segment,
                                  segmentation_iou)
from convscope.dissection import iou as iou_module
from convscope.dissection._cache import fill_cache
from convscope.dissection.concepts import concept_source
from convscope.dissection.iou import count_iou, mask_pixel_counts, pixel_codes
from convscope.dissection.threshold import (TopDigitCounts, float_keys, key_to_float, low_digit_counts,
                                            merge_counts, rank_k, select_counts)
from convscope.render import resize

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


def digit_histogram(acts, prefix=None):
    """Dense reference: per-unit histogram (U, 65536) of the high 16-bit digit of every key of
    ``acts`` (N, U, ...), or with ``prefix`` (U,) of the low digit of the keys sharing it."""
    units = acts.shape[1]
    keys = float_keys(acts).transpose(1, 0, *range(2, acts.ndim)).reshape(units, -1)
    hist = np.zeros((units, 1 << 16), np.int64)
    for u in range(units):
        chosen = keys[u] >> 16 if prefix is None else keys[u][keys[u] >> 16 == prefix[u]] & 0xFFFF
        hist[u] = np.bincount(chosen, minlength=1 << 16)
    return hist


def colour_detector(rgb_weights=(1.0, -1.5, -1.5), bias=-0.1):
    """Unit 0 of 'relu' saturates on the colour the weights pick (red by default); unit 1 is noise."""
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 2, 1))
    model.add_module("relu", nn.ReLU6())
    model.add_module("pool", nn.MaxPool2d(2))
    model.add_module("gap", nn.AdaptiveAvgPool2d(1))
    model.add_module("flatten", nn.Flatten())
    model.add_module("fc", nn.Linear(2, 2))
    with torch.no_grad():
        model.conv.weight.zero_()
        model.conv.weight[0, :, 0, 0] = 100 * torch.tensor(rgb_weights)
        model.conv.bias[0] = 100 * bias
        model.conv.weight[1] = torch.randn(3, 1, 1, generator=torch.Generator().manual_seed(0))
    return model.eval()


def brute_force(model, layer, data, quantile):
    acts = convscope.load(model).activations(data.images, [layer])[layer]
    n, u, h, w = acts.shape
    flat = np.sort(acts.transpose(1, 0, 2, 3).reshape(u, -1), axis=1)
    k = max(1, int(np.ceil(quantile * n * h * w - 1e-9)))
    t = flat[:, -k]
    up = resize(acts, data.masks.shape[2:]) >= t[None, :, None, None]
    inter = np.einsum("nuhw,nchw->uc", up.astype(np.int64), data.masks.astype(np.int64))
    union = up.sum(axis=(0, 2, 3))[:, None] + data.masks.sum(axis=(0, 2, 3))[None] - inter
    return t, inter, union


@pytest.mark.parametrize("layer", ["relu3", "pool2"])
def test_thresholds_and_counts_equal_brute_force(layer):
    data = shapes(60, seed=3)
    d = dissect(demo_model(), layer, data, quantile=0.01, batch_size=16, progress=False)
    t, inter, union = brute_force(demo_model(), layer, data, 0.01)
    np.testing.assert_array_equal(d.thresholds, t)
    np.testing.assert_array_equal(d.intersection, inter)
    np.testing.assert_array_equal(d.union, union)


def test_count_iou_with_non_integer_scale_matches_full_upsampling(rng):
    acts = rng.standard_normal((3, 4, 5, 7)).astype(np.float32)
    masks = rng.random((3, 2, 23, 19)) < 0.4
    t = np.quantile(acts, 0.8, axis=(0, 2, 3)).astype(np.float32)
    inter, above = count_iou(acts, masks, t)
    up = resize(acts, (23, 19)) >= t[None, :, None, None]
    np.testing.assert_array_equal(inter, np.einsum("nuhw,nchw->uc", up.astype(int), masks.astype(int)))
    np.testing.assert_array_equal(above, up.sum(axis=(0, 2, 3)))


def test_planted_colour_unit_is_labelled_with_its_colour():
    d = dissect(colour_detector(), "relu", shapes(300, seed=4), progress=False)
    row = next(r for r in d.table() if r["unit"] == 0)
    assert row["concept"] == "red" and row["category"] == "color" and row["iou"] > 0.5
    pooled = dissect(colour_detector(), "pool", shapes(300, seed=4), progress=False)
    assert pooled.concepts[pooled.best[0]] == "red" and pooled.iou[0].max() > 0.5  # upsampled 2x


def test_fine_tuning_comparison_and_layer_chart():
    data = shapes(200, seed=4)
    before = dissect(colour_detector(), "relu", data, progress=False)
    after = dissect(colour_detector((-1.5, 1.0, -1.5)), "relu", data, progress=False)  # now green
    change = next(c for c in label_changes(before, after) if c["unit"] == 0)
    assert change["before"] == "red" and change["after"] == "green"
    picture = compare({"before": before, "after": after})
    assert picture.to_rgb().shape[2] == 3 and picture._repr_png_().startswith(b"\x89PNG")


def test_demo_model_detectors_follow_the_data(tmp_path):
    data = shapes(400, seed=7)
    early = dissect(demo_model(), "relu1", data, progress=False)
    late = dissect(demo_model(), "relu4", data, progress=False)
    assert early.unique_detectors()["color"] >= 3 and early.unique_detectors()["shape"] == 0
    assert late.unique_detectors()["shape"] >= 2
    assert all(r["iou"] > 0.04 for r in late.detectors())
    page = late.report(tmp_path / "dissect.html", units=2, k=2)
    text = page.read_text()
    assert text.count("<img") == 3 and "Network Dissection of relu4" in text and "<table>" in text
    assert (tmp_path / "dissect.png").exists()


def test_dask_run_is_identical_to_one_process():
    """Shards on two workers, their caches in memory or on disk; at quantile 0.6 each shard
    holds fewer values than k, so its candidate counts never drop anything."""
    distributed = pytest.importorskip("distributed")
    data = shapes(150, seed=9)
    runs = [dict(), dict(quantile=0.6, cache_ram_mb=0)]
    local = [dissect(demo_model(), "relu3", data, batch_size=32, progress=False, **kw) for kw in runs]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = [dissect(demo_model(), "relu3", data, batch_size=32, progress=False, client=client, **kw)
                  for kw in runs]
    for one, two in zip(local, remote):
        for name in ("thresholds", "intersection", "union", "mask_counts", "unit_maxima"):
            np.testing.assert_array_equal(getattr(two, name), getattr(one, name))
    t, inter, union = brute_force(demo_model(), "relu3", data, 0.6)
    np.testing.assert_array_equal(remote[1].thresholds, t)
    np.testing.assert_array_equal(remote[1].intersection, inter)
    np.testing.assert_array_equal(remote[1].union, union)


class FailsLate(ConceptArrays):
    """Concept arrays whose images from ``fail_at`` on cannot be read (a broken file, say)."""

    fail_at = 100

    def batches(self, batch_size=64, start=0, stop=None):
        for i, batch in enumerate(super().batches(batch_size, start, stop)):
            if start + i * batch_size >= self.fail_at:
                raise OSError(f"image {start + i * batch_size} is unreadable")
            yield batch


@pytest.mark.parametrize("cache_ram_mb", [256, 0])
def test_a_failing_dask_shard_leaves_no_cache_behind(tmp_path, cache_ram_mb):
    distributed = pytest.importorskip("distributed")
    from convscope.dissection import _cache

    data = shapes(150, seed=9)
    source = FailsLate(data.images, data.masks, CONCEPTS)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        with pytest.raises(OSError, match="unreadable"):
            dissect(demo_model(), "relu3", source, batch_size=32, progress=False, client=client,
                    cache_dir=tmp_path, cache_ram_mb=cache_ram_mb)
    assert not _cache._IN_MEMORY  # the shard that finished dropped its cache
    assert not list(tmp_path.iterdir())


def test_memory_does_not_grow_with_the_dataset():
    def peak(n):
        tracemalloc.start()
        dissect(demo_model(), "relu3", shapes(n, seed=1), batch_size=64, progress=False, cache_ram_mb=4)
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top

    small, large = peak(256), peak(1024)  # both caches (17 MB, 69 MB) beyond the 4 MB budget: on disk
    assert large < 1.3 * small, (small, large)  # 4x the images, the same working memory


def test_cache_is_in_memory_within_its_budget_and_on_disk_beyond(tmp_path):
    data = shapes(40, seed=5)
    backend = convscope.load(demo_model())
    units, h, w = backend.activations(data.images[:1], ["relu3"])["relu3"].shape[1:]
    per_image = units * h * w * 4 + units * 4 + 2 * 64 * 64  # activations, maxima, 14 concepts in 2 bytes a pixel
    for budget, on_disk in [(40 * per_image, False), (40 * per_image - 1, True)]:
        cache = fill_cache(backend, "relu3", concept_source(data), 0, 40, 16, str(tmp_path), ram_bytes=budget)[0]
        assert (cache.folder is not None) == on_disk and bool(os.listdir(tmp_path)) == on_disk
        cache.remove()
        assert not os.listdir(tmp_path)
    in_memory = dissect(backend, "relu3", data, batch_size=16, progress=False, cache_dir=tmp_path)
    on_disk = dissect(backend, "relu3", data, batch_size=16, progress=False, cache_dir=tmp_path, cache_ram_mb=0)
    assert not os.listdir(tmp_path)
    for name in ("thresholds", "intersection", "union", "mask_counts", "unit_maxima"):
        np.testing.assert_array_equal(getattr(in_memory, name), getattr(on_disk, name))
    t, inter, union = brute_force(demo_model(), "relu3", data, 0.005)
    np.testing.assert_array_equal(on_disk.thresholds, t)
    np.testing.assert_array_equal(on_disk.intersection, inter)
    np.testing.assert_array_equal(on_disk.union, union)


def awkward_activations(rng, n, units=5):
    """Per unit: ReLU output (ties at 0), rounded values (ties), tiny and subnormal values,
    negatives with -0.0 and -inf, and a unit with +inf."""
    a = rng.standard_normal((n, units, 3, 4)).astype(np.float32)
    a[:, 0] = np.maximum(a[:, 0], 0)
    a[:, 1] = np.round(a[:, 1], 1)
    a[:, 2] *= np.float32(1e-39)
    a[:, 3] = -np.abs(a[:, 3])
    a[:, 3, 0, 0] = -0.0
    a[::3, 3, 1, 1] = -np.inf
    a[::2, 4, 2, 3] = np.inf
    return a


@pytest.mark.parametrize("quantile", [0.001, 0.01, 0.05, 0.3, 0.9])
@pytest.mark.parametrize("shard_sizes", [(60,), (3, 40, 17), (1, 1, 58)])
def test_candidate_counts_select_the_exact_kth_largest(rng, quantile, shard_sizes):
    """Shards counted batch by batch with their own floors, some holding fewer than k values
    (the 1-image shards always, every shard at 0.9), add up to the one-process selection."""
    shards = [awkward_activations(rng, size) for size in shard_sizes]
    acts = np.concatenate(shards)
    units = acts.shape[1]
    k = rank_k(acts.shape[0] * 12, quantile)
    counted = []
    for shard in shards:
        top = TopDigitCounts(units, k)
        for b in range(0, len(shard), 4):
            top.add(shard[b:b + 4])
        counted.append((top.codes, top.counts))
    codes, counts = merge_counts(counted)
    high, rank = select_counts(codes, counts, np.full(units, k))
    dense = digit_histogram(acts)  # every value counted
    for u in range(units):  # exact in the chosen bucket and every bucket above it
        mine = np.zeros(1 << 16, np.int64)
        mine[codes[codes >> 16 == u] & 0xFFFF] = counts[codes >> 16 == u]
        np.testing.assert_array_equal(mine[high[u]:], dense[u, high[u]:])
    if quantile <= 0.05 and max(shard_sizes) >= 40:
        assert counts.sum() < acts.size / 4  # most values were never counted
    low, _ = select_counts(*merge_counts([low_digit_counts(shard, high) for shard in shards]), rank)
    got = key_to_float((high << np.uint32(16)) | low)
    want = key_to_float(np.sort(float_keys(acts.transpose(1, 0, 2, 3).reshape(units, -1)), axis=1)[:, -k])
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))  # bit for bit (-0.0 is not 0.0)


@pytest.mark.parametrize("bucket_of", ["values", "infinity"])
def test_low_digit_counts_equal_the_dense_histogram(rng, bucket_of):
    acts = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    acts[0, 0, 0, :3] = np.inf
    acts[1, 0, 0, 0] = np.array(0x7F800001, np.uint32).view(np.float32)  # a NaN whose key shares +inf's bucket
    acts[1, 0, 0, 1] = np.nan
    acts[2, 1, :2] = -np.inf
    acts[2, 2, 0, 0] = -0.0
    acts[3, 2, 0, :2] = 0.0
    prefix = float_keys(np.array([acts[4, 0, 1, 1], -0.0, 0.0], np.float32)) >> np.uint32(16)
    if bucket_of == "infinity":  # its lowest float is not finite: found by keys, not by a float comparison
        prefix[0] = float_keys(np.array([np.inf], np.float32))[0] >> np.uint32(16)
    codes, counts = low_digit_counts(acts, prefix)
    sparse = np.zeros((3, 1 << 16), np.int64)
    sparse[codes >> 16, codes & 0xFFFF] = counts
    np.testing.assert_array_equal(sparse, digit_histogram(acts, prefix))
    assert counts.sum() >= 3


@pytest.mark.parametrize("piece", [8, 1 << 12])
def test_count_iou_in_pieces_matches_full_upsampling(monkeypatch, rng, piece):
    """Blocks interpolated in pieces of a power of two (decoded by shifts) and a remainder
    (decoded by division); 11 concepts take two bytes a pixel."""
    monkeypatch.setattr(iou_module, "_PIECE", piece)
    acts = rng.standard_normal((5, 6, 8, 8)).astype(np.float32)
    masks = rng.random((5, 11, 64, 64)) < 0.3
    t = np.quantile(acts, 0.7, axis=(0, 2, 3)).astype(np.float32)
    inter, above = count_iou(acts, masks, t)
    up = resize(acts, (64, 64)) >= t[None, :, None, None]
    np.testing.assert_array_equal(above, up.sum(axis=(0, 2, 3)))
    np.testing.assert_array_equal(inter, np.einsum("nuhw,nchw->uc", up.astype(np.int64), masks.astype(np.int64)))


def test_pixel_codes_and_mask_counts(rng):
    masks = rng.random((3, 19, 37, 41)) < 0.5  # 1517 pixels: 190 words, 128 added as lanes and 62 after
    masks[1, 4] = True
    codes = pixel_codes(masks)
    assert codes.shape == (3, 3, 37 * 41) and codes.dtype == np.uint8
    for c in range(19):
        np.testing.assert_array_equal((codes[:, c // 8] >> (c % 8)) & 1, masks[:, c].reshape(3, -1))
    np.testing.assert_array_equal(mask_pixel_counts(masks), masks.sum(axis=(0, 2, 3)))


def write_broden(root, missing=False):
    (root / "images").mkdir(parents=True)
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        w.writerows([[1, "red-c", "color(2)", 2, 0, ""], [2, "ball", "object(1)", 1, 0, ""], [3, "striped", "texture(1)", 1, 0, ""]])
    rows = []
    for i in range(2):
        image = np.zeros((8, 8, 3), np.uint8)
        image[:4] = (200, 10, 10)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        labels = np.zeros((8, 8, 3), np.uint8)
        labels[:4, :, 0] = 1  # colour 'red-c' (number 1) on the top half
        Image.fromarray(labels).save(root / "images" / f"im{i}_color.png")
        obj = np.zeros((8, 8, 3), np.uint8)
        obj[2:6, 2:6, 0] = 2  # object 'ball' (number 2) in the middle
        if not (missing and i == 1):
            Image.fromarray(obj).save(root / "images" / f"im{i}_object.png")
        rows.append({"image": f"im{i}.png", "split": "train", "ih": 8, "iw": 8, "sh": 8, "sw": 8,
                     "color": f"im{i}_color.png", "object": f"im{i}_object.png", "texture": "3" if i == 0 else ""})
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def test_broden_reader(tmp_path):
    write_broden(tmp_path)
    b = Broden(tmp_path, size=16, mask_size=8)
    assert b.concepts == ["red-c", "ball", "striped"] and b.categories == {"color": ["red-c"], "object": ["ball"], "texture": ["striped"]}
    images, masks = next(b.batches(2))
    assert images.shape == (2, 3, 16, 16) and masks.shape == (2, 3, 8, 8)
    assert masks[0, 0, :4].all() and not masks[0, 0, 4:].any()
    assert masks[0, 1].sum() == 16 and masks[0, 1, 2:6, 2:6].all()
    assert masks[0, 2].all() and not masks[1, 2].any()  # image-level texture label


def test_broden_missing_file_is_named(tmp_path):
    write_broden(tmp_path, missing=True)
    with pytest.raises(FileNotFoundError, match="im1_object.png"):
        list(Broden(tmp_path, size=16, mask_size=8).batches(2))


def test_bad_input():
    data = shapes(8)
    with pytest.raises(ValueError, match=r"'layer' parameter of dissect must name a layer with a spatial map"):
        dissect(demo_model(), "gap", data, progress=False)
    with pytest.raises(ValueError, match=r"known layer name\. Got 'relu9'"):
        dissect(demo_model(), "relu9", data, progress=False)
    skewed = ConceptArrays(data.images, data.masks[:, :, :, :32], CONCEPTS)
    with pytest.raises(ValueError, match=r"masks with the aspect ratio of their images \(64x64\). Got masks of 64x32"):
        dissect(demo_model(), "relu3", skewed, progress=False)
    masks = data.masks.copy()
    masks[:, 0] = False
    with pytest.raises(ValueError, match=r"no pixels anywhere for 'circle'"):
        dissect(demo_model(), "relu3", ConceptArrays(data.images, masks, CONCEPTS), progress=False)
    assert dissect(demo_model(), "relu3", ConceptArrays(data.images, masks, CONCEPTS), progress=False,
                   skip_empty=True).iou[:, 0].max() == 0
    with pytest.raises(ValueError, match=r"'quantile' parameter of dissect must be > 0"):
        dissect(demo_model(), "relu3", data, quantile=0)
    with pytest.raises(TypeError, match=r"'concepts' parameter of dissect must be a concept dataset"):
        dissect(demo_model(), "relu3", [1, 2, 3])


def grad_cam_by_hand(model, data):
    backend = convscope.load(model)
    g = backend.gradient(data.images, {"output": np.eye(4, dtype=np.float32)[data.labels]}, wrt=["relu4"])
    weights = g["relu4"].mean(axis=(2, 3))[:, :, None, None]
    return resize(np.maximum((weights * g.activations["relu4"]).sum(axis=1), 0), (64, 64))


def test_grabcut_on_grad_cam_beats_a_centred_box():
    pytest.importorskip("cv2")
    data = shapes(60, seed=11)
    cam = grad_cam_by_hand(demo_model(), data)
    truth = data.object_masks
    grabcut = segmentation_iou(segment(cam, data.images, method="grabcut"), truth).mean()
    box = segmentation_iou(centre_box(truth.shape), truth).mean()
    pseudo = segmentation_iou(segment(cam, method="threshold", fraction=0.5), truth).mean()
    assert grabcut > box + 0.3 and grabcut > 0.7
    assert pseudo > box


def test_segmentation_iou_by_hand_and_bad_input():
    a = np.zeros((2, 2, 2), bool)
    b = np.zeros((2, 2, 2), bool)
    a[0, 0] = True
    b[0, :, 0] = True
    np.testing.assert_allclose(segmentation_iou(a, b), [1 / 3, 1.0])
    with pytest.raises(ValueError, match=r"'images' parameter of segment must be the images"):
        segment(np.ones((1, 4, 4)), method="grabcut")
    with pytest.raises(ValueError, match=r"'method' parameter of segment must be one of"):
        segment(np.ones((1, 4, 4)), method="watershed")
