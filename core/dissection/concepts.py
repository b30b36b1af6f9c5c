"""Concept datasets for dissection: images with a per-pixel mask for each concept.

A concept source is anything with

- ``concepts``: list of concept names, ``categories``: ``{category: [concept, ...]}``;
- ``n``: number of images;
- ``batches(batch_size, start=0, stop=None)``: yields ``(images, masks)`` with images
  (B, 3, H, W) float32 in [0, 1] and masks (B, len(concepts), Hm, Wm) bool.

:func:`concept_source` adapts the generated :func:`convscope.data.shapes` dataset, a Broden
folder (:class:`Broden`), or arrays (:class:`ConceptArrays`). A user's own data needs only
those three attributes and one method: that is the whole adapter.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .._validate import check_int, param_error

__all__ = ["ConceptArrays", "Broden", "concept_source"]


class ConceptArrays:
    """Concept data held in arrays: images (N, 3, H, W), masks (N, C, Hm, Wm) bool."""

    def __init__(self, images, masks, concepts, categories=None):
        self.images = np.asarray(images, np.float32)
        self.masks = np.asarray(masks, bool)
        self.concepts = list(concepts)
        self.categories = dict(categories or {"concept": list(self.concepts)})
        if self.images.ndim != 4 or self.masks.ndim != 4 or len(self.images) != len(self.masks):
            raise param_error("masks", "ConceptArrays", "(N, C, H, W) masks for (N, 3, H, W) images",
                              f"images {self.images.shape} and masks {self.masks.shape}")
        if self.masks.shape[1] != len(self.concepts):
            raise param_error("concepts", "ConceptArrays", f"{self.masks.shape[1]} names (one per mask plane)",
                              f"{len(self.concepts)} names")
        self.n = len(self.images)

    def batches(self, batch_size=64, start=0, stop=None):
        stop = self.n if stop is None else min(stop, self.n)
        for i in range(start, stop, batch_size):
            j = min(i + batch_size, stop)
            yield self.images[i:j], self.masks[i:j]


class _Shapes:
    """The generated concept dataset as a concept source."""

    def __init__(self, data):
        self.data, self.n = data, len(data)
        self.concepts, self.categories = list(data.concepts), dict(data.categories)

    def batches(self, batch_size=64, start=0, stop=None):
        for b in self.data.batches(batch_size, start, stop):
            yield b.images, b.masks


class Broden:
    """Reader for a local copy of the Broden layout (Bau et al., Network Dissection).

    ``root/index.csv`` has a row per image: ``image`` (path below ``root/images``), ``ih``,
    ``iw`` and one column per category. A pixel-level category (color, object, part,
    material) lists mask PNG files separated by ``;``, each encoding the label number of
    a pixel as ``R + 256 * G``; an image-level category (scene, texture) lists label
    numbers, and the concept then covers the whole image. ``root/label.csv`` maps
    ``number`` to ``name`` and ``category`` (``"color(12);object(3)"``). Images are resized
    to ``size`` (square) and masks by nearest neighbour to ``mask_size``.
    """

    def __init__(self, root, *, size: int = 224, mask_size: int = 112, categories=None, limit=None):
        self.root = Path(root)
        size, mask_size = check_int(size, "size", "Broden", low=8), check_int(mask_size, "mask_size", "Broden", low=1)
        for name in ("index.csv", "label.csv"):
            if not (self.root / name).is_file():
                raise FileNotFoundError(f"The Broden folder {self.root} has no {name}; expected index.csv, "
                                        "label.csv and images/.")
        self.size, self.mask_size = size, mask_size
        with open(self.root / "index.csv", newline="") as f:
            self.rows = list(csv.DictReader(f))[:limit]
        labels = {}
        with open(self.root / "label.csv", newline="") as f:
            for row in csv.DictReader(f):
                cats = [c.split("(")[0] for c in row.get("category", "").split(";") if c]
                labels[int(row["number"])] = (row["name"], cats)
        present = [c for c in ("color", "object", "part", "material", "scene", "texture") if self.rows and c in self.rows[0]]
        wanted = present if categories is None else [c for c in categories if c in present]
        self.categories = {c: [] for c in wanted}
        self._index = {}  # label number -> concept row
        for number, (name, cats) in sorted(labels.items()):
            for c in cats:
                if c in self.categories and number not in self._index:
                    self._index[number] = len(self._index)
                    self.categories[c].append(name)
        self.concepts = [labels[n][0] for n in sorted(self._index, key=self._index.get)]
        self.n = len(self.rows)
        if self.n == 0:
            raise ValueError(f"The Broden folder {self.root} lists no image in index.csv.")

    def _file(self, *parts) -> Path:
        path = self.root.joinpath("images", *parts)
        if not path.is_file():
            raise FileNotFoundError(f"The Broden folder is missing {path} (listed in index.csv).")
        return path

    def _load(self, row):
        from PIL import Image

        with Image.open(self._file(row["image"])) as im:
            image = np.asarray(im.convert("RGB").resize((self.size, self.size), Image.BILINEAR), np.float32) / 255
        masks = np.zeros((len(self.concepts), self.mask_size, self.mask_size), bool)
        for cat in self.categories:
            field = (row.get(cat) or "").strip()
            for item in filter(None, field.split(";")):
                if item.replace(".", "").isdigit():  # image-level label
                    if int(item) in self._index:
                        masks[self._index[int(item)]] = True
                    continue
                with Image.open(self._file(item)) as im:
                    rgb = np.asarray(im.convert("RGB").resize((self.mask_size, self.mask_size), Image.NEAREST), np.int64)
                numbers = rgb[..., 0] + 256 * rgb[..., 1]
                for number in np.unique(numbers):
                    if int(number) in self._index:
                        masks[self._index[int(number)]] |= numbers == number
        return image.transpose(2, 0, 1), masks

    def batches(self, batch_size=64, start=0, stop=None):
        stop = self.n if stop is None else min(stop, self.n)
        for i in range(start, stop, batch_size):
            loaded = [self._load(r) for r in self.rows[i:min(i + batch_size, stop)]]
            yield np.stack([a for a, _ in loaded]), np.stack([m for _, m in loaded])


def concept_source(data):
    """Adapt ``data`` (``shapes(n)``, a Broden folder path, a :class:`ConceptArrays`, or any
    object with ``concepts``, ``categories``, ``n`` and ``batches``) to a concept source."""
    from ..data.shapes import ConceptDataset

    if isinstance(data, ConceptDataset):
        return _Shapes(data)
    if isinstance(data, (str, Path)):
        return Broden(data)
    if all(hasattr(data, a) for a in ("concepts", "categories", "n", "batches")):
        return data
    raise param_error("concepts", "dissect", "a concept dataset (convscope.data.shapes(n), a Broden folder, "
                      "ConceptArrays, or an object with concepts, categories, n and batches())",
                      type(data).__name__, TypeError)
