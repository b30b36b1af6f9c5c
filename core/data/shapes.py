"""The generated concept dataset: shapes with colours and textures, and their masks.

Every image is drawn from its own seed, ``(seed, index)``, so a dataset is a pure function
of its arguments, any index range can be rendered on its own (streaming, sharding across
workers), and ``shapes(100)`` is a prefix of ``shapes(1000)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import check_int

__all__ = ["shapes", "ConceptDataset", "ConceptBatch", "SHAPES", "COLORS", "TEXTURES", "CATEGORIES", "CONCEPTS"]

SHAPES = ("circle", "square", "triangle", "star")
COLORS = {
    "red": (0.90, 0.12, 0.12),
    "green": (0.12, 0.72, 0.20),
    "blue": (0.15, 0.30, 0.92),
    "yellow": (0.95, 0.85, 0.10),
    "magenta": (0.85, 0.15, 0.80),
    "cyan": (0.10, 0.80, 0.85),
}
TEXTURES = ("plain", "stripes", "dots", "checker")
CATEGORIES = {"shape": list(SHAPES), "color": list(COLORS), "texture": list(TEXTURES)}
CONCEPTS = [c for names in CATEGORIES.values() for c in names]


@dataclass
class ConceptBatch:
    """Images (N, 3, H, W) float32 in [0, 1], labels (N,) = shape index, and masks
    (N, n_concepts, H, W) bool, one plane per name in :data:`CONCEPTS`."""

    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    attributes: np.ndarray  # (N, 3): shape, colour and texture index of each object

    concepts = CONCEPTS
    categories = CATEGORIES

    def __len__(self):
        return len(self.images)

    def mask(self, concept: str) -> np.ndarray:
        """(N, H, W) bool mask of one concept."""
        return self.masks[:, CONCEPTS.index(concept)]

    @property
    def object_masks(self) -> np.ndarray:
        """(N, H, W) bool: the object's pixels, the ground truth for localisation."""
        return self.masks[:, : len(SHAPES)].any(axis=1)


class ConceptDataset:
    """A lazily rendered concept dataset; see :func:`shapes`."""

    def __init__(self, n: int, size: int = 64, seed: int = 0):
        self.n = check_int(n, "n", "shapes", low=1)
        self.size = check_int(size, "size", "shapes", low=16)
        self.seed = check_int(seed, "seed", "shapes", low=0)
        self._all = None

    concepts = CONCEPTS
    categories = CATEGORIES
    classes = SHAPES

    def __len__(self):
        return self.n

    def __repr__(self):
        return f"shapes(n={self.n}, size={self.size}, seed={self.seed})"

    def batch(self, start: int, stop: int) -> ConceptBatch:
        """Render images ``start`` to ``stop - 1``."""
        start, stop = max(0, start), min(self.n, stop)
        if stop <= start:
            raise ValueError(f"The range [{start}, {stop}) of {self!r} is empty.")
        drawn = [_draw(self.size, np.random.default_rng([self.seed, i])) for i in range(start, stop)]
        return ConceptBatch(
            images=np.stack([d[0] for d in drawn]),
            labels=np.array([d[2][0] for d in drawn], dtype=np.int64),
            masks=np.stack([d[1] for d in drawn]),
            attributes=np.array([d[2] for d in drawn], dtype=np.int64),
        )

    def batches(self, batch_size: int = 64, start: int = 0, stop: int | None = None):
        """Yield :class:`ConceptBatch` objects covering ``[start, stop)``."""
        check_int(batch_size, "batch_size", "ConceptDataset.batches", low=1)
        stop = self.n if stop is None else min(stop, self.n)
        for i in range(start, stop, batch_size):
            yield self.batch(i, min(i + batch_size, stop))

    def __iter__(self):
        """Iterate over (images, labels) batches of 64, as a data loader would."""
        for b in self.batches():
            yield b.images, b.labels

    def _materialise(self) -> ConceptBatch:
        if self._all is None:
            self._all = self.batch(0, self.n)
        return self._all

    images = property(lambda self: self._materialise().images)
    labels = property(lambda self: self._materialise().labels)
    masks = property(lambda self: self._materialise().masks)
    attributes = property(lambda self: self._materialise().attributes)
    object_masks = property(lambda self: self._materialise().object_masks)

    def mask(self, concept: str) -> np.ndarray:
        return self._materialise().mask(concept)


def shapes(n: int, size: int = 64, seed: int = 0) -> ConceptDataset:
    """Generate ``n`` deterministic RGB images of one object each on a varied background.

    Each object has a shape (circle, square, triangle, star: the class label), a colour
    (six hues) and a texture (plain, stripes, dots, checker). Per-pixel masks mark every
    concept present. Nothing is downloaded; images are drawn on first use.

    >>> data = shapes(8)
    >>> data.images.shape, data.masks.shape
    ((8, 3, 64, 64), (8, 14, 64, 64))
    """
    return ConceptDataset(n, size=size, seed=seed)


# --------------------------------------------------------------------------- drawing
def _shape_mask(kind: int, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Mask of a shape of radius ``r`` in rotated coordinates (u, v) centred on it."""
    if kind == 0:
        return u * u + v * v <= r * r
    if kind == 1:
        s = r * 0.82
        return (np.abs(u) <= s) & (np.abs(v) <= s)
    angle = np.arctan2(v, u)
    rho = np.hypot(u, v)
    if kind == 2:  # equilateral triangle: distance to the centre along the nearest edge normal
        sector = np.mod(angle + np.pi / 2, 2 * np.pi / 3) - np.pi / 3
        return rho * np.cos(sector) <= r * 0.55
    # five-pointed star: the boundary radius goes linearly between tips and notches
    phase = np.mod(angle, 2 * np.pi / 5) / (2 * np.pi / 5)
    frac = np.abs(phase - 0.5) * 2  # 1 at a tip, 0 in the notch
    return rho <= r * (0.45 + 0.65 * frac)


def _texture(kind: int, yy, xx, rng) -> np.ndarray:
    """Where the texture's second tone falls (bool), for a plain object nowhere."""
    if kind == 0:
        return np.zeros_like(yy, dtype=bool)
    period = rng.uniform(5.0, 8.0)
    theta = rng.uniform(0, np.pi)
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    if kind == 1:
        return np.mod(u, period) < period / 2
    if kind == 2:
        du = np.mod(u, period) - period / 2
        dv = np.mod(v, period) - period / 2
        return du * du + dv * dv <= (period * 0.28) ** 2
    cell = period * 0.8
    return (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0


def _draw(size: int, rng: np.random.Generator):
    shape, color, texture = rng.integers(len(SHAPES)), rng.integers(len(COLORS)), rng.integers(len(TEXTURES))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

    # background: a smooth two-tone gradient in muted colours plus mild noise
    a, b = rng.uniform(0.25, 0.65, 3), rng.uniform(0.25, 0.65, 3)
    direction = rng.uniform(0, 2 * np.pi)
    t = ((xx * np.cos(direction) + yy * np.sin(direction)) / size + 1) / 2
    image = (a[:, None, None] * (1 - t) + b[:, None, None] * t).astype(np.float32)
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)

    r = rng.uniform(0.17, 0.3) * size
    cy, cx = rng.uniform(r, size - r, 2)
    rot = rng.uniform(0, 2 * np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(rot) + dy * np.sin(rot)
    v = -dx * np.sin(rot) + dy * np.cos(rot)
    obj = _shape_mask(shape, u, v, r)

    rgb = np.array(list(COLORS.values())[color], dtype=np.float32) * rng.uniform(0.85, 1.0)
    second = _texture(texture, yy, xx, rng)
    fill = np.where(second[None], rgb[:, None, None] * 0.35, rgb[:, None, None])
    image = np.where(obj[None], fill, image)
    image = np.clip(image, 0, 1).astype(np.float32)

    masks = np.zeros((len(CONCEPTS), size, size), dtype=bool)
    for index in (shape, len(SHAPES) + color, len(SHAPES) + len(COLORS) + texture):
        masks[index] = obj
    return image, masks, (int(shape), int(color), int(texture))
