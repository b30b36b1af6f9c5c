"""What the command line reads and writes: model specs, image files, output paths.

Every user mistake here raises :class:`UsageError`, which the command turns into one line
on stderr and exit status 2.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np

__all__ = ["UsageError", "load_model", "read_images", "check_output", "MODEL_FORMATS"]

MODEL_FORMATS = "an .onnx file, a .keras (or .h5) file, a torch model as package.module:factory, or 'demo' / demo:torch|onnx|keras"


class UsageError(Exception):
    """A mistake in what the user asked for: reported in one line, exit status 2."""


def load_model(spec: str):
    """Turn a MODEL argument into something :func:`convscope.load` accepts."""
    from ..data import demo_model

    if spec == "demo" or spec.startswith("demo:"):
        framework = spec.partition(":")[2] or "torch"
        if framework not in ("torch", "onnx", "keras"):
            raise UsageError(f"unknown demo framework {framework!r}; use demo:torch, demo:onnx or demo:keras")
        return demo_model(framework)
    path = Path(spec)
    suffix = path.suffix.lower()
    if suffix in (".onnx", ".keras", ".h5"):
        if not path.is_file():
            raise UsageError(f"model file not found: {spec}")
        return str(path)
    if ":" in spec and not path.exists():
        module_name, _, attr = spec.partition(":")
        sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise UsageError(f"cannot import {module_name!r} for the model {spec!r}: {err}") from None
        finally:
            sys.path.pop(0)
        factory = getattr(module, attr, None)
        if factory is None:
            raise UsageError(f"{module_name!r} has no attribute {attr!r} (the model factory in {spec!r})")
        model = factory() if callable(factory) else factory
        return model.eval() if hasattr(model, "eval") and callable(model.eval) else model
    if path.exists():
        raise UsageError(f"model format not recognised: {spec}; supported: {MODEL_FORMATS}")
    raise UsageError(f"model not found: {spec}; give {MODEL_FORMATS}")


def read_images(paths, size=None) -> np.ndarray:
    """Read image files into (N, 3, H, W) float32 in [0, 1]; ``size`` (H, W) resizes them."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise UsageError(f"image file not found: {p}")
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if size is not None:
                    img = img.resize((size[1], size[0]), Image.BILINEAR)
                images.append(np.asarray(img, np.float32).transpose(2, 0, 1) / 255)
        except (UnidentifiedImageError, OSError) as err:
            raise UsageError(f"cannot decode image {p}: {err}") from None
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise UsageError(f"images have different sizes {sorted(shapes)}; pass --size H W")
    return np.stack(images)


def check_output(path, *, folder: bool = False) -> Path:
    """Check that an output file (or folder) can be written before any work starts."""
    path = Path(path)
    target = path if folder else path.parent
    probe = target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise UsageError(f"cannot write the output {path}: {probe} is not a writable folder")
    if folder and path.exists() and not path.is_dir():
        raise UsageError(f"cannot write the output folder {path}: a file of that name exists")
    return path
