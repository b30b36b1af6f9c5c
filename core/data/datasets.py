"""Datasets as streams of batches: the one abstraction every scan reads.

:func:`as_dataset` turns what a user has into a :class:`Dataset`:

- an array (N, C, H, W) in [0, 1], or a pair ``(images, labels)`` of arrays;
- a :class:`~convscope.data.ConceptDataset` (``convscope.data.shapes(n)``), rendered batch by batch;
- a folder of image files (a ``str`` or ``pathlib.Path``), read with Pillow: see :class:`ImageFolder`;
- any iterable of batches: arrays (N, C, H, W), ``(images, labels)`` pairs, or objects with
  ``.images`` (and ``.labels``), e.g. a PyTorch ``DataLoader`` of float tensors.

A dataset yields :class:`Batch` objects carrying the global index of their first image,
so summaries can break ties and name images by index whatever the batching. Sized datasets
with random access can be cut into contiguous shards (:meth:`Dataset.subset`) for Dask.
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._validate import as_images, check_int, describe, param_error

__all__ = ["Batch", "Dataset", "ArrayDataset", "ConceptImages", "ImageFolder", "IterableDataset", "as_dataset",
           "image_folder", "empty_error"]


_END = object()


def empty_error(owner: str) -> ValueError:
    """The error for a dataset that yields no image."""
    return param_error("data", owner, "a dataset holding at least one image", "an empty dataset")


@dataclass
class Batch:
    """Images (N, C, H, W) float32, labels (N,) or None, and the index of the first image."""

    images: np.ndarray
    labels: np.ndarray | None
    start: int

    def __len__(self):
        return len(self.images)

    @property
    def indices(self) -> np.ndarray:
        """Global indices of the images, ``start .. start + N - 1``."""
        return np.arange(self.start, self.start + len(self.images), dtype=np.int64)


class Dataset:
    """A stream of image batches.

    ``n`` is the number of images, or None when it is only known after a full pass.
    ``random_access`` says whether :meth:`fetch` and :meth:`subset` work (needed for
    sharding across Dask workers).
    """

    n: int | None = None
    random_access = False
    #: image size (H, W) when known without reading the data, else None
    image_size: tuple | None = None

    def __len__(self):
        if self.n is None:
            raise TypeError(f"{type(self).__name__} does not know its length before a full pass.")
        return self.n

    def _batches(self, batch_size: int, start: int, stop: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def batches(self, batch_size: int = 64, start: int = 0, stop: int | None = None, *, owner: str = "scan"):
        """Yield :class:`Batch` objects of ``batch_size`` images covering ``[start, stop)``,
        checked: float, 4-d, finite, one image size throughout."""
        check_int(batch_size, "batch_size", owner, low=1)
        size = None
        for batch in self._batches(batch_size, start, stop):
            images = as_images(batch.images, param="data", owner=owner)
            if size is None:
                size = images.shape[1:]
            elif images.shape[1:] != size:
                raise ValueError(f"The 'data' parameter of {owner} must hold images of one size. Got a batch of "
                                 f"shape {images.shape[1:]} at image {batch.start} after images of shape {size}; "
                                 "resize them first (ImageFolder takes size=(H, W)).")
            labels = batch.labels
            if labels is not None:
                labels = np.asarray(labels)
                if len(labels) != len(images):
                    raise ValueError(f"The 'data' parameter of {owner} must give one label per image. Got "
                                     f"{len(labels)} labels for {len(images)} images at image {batch.start}.")
            yield Batch(images, labels, batch.start)

    def peek(self, owner: str = "peek") -> np.ndarray:
        """The first image as a (1, C, H, W) batch, to size a model's layers before a scan."""
        for batch in self.batches(1, 0, 1, owner=owner):
            return batch.images[:1]
        raise empty_error(owner)

    def fetch(self, indices) -> np.ndarray:
        """Images at the given global indices, (len(indices), C, H, W)."""
        raise TypeError(f"{type(self).__name__} has no random access; iterate over it instead.")

    def subset(self, start: int, stop: int) -> "Dataset":
        """Images ``[start, stop)`` as a dataset keeping their global indices."""
        raise TypeError(f"{type(self).__name__} cannot be split into shards.")


class ArrayDataset(Dataset):
    """Images held in memory (any array-like (N, C, H, W)), with optional labels.

    ``offset`` is the global index of the first image (for shards)."""

    random_access = True

    def __init__(self, images, labels=None, *, offset: int = 0, owner: str = "as_dataset"):
        if not hasattr(images, "shape"):
            images = np.asarray(images)
        if len(images.shape) != 4:
            raise param_error("data", owner, "a 4-d array (N, C, H, W)", f"shape {tuple(images.shape)}")
        if labels is not None:
            labels = np.asarray(labels)
            if len(labels) != images.shape[0]:
                raise param_error("data", owner, "images and labels of the same length",
                                  f"{images.shape[0]} images and {len(labels)} labels")
        self.images, self.labels, self.offset = images, labels, offset
        self.n = int(images.shape[0])
        self.image_size = tuple(images.shape[2:])

    def _batches(self, batch_size, start, stop):
        stop = self.n if stop is None else min(stop, self.n)
        for i in range(start, stop, batch_size):
            j = min(i + batch_size, stop)
            yield Batch(self.images[i:j], None if self.labels is None else self.labels[i:j], self.offset + i)

    def fetch(self, indices):
        idx = np.asarray(indices, dtype=np.int64) - self.offset
        return as_images(np.asarray(self.images[idx]), param="data", owner="fetch")

    def subset(self, start, stop):
        return ArrayDataset(self.images[start:stop], None if self.labels is None else self.labels[start:stop],
                            offset=self.offset + start)


class ConceptImages(Dataset):
    """A :class:`~convscope.data.ConceptDataset`, drawn batch by batch (never all at once)."""

    random_access = True

    def __init__(self, concepts, start: int = 0, stop: int | None = None):
        self.concepts = concepts
        self.begin = start
        self.end = concepts.n if stop is None else stop
        self.n = self.end - self.begin
        self.image_size = (concepts.size, concepts.size)

    def _batches(self, batch_size, start, stop):
        stop = self.n if stop is None else min(stop, self.n)
        for b, i in zip(self.concepts.batches(batch_size, self.begin + start, self.begin + stop),
                        range(start, stop, batch_size)):
            yield Batch(b.images, b.labels, self.begin + i)

    def fetch(self, indices):
        return np.concatenate([self.concepts.batch(int(i), int(i) + 1).images for i in indices])

    def subset(self, start, stop):
        return ConceptImages(self.concepts, self.begin + start, self.begin + stop)


class ImageFolder(Dataset):
    """Image files in a folder, read with Pillow, as float32 RGB (or ``mode="L"`` grey) in [0, 1].

    Files are taken in sorted order. When the images sit in subfolders, one per class
    (``root/cat/1.png``), ``labels`` are the subfolder indices in sorted order and
    ``classes`` their names. Files Pillow cannot read are skipped with one warning that
    counts them. All images must have one size, unless ``size=(H, W)`` resizes them
    (bilinear) as they are read.
    """

    random_access = True

    def __init__(self, root, *, size: tuple | None = None, mode: str = "RGB", owner: str = "image_folder"):
        self.root = Path(root)
        self.mode = mode
        self.size = None if size is None else (int(size[0]), int(size[1]))
        if not self.root.is_dir():
            raise param_error("data", owner, "an existing folder of images", repr(str(root)))
        from PIL import Image, UnidentifiedImageError

        paths = sorted(p for p in self.root.rglob("*") if p.is_file())
        files, sizes, skipped = [], {}, []
        for p in paths:
            try:
                with Image.open(p) as img:
                    sizes.setdefault((img.height, img.width), p)
                files.append(p)
            except (UnidentifiedImageError, OSError, ValueError):
                skipped.append(p)
        if skipped:
            examples = ", ".join(p.name for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
            warnings.warn(f"Skipped {len(skipped)} file{'s' if len(skipped) != 1 else ''} in {self.root} that "
                          f"{'are not images' if len(skipped) != 1 else 'is not an image'} Pillow can read "
                          f"({examples}).", stacklevel=3)
        if not files:
            raise param_error("data", owner, "a folder holding at least one image", f"no image files in {str(root)!r}")
        if len(sizes) > 1 and self.size is None:
            (s1, p1), (s2, p2) = list(sizes.items())[:2]
            raise ValueError(f"The images in {str(root)!r} have {len(sizes)} different sizes: {p1.name} is "
                             f"{s1[0]}x{s1[1]} (HxW), {p2.name} is {s2[0]}x{s2[1]}. Pass size=(H, W) to resize "
                             "them all as they are read.")
        self.files = files
        self.image_size = self.size or next(iter(sizes))
        parents = sorted({p.parent for p in files})
        if len(parents) > 1 or parents[0] != self.root:
            self.classes = [str(p.relative_to(self.root)) for p in parents]
            index = {p: i for i, p in enumerate(parents)}
            self.labels = np.array([index[p.parent] for p in files], dtype=np.int64)
        else:
            self.classes, self.labels = None, None
        self.n = len(files)

    def _read(self, path) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert(self.mode)
            if self.size is not None and (img.height, img.width) != self.size:
                img = img.resize((self.size[1], self.size[0]), Image.BILINEAR)
            a = np.asarray(img, dtype=np.float32) / 255.0
        return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    def _batches(self, batch_size, start, stop):
        stop = self.n if stop is None else min(stop, self.n)
        for i in range(start, stop, batch_size):
            j = min(i + batch_size, stop)
            labels = None if self.labels is None else self.labels[i:j]
            yield Batch(np.stack([self._read(p) for p in self.files[i:j]]), labels, i)

    def fetch(self, indices):
        return np.stack([self._read(self.files[int(i)]) for i in indices])

    def subset(self, start, stop):
        return _FolderShard(self, start, stop)


class _FolderShard(Dataset):
    """Images ``[start, stop)`` of an :class:`ImageFolder`, keeping global indices."""

    random_access = True

    def __init__(self, folder: ImageFolder, start: int, stop: int):
        self.folder, self.begin, self.end = folder, start, min(stop, folder.n)
        self.n = self.end - self.begin
        self.image_size = folder.image_size

    def _batches(self, batch_size, start, stop):
        stop = self.n if stop is None else min(stop, self.n)
        for b in self.folder._batches(batch_size, self.begin + start, self.begin + stop):
            yield b

    def fetch(self, indices):
        return self.folder.fetch(indices)

    def subset(self, start, stop):
        return _FolderShard(self.folder, self.begin + start, self.begin + stop)


class IterableDataset(Dataset):
    """Any iterable of batches: arrays (N, C, H, W), ``(images, labels)`` pairs or objects with
    ``.images``/``.labels``. Its length is unknown until a pass ends; no random access.

    A one-shot iterator (a generator) can be read once; :meth:`peek` keeps the first batch
    so that the scan that follows still sees it.
    """

    def __init__(self, iterable):
        self.iterable = iterable
        self._one_shot = iter(iterable) is iterable
        self._head = None

    @staticmethod
    def _split(item, start):
        labels = None
        if hasattr(item, "images"):
            images, labels = item.images, getattr(item, "labels", None)
        elif isinstance(item, (tuple, list)) and len(item) == 2 and np.ndim(item[0]) == 4:
            images, labels = item
        elif isinstance(item, dict) and "images" in item:
            images, labels = item["images"], item.get("labels")
        else:
            images = item
        images = images if isinstance(images, np.ndarray) else np.asarray(images)
        if labels is not None and not isinstance(labels, np.ndarray):
            labels = np.asarray(labels)
        return Batch(images, labels, start)

    def _items(self):
        if self._one_shot:
            head, self._head = self._head, None
            return itertools.chain(head or (), self.iterable)
        return iter(self.iterable)

    def _batches(self, batch_size, start, stop):
        # the source decides its batches; batch_size, start and stop select images only
        seen = 0
        for item in self._items():
            b = self._split(item, seen)
            n = len(b.images)
            lo, hi = max(start - seen, 0), n if stop is None else min(stop - seen, n)
            if hi > lo:
                yield Batch(b.images[lo:hi], None if b.labels is None else b.labels[lo:hi], seen + lo)
            seen += n
            if stop is not None and seen >= stop:
                break

    def peek(self, owner: str = "peek"):
        if self._one_shot:
            if self._head is None:
                first = next(self.iterable, _END)
                if first is _END:
                    raise empty_error(owner)
                self._head = [first]
            b = self._split(self._head[0], 0)
            return as_images(b.images, param="data", owner=owner)[:1]
        return super().peek(owner)


def as_dataset(data, *, owner: str = "as_dataset", size: tuple | None = None) -> Dataset:
    """Wrap ``data`` in a :class:`Dataset` (see the module docstring for what it accepts).

    ``size`` (H, W) resizes the images of a folder. Raises ValueError for an empty array
    or folder, TypeError for something that is not a dataset.
    """
    from .shapes import ConceptDataset

    if isinstance(data, Dataset):
        return data
    if isinstance(data, ConceptDataset):
        return ConceptImages(data)
    if isinstance(data, (str, Path)):
        return ImageFolder(data, size=size, owner=owner)
    if isinstance(data, tuple) and len(data) == 2 and np.ndim(data[0]) == 4 and np.ndim(data[1]) == 1:
        dataset = ArrayDataset(data[0], data[1], owner=owner)
    elif isinstance(data, np.ndarray) or (hasattr(data, "__array__") and not hasattr(data, "__next__")):
        if np.ndim(data) != 4:
            raise param_error("data", owner, "a 4-d array of images (N, C, H, W) or a dataset",
                              f"shape {np.shape(data)}")
        dataset = ArrayDataset(data, owner=owner)
    elif hasattr(data, "__iter__"):
        return IterableDataset(data)
    else:
        raise param_error("data", owner, "an array (N, C, H, W), a folder path, convscope.data.shapes(n) or an "
                          "iterable of batches", describe(data), TypeError)
    if dataset.n == 0:
        raise param_error("data", owner, "a dataset holding at least one image", describe(data))
    return dataset


def image_folder(root, *, size: tuple | None = None, mode: str = "RGB") -> ImageFolder:
    """A folder of image files as a dataset; see :class:`ImageFolder`."""
    return ImageFolder(root, size=size, mode=mode)
