"""Layer features and nearest neighbours against brute-force distances."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytestmark = pytest.mark.backend("torch")

from convscope.backends.torch import TorchBackend  # noqa: E402
from convscope.data import demo_model, shapes  # noqa: E402
from convscope.features import layer_features, nearest_neighbors  # noqa: E402


@pytest.fixture(scope="module")
def demo():
    return TorchBackend(demo_model())


@pytest.fixture(scope="module")
def data():
    return shapes(60, seed=8)


def brute(base, queries, k, metric):
    base, queries = base.reshape(len(base), -1).astype(np.float64), queries.reshape(len(queries), -1).astype(np.float64)
    if metric == "l2":
        d = np.sqrt(((queries[:, None] - base[None]) ** 2).sum(-1))
    else:
        unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
        d = 1 - unit(queries) @ unit(base).T
    return np.argsort(d, axis=1, kind="stable")[:, :k], np.sort(d, axis=1)[:, :k]


def test_layer_features_pool_the_activations(demo, data):
    acts = demo.activations(data.images, ["relu3"])["relu3"]
    mean = layer_features(demo, data, "relu3", batch_size=16, progress=False)
    assert np.allclose(mean.features, acts.mean(axis=(2, 3)), atol=1e-5)
    assert np.array_equal(mean.labels, data.labels) and np.array_equal(mean.indices, np.arange(60))
    flat = layer_features(demo, data, "relu3", pool="none", progress=False)
    assert np.allclose(flat.features, acts.reshape(60, -1), atol=1e-5)
    top = layer_features(demo, data, "relu3", pool="max", progress=False)
    assert np.allclose(top.features, acts.max(axis=(2, 3)), atol=1e-5)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_neighbours_in_feature_and_pixel_space(demo, data, metric):
    queries = shapes(3, seed=99).images
    got = nearest_neighbors(demo, data, queries, "relu4", k=4, metric=metric, pixel_size=None, batch_size=16,
                            progress=False)
    base = demo.activations(data.images, ["relu4"])["relu4"].mean(axis=(2, 3))
    q = demo.activations(queries, ["relu4"])["relu4"].mean(axis=(2, 3))
    idx, dist = brute(base, q, 4, metric)
    assert np.array_equal(got.feature_indices, idx)
    assert np.allclose(got.feature_distances, dist, rtol=1e-4, atol=1e-5)
    pidx, pdist = brute(data.images, queries, 4, metric)
    assert np.array_equal(got.pixel_indices, pidx)
    assert np.allclose(got.pixel_distances, pdist, rtol=1e-4, atol=1e-5)
    assert np.array_equal(got.feature_images, data.images[idx])
    assert not np.array_equal(got.feature_indices, got.pixel_indices)  # the two spaces disagree


def test_pixel_space_on_thumbnails(demo, data):
    queries = shapes(2, seed=7).images
    got = nearest_neighbors(demo, data, queries, "relu4", k=3, pixel_size=16, progress=False)
    small = lambda a: torch.nn.functional.interpolate(torch.from_numpy(a), size=(16, 16), mode="bilinear",  # noqa: E731
                                                      align_corners=False).numpy()
    pidx, _ = brute(small(data.images), small(queries), 3, "l2")
    assert np.array_equal(got.pixel_indices, pidx)


def test_queries_by_index_exclude_themselves_and_streams_without_random_access(demo, data):
    got = nearest_neighbors(demo, data, [0, 17], "relu4", k=3, progress=False)
    base = demo.activations(data.images, ["relu4"])["relu4"].mean(axis=(2, 3))
    idx, _ = brute(base, base[[0, 17]], 4, "l2")
    assert np.array_equal(got.feature_indices, idx[:, 1:]) and (idx[:, 0] == [0, 17]).all()
    stream = (data.images[i:i + 16] for i in range(0, 60, 16))  # a generator: no random access
    again = nearest_neighbors(demo, stream, data.images[[0, 17]], "relu4", k=3, pixel_size=32, progress=False)
    assert np.array_equal(again.feature_indices[:, 1:], got.feature_indices[:, :2])
    assert again.feature_images.shape == (2, 3, 3, 32, 32)  # drawn from the thumbnails


def test_rendering_and_bad_input(demo, data, tmp_path):
    got = nearest_neighbors(demo, data, data.images[:2], "relu4", k=5, progress=False)
    rgb = got.to_rgb()
    assert rgb.shape[2] == 3 and rgb.shape[1] > 2 * 6 * 48
    assert got.save(tmp_path / "nn.png").stat().st_size > 0
    with pytest.raises(ValueError, match=r"The 'k' parameter of nearest_neighbors must be <= the number of images in "
                                         r"the dataset \(60\). Got 61 instead."):
        nearest_neighbors(demo, data, data.images[:1], "relu4", k=61, progress=False)
    with pytest.raises(ValueError, match="The 'metric' parameter of nearest_neighbors must be one of 'l2', 'cosine'"):
        nearest_neighbors(demo, data, data.images[:1], "relu4", metric="manhattan", progress=False)
    with pytest.raises(ValueError, match=r"The 'queries' parameter of nearest_neighbors must be indices of images in "
                                         r"the dataset \(0 to 59\). Got 60 instead."):
        nearest_neighbors(demo, data, [60], "relu4", progress=False)
    with pytest.raises(ValueError, match="The 'data' parameter of nearest_neighbors must be a dataset holding"):
        nearest_neighbors(demo, [], data.images[:1], "relu4", k=1, progress=False)
