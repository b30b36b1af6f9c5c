"""The explorer server's disk cache: one folder per model file, one entry per request.

An entry is ``ROOT/<model hash>/<kind>/<request hash>/`` holding ``numbers.json`` and the
pictures as PNG files, written in a temporary folder beside it and renamed into place, so a
reader never sees half an entry. Every path is made of hashes the server computed: nothing a
request says becomes a file name, and nothing is written outside ``ROOT``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ...render.image import png_bytes

__all__ = ["DiskCache", "request_key", "file_hash", "model_hash"]


def request_key(kind: str, params: dict) -> str:
    """The hash of one request: its kind and its parameters (JSON, sorted keys)."""
    text = json.dumps([kind, params], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def file_hash(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_hash(spec: str, model, options: dict) -> str:
    """What identifies a model: the file's bytes (.onnx, .keras, the demo's weights), else, for a
    module from ``module:factory``, its class name and the bytes of its state dict; with the
    options that change its numbers (preprocessing, --quick)."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode())
    if isinstance(model, (str, os.PathLike)):
        digest.update(file_hash(model).encode())
    elif hasattr(model, "state_dict"):
        digest.update(f"{type(model).__module__}.{type(model).__qualname__}".encode())
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(tensor.detach().cpu().numpy()).tobytes())
    else:  # an object without a file or weights: its spec only (a new run recomputes when the spec changes)
        digest.update(spec.encode())
    return digest.hexdigest()[:24]


class DiskCache:
    """Entries of one model below ``root``: :meth:`load` a finished one, :meth:`store` a new one."""

    def __init__(self, root, model_key: str):
        self.root = Path(root).resolve()
        self.folder = self.root / model_key
        self.folder.mkdir(parents=True, exist_ok=True)

    def _entry(self, kind: str, key: str) -> Path:
        path = (self.folder / kind / key).resolve()
        if self.root not in path.parents:  # kinds and keys are the server's own words; this never happens
            raise ValueError(f"cache path {path} outside {self.root}")
        return path

    def load(self, kind: str, key: str):
        """``(numbers, picture names)`` of a finished entry, or None."""
        entry = self._entry(kind, key)
        try:
            numbers = json.loads((entry / "numbers.json").read_text())
        except (OSError, ValueError):
            return None
        return numbers, sorted(p.stem for p in entry.glob("*.png"))

    def picture(self, kind: str, key: str, name: str):
        """The PNG bytes of one picture of an entry, or None (``name`` is checked: letters, digits, _ and -)."""
        if not name.replace("_", "").replace("-", "").isalnum():
            return None
        path = self._entry(kind, key) / f"{name}.png"
        return path.read_bytes() if path.is_file() else None

    def store(self, kind: str, key: str, numbers: dict, pictures: dict):
        """Write an entry (``pictures``: name to (H, W, 3) RGB in [0, 1], or PNG bytes) atomically."""
        entry = self._entry(kind, key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        try:
            for name, rgb in pictures.items():
                (tmp / f"{name}.png").write_bytes(rgb if isinstance(rgb, bytes) else png_bytes(rgb))
            (tmp / "numbers.json").write_text(json.dumps(numbers, default=_plain))
            try:
                os.replace(tmp, entry)
            except OSError:  # another writer finished first: its entry is the same
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.load(kind, key)

    def save_image(self, png: bytes) -> str:
        """Keep an uploaded image (already decoded and re-encoded as PNG); returns its id."""
        key = hashlib.sha256(png).hexdigest()[:32]
        folder = self.root / "images"
        folder.mkdir(exist_ok=True)
        path = folder / f"{key}.png"
        if not path.is_file():
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
            with os.fdopen(fd, "wb") as f:
                f.write(png)
            os.replace(tmp, path)
        return key

    def image_path(self, key: str):
        if not (len(key) == 32 and all(c in "0123456789abcdef" for c in key)):
            return None
        path = self.root / "images" / f"{key}.png"
        return path if path.is_file() else None


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
