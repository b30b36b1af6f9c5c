"""Embeddings: PCA against scikit-learn, the t-SNE adapter against openTSNE, the grid
assignment against brute force, the scatter plot."""
import itertools
import sys

import numpy as np
import pytest

from convscope.features import TSNE, embed, grid_assignment, pca
from convscope.features.neighbors import Features


@pytest.fixture
def blobs(rng):
    centres = rng.normal(0, 6, (3, 10))
    labels = np.repeat(np.arange(3), 40)
    return (centres[labels] + rng.normal(0, 1, (120, 10))).astype(np.float32), labels


def test_pca_matches_scikit_learn_up_to_sign(blobs):
    sklearn = pytest.importorskip("sklearn.decomposition")
    x, _ = blobs
    got = pca(x, 3)
    want = sklearn.PCA(3).fit_transform(x.astype(np.float64))
    signs = np.sign((got * want).sum(axis=0))
    assert np.allclose(got, want * signs, atol=1e-4)
    assert np.all(np.diff(got.var(axis=0)) < 0)  # components by decreasing variance
    assert np.allclose(got.mean(axis=0), 0, atol=1e-4)


def test_tsne_adapter_equals_open_tsne_and_returns_a_plain_array(blobs):
    openTSNE = pytest.importorskip("openTSNE")
    x, _ = blobs
    ours = TSNE(perplexity=10, max_iter=300, random_state=3).fit_transform(x)
    direct = openTSNE.TSNE(perplexity=10, n_iter=50, early_exaggeration_iter=250, early_exaggeration=12,
                           random_state=3).fit(x)
    assert type(ours) is np.ndarray and ours.dtype == np.float32 and ours.shape == (120, 2)
    assert np.allclose(ours, np.asarray(direct), atol=1e-5)


def test_embed_methods_and_labels(blobs):
    pytest.importorskip("openTSNE")
    x, labels = blobs
    e = embed(Features("fc", x, labels, np.arange(120)), "tsne", perplexity=15, max_iter=300)
    assert e.points.shape == (120, 2) and np.array_equal(e.labels, labels)
    # t-SNE keeps the blobs apart: every point's nearest neighbour in the embedding shares its label
    d = ((e.points[:, None] - e.points[None]) ** 2).sum(-1) + np.eye(120) * 1e9
    assert (labels[d.argmin(axis=1)] == labels).mean() > 0.95
    assert np.allclose(embed(x, "pca").points, pca(x))


def test_umap_is_optional(blobs, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)
    with pytest.raises(ImportError, match="pip install umap-learn"):
        embed(blobs[0], "umap")


def test_grid_assignment_is_optimal():
    rng = np.random.default_rng(4)
    points = rng.random((6, 2))
    cells = grid_assignment(points, 2, 3)
    r, c = np.divmod(np.arange(6), 3)
    centres = np.stack([(c + 0.5) / 3, 1 - (r + 0.5) / 2], axis=1)
    p = (points - points.min(0)) / (points.max(0) - points.min(0))
    cost = lambda assign: sum(((p[i] - centres[a]) ** 2).sum() for i, a in enumerate(assign))  # noqa: E731
    best = min(cost(perm) for perm in itertools.permutations(range(6)))
    assert sorted(cells.tolist()) == list(range(6))
    assert np.isclose(cost(cells), best)


def test_points_on_a_grid_land_in_their_cells():
    ys, xs = np.mgrid[0:3, 0:4]
    points = np.stack([xs.ravel(), -ys.ravel()], axis=1).astype(float)  # row 0 at the top
    assert grid_assignment(points, 3, 4).tolist() == list(range(12))


def test_scatter_and_image_grid(blobs, rng, tmp_path):
    pytest.importorskip("matplotlib")
    x, labels = blobs
    images = rng.random((120, 3, 8, 8), dtype=np.float32)
    e = embed(x, "pca", labels=labels, images=images, classes=["a", "b", "c"])
    fig = e.scatter()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b", "c"]
    assert e.to_rgb().shape == (600, 600, 3)
    picture = e.image_grid(tile=8)
    assert picture.rgb.shape == (11 * 8, 11 * 8, 3)
    assert e.save(tmp_path / "scatter.png").stat().st_size > 0


def test_bad_input(blobs):
    x, labels = blobs
    with pytest.raises(ValueError, match="The 'method' parameter of embed must be one of 'tsne', 'pca', 'umap'"):
        embed(x, "mds")
    with pytest.raises(ValueError, match=r"The 'features' parameter of embed must be an array \(N, D\) with N >= 2"):
        embed(x[:1], "pca")
    with pytest.raises(ValueError, match=r"The 'labels' parameter of embed must be one label per row of features \(120\)"):
        embed(x, "pca", labels=labels[:5])
    with pytest.raises(ValueError, match=r"The 'perplexity' parameter of TSNE must be < the number of samples \(120\)"):
        TSNE(perplexity=500).fit(x)
    with pytest.raises(ValueError, match=r"The 'images' parameter of Embedding.image_grid must be 120 images"):
        embed(x, "pca").image_grid()
