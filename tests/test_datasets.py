"""Datasets as batch streams, and the scan machinery: mergeable summaries, sharding."""
import warnings

import numpy as np
import pytest

from convscope.data import shapes
from convscope.data.datasets import ArrayDataset, ConceptImages, ImageFolder, IterableDataset, as_dataset
from convscope._scan import Collect, Sum, TopK, scan, shard_ranges


def _png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ----------------------------------------------------------------------------- datasets
def test_array_dataset_batches_cover_every_index_once(rng):
    images = rng.random((23, 3, 5, 6), dtype=np.float32)
    labels = np.arange(23) % 4
    data = as_dataset((images, labels))
    got = list(data.batches(batch_size=5))
    assert [len(b) for b in got] == [5, 5, 5, 5, 3]
    assert np.array_equal(np.concatenate([b.indices for b in got]), np.arange(23))
    assert np.array_equal(np.concatenate([b.images for b in got]), images)
    assert np.array_equal(np.concatenate([b.labels for b in got]), labels)
    shard = data.subset(10, 17)
    assert [b.start for b in shard.batches(batch_size=3)] == [10, 13, 16]
    assert np.array_equal(shard.fetch([12]), images[12:13])


def test_concept_dataset_streams_the_same_images_and_shards_keep_global_indices():
    concepts = shapes(10, size=32, seed=4)
    data = as_dataset(concepts)
    assert isinstance(data, ConceptImages) and data.n == 10 and data.image_size == (32, 32)
    streamed = np.concatenate([b.images for b in data.batches(batch_size=4)])
    assert np.array_equal(streamed, concepts.images)
    shard = data.subset(6, 10)
    batches = list(shard.batches(batch_size=3))
    assert [b.start for b in batches] == [6, 9]
    assert np.array_equal(batches[0].images, concepts.images[6:9])
    assert np.array_equal(batches[1].labels, concepts.labels[9:10])
    assert np.array_equal(data.fetch([7, 2]), concepts.images[[7, 2]])


def test_image_folder_reads_pixels_skips_non_images_with_one_counting_warning(tmp_path, rng):
    pixels = rng.integers(0, 256, (3, 6, 7, 3), dtype=np.uint8)
    for i, p in enumerate(pixels):
        _png(tmp_path / f"img{i}.png", p)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    with pytest.warns(UserWarning, match=r"Skipped 2 files .* not images") as record:
        data = as_dataset(tmp_path)
    assert len([w for w in record if "Skipped" in str(w.message)]) == 1
    assert isinstance(data, ImageFolder) and data.n == 3 and data.labels is None
    images = np.concatenate([b.images for b in data.batches(batch_size=2)])
    assert images.dtype == np.float32 and images.shape == (3, 3, 6, 7)
    assert np.allclose(images, pixels.transpose(0, 3, 1, 2) / 255.0)
    shard = data.subset(1, 3)  # what a Dask worker reads
    assert [b.start for b in shard.batches(batch_size=1)] == [1, 2]
    assert np.array_equal(next(shard.batches(batch_size=2)).images, images[1:3])
    assert np.array_equal(shard.fetch([2]), images[2:3])


def test_image_folder_class_subfolders_give_labels(tmp_path, rng):
    for cls, n in (("cat", 2), ("dog", 3)):
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png", rng.integers(0, 256, (4, 4, 3), dtype=np.uint8))
    data = ImageFolder(tmp_path)
    assert data.classes == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 1, 1, 1]


def test_image_folder_mixed_sizes_are_refused_unless_resized(tmp_path, rng):
    _png(tmp_path / "a.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    _png(tmp_path / "b.png", rng.integers(0, 256, (6, 10, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"2 different sizes: a.png is 8x8 \(HxW\), b.png is 6x10. Pass size=\(H, W\)"):
        as_dataset(tmp_path)
    data = as_dataset(tmp_path, size=(5, 4))
    images = next(data.batches(batch_size=2)).images
    assert images.shape == (2, 3, 5, 4)


def test_image_folder_without_images_is_refused(tmp_path):
    with pytest.raises(ValueError, match="folder holding at least one image"):
        as_dataset(tmp_path)
    (tmp_path / "readme.md").write_text("hello")
    with pytest.warns(UserWarning, match="Skipped 1 file"), pytest.raises(ValueError, match="at least one image"):
        as_dataset(tmp_path)


def test_iterable_of_pairs_and_one_shot_generators(rng):
    chunks = [rng.random((n, 3, 4, 4), dtype=np.float32) for n in (3, 5, 2)]
    pairs = [(c, np.full(len(c), i)) for i, c in enumerate(chunks)]
    data = as_dataset(pairs)
    assert isinstance(data, IterableDataset) and data.n is None
    got = list(data.batches())
    assert [b.start for b in got] == [0, 3, 8]
    assert np.array_equal(got[1].labels, np.full(5, 1))
    generator = as_dataset(c for c in chunks)
    first = generator.peek()  # keeps the first batch for the scan that follows
    assert np.array_equal(first, chunks[0][:1])
    assert np.array_equal(np.concatenate([b.images for b in generator.batches()]), np.concatenate(chunks))


def test_iterable_with_images_of_mixed_sizes_is_refused(rng):
    data = as_dataset([rng.random((2, 3, 8, 8), dtype=np.float32), rng.random((2, 3, 6, 6), dtype=np.float32)])
    with pytest.raises(ValueError, match=r"images of one size. Got a batch of shape \(3, 6, 6\) at image 2"):
        list(data.batches(owner="top_patches"))


def test_bad_datasets_are_refused():
    with pytest.raises(ValueError, match="The 'data' parameter of scan must be a dataset holding at least one image"):
        scan([], lambda b: None, Sum)
    with pytest.raises(ValueError, match="must be a 4-d array"):
        as_dataset(np.zeros((3, 4, 4), np.float32))
    with pytest.raises(TypeError, match="must be an array"):
        as_dataset(12)
    with pytest.raises(TypeError, match="floating-point"):
        list(as_dataset(np.zeros((2, 3, 4, 4), np.uint8)).batches())


# ----------------------------------------------------------------------------- summaries
def _reference_top_k(values, k):
    """Per channel, indices sorted by (value descending, index ascending), first k."""
    order = [sorted(range(len(values)), key=lambda i: (-values[i, c], i))[:k] for c in range(values.shape[1])]
    return np.array(order)


@pytest.mark.parametrize("batch_size", [1, 7, 60])
def test_top_k_matches_a_full_sort_with_ties_broken_by_index(batch_size, rng):
    values = rng.integers(0, 6, (60, 4)).astype(np.float32)  # many ties
    payload = rng.random((60, 4, 2)).astype(np.float32)
    summary = TopK(5, 4)
    for s in range(0, 60, batch_size):
        rows = slice(s, s + batch_size)
        summary.update((values[rows], np.arange(60)[rows], {"p": payload[rows]}))
    want = _reference_top_k(values, 5)
    assert np.array_equal(summary.keys, want)
    assert np.array_equal(summary.values, np.take_along_axis(values.T, want, 1))
    assert np.array_equal(summary.payload["p"], payload[want, np.arange(4)[:, None]])
    assert summary.seen == 60


def test_top_k_merge_in_any_order_equals_one_pass(rng):
    values = rng.normal(size=(50, 3)).astype(np.float32)
    lazy_calls = []

    def part(lo, hi):
        def payload(rows, chans):
            lazy_calls.append(len(rows))
            return {"row": (rows + lo)[:, None] * 10 + chans[:, None]}
        return TopK(4, 3).update((values[lo:hi], np.arange(lo, hi), payload))

    whole = part(0, 50)
    for order in ([(0, 20), (20, 35), (35, 50)], [(35, 50), (0, 20), (20, 35)]):
        merged = TopK(4, 3)
        for lo, hi in order:
            merged.merge(part(lo, hi))
        assert np.array_equal(merged.keys, whole.keys) and np.array_equal(merged.values, whole.values)
        assert np.array_equal(merged.payload["row"], whole.payload["row"])
    assert np.array_equal(whole.payload["row"][..., 0], whole.keys * 10 + np.arange(3)[:, None])
    assert max(lazy_calls) <= 12  # payloads are built only for the entries kept (k x channels)


def test_collect_and_sum_merge():
    a, b = Collect(), Collect()
    a.update({"index": np.array([4, 5]), "f": np.array([[4.0], [5.0]])})
    b.update({"index": np.array([0, 1, 2, 3]), "f": np.arange(4.0)[:, None]})
    rows = a.merge(b).result()
    assert rows["index"].tolist() == [0, 1, 2, 3, 4, 5] and rows["f"][:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    s = Sum().update({"n": np.array([1, 2])}).merge(Sum().update({"n": np.array([10, 20])}))
    assert s.totals["n"].tolist() == [11, 22]


def test_shard_ranges_fall_on_batch_boundaries():
    ranges = shard_ranges(1000, 64, 3)
    assert ranges[0][0] == 0 and ranges[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(start % 64 == 0 for start, _ in ranges)
    assert shard_ranges(10, 64, 4) == [(0, 10)]


def test_scan_counts_every_image_once(rng):
    images = rng.random((37, 1, 2, 2), dtype=np.float32)
    got = scan(images, lambda b: {"n": len(b), "sum": b.images.sum(dtype=np.float64)}, Sum, batch_size=8,
               progress=False)
    assert got.totals["n"] == 37 and np.isclose(got.totals["sum"], images.sum(dtype=np.float64))


def test_scans_show_a_progress_bar(rng, capsys):
    pytest.importorskip("tqdm")
    images = rng.random((10, 1, 2, 2), dtype=np.float32)
    scan(images, lambda b: {"n": len(b)}, Sum, batch_size=4, progress=True, desc="counting shapes")
    err = capsys.readouterr().err
    assert "counting shapes" in err and "/10" in err  # tqdm, sized by the dataset
    scan(images, lambda b: {"n": len(b)}, Sum, batch_size=4, progress=False, desc="hidden bar")
    assert "hidden bar" not in capsys.readouterr().err
