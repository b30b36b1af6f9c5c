"""Embeddings of features in two dimensions: PCA, t-SNE (openTSNE), UMAP; scatter plots and
image grids.

- PCA: centre ``X`` and project on the top right-singular vectors of ``X - mean``, signs
  fixed so that each component's largest-magnitude loading is positive.
- t-SNE (van der Maaten and Hinton 2008) through openTSNE (Policar et al.), behind
  :class:`TSNE`, a thin adapter with scikit-learn's parameters that returns a plain array.
- UMAP through ``umap-learn`` when it is installed.

The image grid places images on a ``rows x cols`` grid so that grid order follows the
embedding: with points scaled to the unit square and cell centres ``c_j``, it picks the
assignment ``pi`` minimising ``sum_i ||p_i - c_pi(i)||^2`` (Hungarian method,
``scipy.optimize.linear_sum_assignment``), as in Karpathy's t-SNE grids.
"""
from __future__ import annotations

import numpy as np

from .._renamed import renamed
from .._validate import check_choice, check_int, check_number, param_error
from ..render import Picture, Renderable, resize, to_rgb

__all__ = ["embed", "Embedding", "TSNE", "pca", "grid_assignment", "METHODS"]

METHODS = ("tsne", "pca", "umap")


def _features_2d(features, owner):
    labels = None
    if hasattr(features, "features"):  # a Features result
        features, labels = features.features, getattr(features, "labels", None)
    x = np.asarray(features, dtype=np.float32)
    if x.ndim < 2 or len(x) < 2:
        raise param_error("features", owner, "an array (N, D) with N >= 2", f"shape {x.shape}")
    x = x.reshape(len(x), -1)
    if not np.isfinite(x).all():
        raise param_error("features", owner, "finite (no NaN or Inf)", f"{int((~np.isfinite(x)).sum())} non-finite values")
    return x, labels


def pca(features, n_components: int = 2) -> np.ndarray:
    """Project (N, D) features on their first ``n_components`` principal axes (see the
    module docstring); returns (N, n_components) float32."""
    x, _ = _features_2d(features, "pca")
    n_components = check_int(n_components, "n_components", "pca", low=1, high=min(x.shape))
    centred = x.astype(np.float64) - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:n_components]
    signs = np.sign(axes[np.arange(n_components), np.abs(axes).argmax(axis=1)])
    return (centred @ (axes * signs[:, None]).T).astype(np.float32)


class TSNE:
    """t-SNE with scikit-learn's parameters, computed by openTSNE.

    ``max_iter`` counts all iterations, the first ``early_exaggeration_iter`` (250) with
    exaggeration ``early_exaggeration``, as in scikit-learn. Other keyword arguments go to
    ``openTSNE.TSNE`` unchanged. After :meth:`fit`, ``embedding_`` is a plain (N,
    n_components) float32 array.
    """

    def __init__(self, n_components: int = 2, *, perplexity: float = 30.0, early_exaggeration: float = 12.0,
                 learning_rate="auto", max_iter: int = 750, early_exaggeration_iter: int = 250,
                 metric: str = "euclidean", init: str = "pca", random_state=None, n_jobs: int = 1,
                 verbose: bool = False, **options):
        self.n_components, self.perplexity, self.early_exaggeration = n_components, perplexity, early_exaggeration
        self.learning_rate, self.max_iter, self.early_exaggeration_iter = learning_rate, max_iter, early_exaggeration_iter
        self.metric, self.init, self.random_state = metric, init, random_state
        self.n_jobs, self.verbose, self.options = n_jobs, verbose, options

    def _open_tsne(self, n):
        try:
            import openTSNE
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("t-SNE needs openTSNE: pip install 'convscope[features]'") from err
        check_number(self.perplexity, "perplexity", "TSNE", low=0, strict=True)
        if self.perplexity >= n:
            raise param_error("perplexity", "TSNE", f"< the number of samples ({n})", str(self.perplexity))
        check_int(self.max_iter, "max_iter", "TSNE", low=self.early_exaggeration_iter)
        return openTSNE.TSNE(n_components=self.n_components, perplexity=self.perplexity,
                             learning_rate=self.learning_rate, early_exaggeration=self.early_exaggeration,
                             early_exaggeration_iter=self.early_exaggeration_iter,
                             n_iter=self.max_iter - self.early_exaggeration_iter, metric=self.metric,
                             initialization=self.init, random_state=self.random_state, n_jobs=self.n_jobs,
                             verbose=self.verbose, **self.options)

    def fit(self, X, y=None) -> "TSNE":
        x, _ = _features_2d(X, "TSNE.fit")
        embedding = self._open_tsne(len(x)).fit(x)
        self.embedding_ = np.array(embedding, dtype=np.float32)  # a plain copy, without openTSNE's affinities
        self.kl_divergence_ = float(getattr(embedding, "kl_divergence", np.nan))
        return self

    def fit_transform(self, X, y=None) -> np.ndarray:
        return self.fit(X).embedding_


def _umap(x, n_components, random_state, options):
    try:
        import umap
    except ImportError as err:
        raise ImportError("method='umap' needs umap-learn: pip install umap-learn") from err
    return np.asarray(umap.UMAP(n_components=n_components, random_state=random_state, **options).fit_transform(x),
                      dtype=np.float32)


def grid_assignment(points: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The grid cell (index ``r * cols + c``, row 0 at the top) of each 2-D point, by the
    optimal assignment of the module docstring. Needs ``len(points) <= rows * cols``."""
    rows = check_int(rows, "rows", "grid_assignment", low=1)
    cols = check_int(cols, "cols", "grid_assignment", low=1)
    p = np.asarray(points, np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise param_error("points", "grid_assignment", "an array (N, d) of points", f"shape {p.shape}")
    p = p[:, :2] if p.shape[1] > 1 else np.hstack([p, np.zeros_like(p)])  # 1-d: on a line, as the scatter plot
    if len(p) > rows * cols:
        raise param_error("points", "grid_assignment", f"at most rows * cols = {rows * cols} points", str(len(p)))
    lo, hi = p.min(axis=0), p.max(axis=0)
    p = (p - lo) / np.where(hi > lo, hi - lo, 1.0)
    r, c = np.divmod(np.arange(rows * cols), cols)
    centres = np.stack([(c + 0.5) / cols, 1 - (r + 0.5) / rows], axis=1)  # y up, as in the scatter plot
    cost = ((p[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("the image grid needs SciPy: pip install 'convscope[features]'") from err
    point, cell = linear_sum_assignment(cost)
    out = np.empty(len(p), np.int64)
    out[point] = cell
    return out


class Embedding(Renderable):
    """2-D (or more) ``points`` (N, n_components) of features, with ``labels`` (N,) or None
    and ``images`` (N, C, H, W) or None. :meth:`to_rgb` is the scatter plot coloured by
    label; :meth:`image_grid` the images laid out on a grid by the embedding."""

    def __init__(self, points, method, labels=None, images=None, classes=None):
        self.points, self.method, self.labels, self.images, self.classes = points, method, labels, images, classes

    def __repr__(self):
        return f"Embedding(method={self.method!r}, points={self.points.shape})"

    def scatter(self, *, classes=None, size: float = 8, figsize=(6, 6), dpi: int = 100):
        """A matplotlib Figure (Agg, no pyplot state) of the first two coordinates, one
        colour per label, with a legend naming ``classes`` (a list indexed by label)."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("the scatter plot needs matplotlib: pip install 'convscope[features]'") from err
        classes = classes if classes is not None else self.classes
        fig = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        x, y = self.points[:, 0], self.points[:, 1] if self.points.shape[1] > 1 else np.zeros(len(self.points))
        if self.labels is None:
            ax.scatter(x, y, s=size, c="tab:blue", linewidths=0)
        else:
            cmap = fig.colormaps["tab10"] if hasattr(fig, "colormaps") else None
            for n, label in enumerate(np.unique(self.labels)):
                sel = self.labels == label
                name = classes[int(label)] if classes is not None and 0 <= int(label) < len(classes) else str(label)
                colour = cmap(n % 10) if cmap is not None else f"C{n % 10}"
                ax.scatter(x[sel], y[sel], s=size, color=colour, label=name, linewidths=0)
            ax.legend(loc="best", fontsize=8, markerscale=2, frameon=False)
        ax.set_title(f"{self.method} of {len(self.points)} points", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.tight_layout()
        return fig

    def to_rgb(self) -> np.ndarray:
        fig = self.scatter()
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0

    def image_grid(self, images=None, *, cols: int | None = None, tile: int = 32, max_images: int = 1024) -> Picture:
        """The images on a grid ordered by the embedding (one large picture).

        ``images`` (N, C, H, W) default to the ones given to :func:`embed`. Beyond
        ``max_images``, an evenly spaced subset is drawn (the assignment costs O(n^3)).
        """
        images = self.images if images is None else np.asarray(images)
        if images is None or len(images) != len(self.points):
            raise param_error("images", "Embedding.image_grid", f"{len(self.points)} images, one per point",
                              "none" if images is None else f"{len(images)}")
        tile = check_int(tile, "tile", "Embedding.image_grid", low=1)
        keep = np.arange(len(images))
        if len(keep) > max_images:
            keep = np.linspace(0, len(images) - 1, max_images).round().astype(int)
        cols = cols or int(np.ceil(np.sqrt(len(keep))))
        rows = int(np.ceil(len(keep) / cols))
        cells = grid_assignment(self.points[keep], rows, cols)
        canvas = np.ones((rows * tile, cols * tile, 3), np.float32)
        for i, cell in zip(keep, cells):
            r, c = divmod(int(cell), cols)
            small = resize(np.asarray(images[i], np.float32), (tile, tile))
            canvas[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = to_rgb(small, channels_first=True, vmin=0, vmax=1)
        return Picture(canvas, f"{self.method} grid of {len(keep)} images")


@renamed(random_state="seed")
def embed(features, method: str = "tsne", *, n_components: int = 2, labels=None, images=None, classes=None,
          seed=0, **options) -> Embedding:
    """Embed (N, D) features (an array or a :class:`~convscope.features.Features`) with
    ``method`` ``"tsne"`` (openTSNE, options as :class:`TSNE`), ``"pca"`` or ``"umap"``.

    ``labels`` colour the scatter plot (default: the Features' labels); ``images`` (N, C,
    H, W) enable :meth:`Embedding.image_grid`; ``classes`` name the labels in the legend.
    ``seed`` seeds t-SNE and UMAP (the former ``random_state`` still works; the
    scikit-learn-style :class:`TSNE` keeps ``random_state``, its peers' name).
    """
    owner = "embed"
    check_choice(method, METHODS, "method", owner)
    x, own_labels = _features_2d(features, owner)
    labels = own_labels if labels is None else np.asarray(labels)
    if labels is not None and len(labels) != len(x):
        raise param_error("labels", owner, f"one label per row of features ({len(x)})", f"{len(labels)} labels")
    if images is not None and len(images) != len(x):
        raise param_error("images", owner, f"one image per row of features ({len(x)})", f"{len(images)} images")
    n_components = check_int(n_components, "n_components", owner, low=1)
    if method == "pca":
        points = pca(x, n_components)
    elif method == "tsne":
        points = TSNE(n_components, random_state=seed, **options).fit_transform(x)
    else:
        points = _umap(x, n_components, seed, options)
    return Embedding(points, method, labels, images, classes)
