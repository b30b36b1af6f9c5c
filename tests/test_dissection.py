"""Network Dissection: exact thresholds and counts against brute force, a planted unit,
the demo model, Dask, Broden, bad input; weakly supervised segmentation."""
import csv
import tracemalloc

import numpy as np
import pytest
from PIL import Image

import convscope
from convscope.data import CONCEPTS, demo_model, shapes
from convscope.dissection import (Broden, ConceptArrays, centre_box, compare, dissect, label_changes, segment,
                                  segmentation_iou)
from convscope.dissection.iou import count_iou
from convscope.render import resize

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


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
    distributed = pytest.importorskip("distributed")
    data = shapes(150, seed=9)
    local = dissect(demo_model(), "relu3", data, batch_size=32, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = dissect(demo_model(), "relu3", data, batch_size=32, progress=False, client=client)
    np.testing.assert_array_equal(remote.thresholds, local.thresholds)
    np.testing.assert_array_equal(remote.intersection, local.intersection)
    np.testing.assert_array_equal(remote.union, local.union)
    np.testing.assert_array_equal(remote.unit_maxima, local.unit_maxima)


def test_memory_does_not_grow_with_the_dataset():
    def peak(n):
        tracemalloc.start()
        dissect(demo_model(), "relu3", shapes(n, seed=1), batch_size=64, progress=False)
        top = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return top

    small, large = peak(256), peak(1024)
    assert large < 1.3 * small, (small, large)  # 4x the images, the same working memory


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
