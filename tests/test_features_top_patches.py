"""Top activating patches: against a brute-force reference, batching/sharding invariance,
guided pictures, memory on 20,000 images, Dask, bad input."""
import threading
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.backend("torch")

from convscope.backends.torch import TorchBackend  # noqa: E402
from convscope.data import demo_model, shapes  # noqa: E402
from convscope.features import top_patches  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    return TorchBackend(demo_model())


@pytest.fixture(scope="module")
def data():
    return shapes(40, seed=11)


def crop(image, top, left, size):
    """Hand-written crop with zero padding: the reference for patches."""
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * size, w + 2 * size), image.dtype)
    padded[:, size:size + h, size:size + w] = image
    return padded[:, top + size:top + 2 * size, left + size:left + 2 * size]


@pytest.mark.parametrize("batch_size", [7, 40])
def test_top_patches_match_a_brute_force_scan(demo, data, batch_size):
    channels, k = [0, 3, 5, 31], 4
    got = top_patches(demo, data, "relu2", channels, k, batch_size=batch_size, progress=False)
    acts = demo.activations(data.images, ["relu2"])["relu2"]  # (40, 32, 32, 32), one call
    for i, c in enumerate(channels):
        flat = acts[:, c].reshape(40, -1)
        best = flat.max(axis=1)
        order = sorted(range(40), key=lambda n: (-best[n], n))[:k]
        assert got.indices[i].tolist() == order
        assert np.allclose(got.values[i], best[order], rtol=1e-5, atol=1e-6)
        for j, n in enumerate(order):
            y, x = divmod(int(flat[n].argmax()), 32)
            assert tuple(got.locations[i, j]) == (y, x)
            # relu2: jump 2, field 8, first unit at -3 (conv 3x3 p1, pool 2, conv 3x3 p1)
            assert np.array_equal(got.patches[i, j], crop(data.images[n], 2 * y - 3, 2 * x - 3, 8))
            assert tuple(got.boxes[i, j]) == (2 * y - 3, 2 * x - 3, 2 * y + 5, 2 * x + 5)


def test_results_do_not_depend_on_batching_or_the_source(demo, data):
    a = top_patches(demo, data, "conv3", k=3, batch_size=5, progress=False)
    b = top_patches(demo, data.images, "conv3", k=3, batch_size=16, progress=False)
    c = top_patches(demo, (data.images[i:i + 9] for i in range(0, 40, 9)), "conv3", k=3, progress=False)
    for other in (b, c):
        assert np.array_equal(a.indices, other.indices) and np.array_equal(a.locations, other.locations)
        assert np.allclose(a.values, other.values, rtol=1e-5) and np.array_equal(a.patches, other.patches)


def test_guided_patches_equal_guided_backprop_on_the_full_image(demo, data):
    got = top_patches(demo, data, "relu3", [2, 7], k=2, guided=True, progress=False)
    assert got.guided.shape == got.patches.shape
    for i, c in enumerate(got.channels):
        for j in range(2):
            n, (y, x) = got.indices[i, j], got.locations[i, j]
            image = data.images[n:n + 1]
            seed = np.zeros((1, 64, 16, 16), np.float32)
            seed[0, c, y, x] = 1
            full = demo.gradient(image, {"relu3": seed}, rule="guided")["input"][0]
            t, l, b, r = got.boxes[i, j]
            want = crop(full, t, l, b - t)
            assert np.abs(want).max() > 0
            assert np.allclose(got.guided[i, j], want, rtol=1e-4, atol=1e-6 * np.abs(want).max())


def test_rendering(demo, data, tmp_path):
    got = top_patches(demo, data, "conv1", [1, 2, 3], k=4, guided=True, progress=False)
    picture = got.to_rgb()
    assert picture.ndim == 3 and picture.shape[2] == 3 and 0 <= picture.min() and picture.max() <= 1
    assert got.channel(1).to_rgb().shape[0] < picture.shape[0]
    assert got.save(tmp_path / "top.png").stat().st_size > 0


def _peak_rss_growth(fn):
    """Run fn and return (result, the peak resident memory above the start, in bytes),
    sampling every 5 ms."""
    psutil = pytest.importorskip("psutil")
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        result = fn()
    finally:
        done.set()
        thread.join()
    return result, max(peak[0], process.memory_info().rss) - start


def test_memory_does_not_grow_with_the_dataset(demo):
    # 20,000 images of 3 x 32 x 32: 246 MB of float32 pixels (plus 287 MB of masks) if they were all held.
    # The scan holds one batch and k patches per channel: the peak stays under 100 MB.
    data = shapes(20000, size=32, seed=1)
    top_patches(demo, shapes(500, size=32), "conv1", k=5, batch_size=250, progress=False)  # warm up the allocators
    got, growth = _peak_rss_growth(lambda: top_patches(demo, data, "conv1", k=5, batch_size=250, progress=False))
    assert growth < 100e6, f"peak memory grew by {growth / 1e6:.0f} MB"
    assert got.indices.shape == (16, 5) and got.indices.max() < 20000 and got.indices.max() > 1000


def test_dask_local_cluster_gives_the_one_process_result(data):
    distributed = pytest.importorskip("distributed")
    model = demo_model()
    one = top_patches(model, data, "relu2", [0, 4, 9], k=5, batch_size=8, progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        many = top_patches(model, data, "relu2", [0, 4, 9], k=5, batch_size=8, client=client, progress=False)
        # a Backend object travels too (it pickles its model, not its lock)
        via_backend = top_patches(TorchBackend(model), data, "relu2", [0, 4, 9], k=5, batch_size=8, client=client,
                                  progress=False)
        np.testing.assert_array_equal(via_backend.indices, one.indices)
        with pytest.raises(TypeError, match="can be split into shards"):
            top_patches(model, iter([data.images]), "relu2", k=5, client=client, progress=False)
    for name in ("values", "indices", "locations", "boxes", "patches"):
        assert np.array_equal(getattr(one, name), getattr(many, name)), name


def test_bad_input(demo, data):
    with pytest.raises(ValueError, match="The 'data' parameter of top_patches must be a dataset holding at least one image"):
        top_patches(demo, [], "conv1", progress=False)
    with pytest.raises(ValueError, match=r"The 'k' parameter of top_patches must be <= the number of images in the "
                                         r"dataset \(40\). Got 41 instead."):
        top_patches(demo, data, "conv1", k=41, progress=False)
    with pytest.raises(ValueError, match=r"The 'k' parameter of top_patches must be <= the number of images in the "
                                         r"dataset \(6\). Got 9 instead."):
        top_patches(demo, iter([data.images[:6]]), "conv1", k=9, progress=False)
    with pytest.raises(ValueError, match="The 'channels' parameter of top_patches must be <= 15. Got 16 instead."):
        top_patches(demo, data, "conv1", channels=[0, 16], progress=False)
    with pytest.raises(ValueError, match=r"must be a layer with a spatial \(C, H, W\) output. Got 'fc'"):
        top_patches(demo, data, "fc", progress=False)
    mixed = [data.images[:4], shapes(4, size=48).images]
    with pytest.raises(ValueError, match="must hold images of one size"):
        top_patches(demo, mixed, "conv1", k=2, progress=False)
