"""Pieces every synthesis method shares: argument checks, the model's fixed input size,
bilinear resizing with its exact adjoint, and the progress bar."""
from __future__ import annotations

import sys

import numpy as np

from .._validate import check_number, param_error

__all__ = ["fixed_input_size", "input_channels", "check_weight", "check_range", "check_size", "resize_matrix",
           "resize_images", "resize_adjoint", "progress_bar", "spatial_layers", "check_layers"]


def fixed_input_size(backend):
    """(H, W) when the backend's model takes only one image size, else None.

    Read from the backend's optional ``fixed_size`` attribute (H, W), None for a free size
    (the ONNX and Keras backends take it from the model file; a torch module is size-free).
    """
    size = getattr(backend, "fixed_size", None)
    if size is None or len(size) != 2:
        return None
    h, w = size
    if isinstance(h, (int, np.integer)) and isinstance(w, (int, np.integer)) and h > 0 and w > 0:
        return int(h), int(w)
    return None


def input_channels(backend, default: int = 3) -> int:
    """Channels the model takes (3 unless the backend says otherwise)."""
    shape = getattr(backend, "input_shape", None)
    if shape is not None and len(shape) == 3 and isinstance(shape[0], (int, np.integer)):
        return int(shape[0])
    channels = getattr(backend, "channels", None)
    return int(channels) if isinstance(channels, (int, np.integer)) else default


def check_weight(value, param: str, owner: str) -> float:
    """A loss weight or step size: a finite number >= 0."""
    return check_number(value, param, owner, low=0)


def check_range(value_range, owner: str) -> tuple:
    """``value_range`` = (low, high) with low < high: the valid pixel range of the model input."""
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise param_error("value_range", owner, "a pair (low, high)", repr(value_range), TypeError) from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise param_error("value_range", owner, "a pair (low, high) with low < high", repr(value_range))
    return lo, hi


def check_size(size, backend, owner: str, default: int = 128) -> tuple:
    """The image size (H, W) to synthesise: the model's fixed size when it has one."""
    fixed = fixed_input_size(backend)
    if size is None:
        return fixed or (default, default)
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size), int(size))
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise param_error("size", owner, "an int or a pair (H, W)", repr(size), TypeError) from None
    if h < 8 or w < 8:
        raise param_error("size", owner, "at least 8 pixels on each side", repr(size))
    if fixed is not None and (h, w) != fixed:
        raise param_error("size", owner, f"{fixed} for this fixed-size model", repr(size))
    return h, w


# ----------------------------------------------------------------------------- resizing
def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation matrix, align-corners False (as torch
    ``interpolate`` and :func:`convscope.render.resize`); its transpose is the adjoint."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = pos - lo
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def resize_images(x: np.ndarray, size: tuple) -> np.ndarray:
    """Bilinear resize of the last two axes: ``R_h x R_w^T``."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x.astype(np.float32, copy=True)
    rh, rw = resize_matrix(h, size[0]), resize_matrix(w, size[1])
    return np.einsum("Hh,...hw,Ww->...HW", rh, x, rw, optimize=True).astype(np.float32)


def resize_adjoint(g: np.ndarray, size: tuple) -> np.ndarray:
    """Adjoint of :func:`resize_images` from ``size`` (h, w) to g's size: ``R_h^T g R_w``."""
    H, W = g.shape[-2:]
    if (H, W) == tuple(size):
        return g.astype(np.float32, copy=True)
    rh, rw = resize_matrix(size[0], H), resize_matrix(size[1], W)
    return np.einsum("Hh,...HW,Ww->...hw", rh, g, rw, optimize=True).astype(np.float32)


# ----------------------------------------------------------------------------- progress
def progress_bar(total: int, progress, desc: str):
    """A tqdm bar, or None. ``progress``: True (a bar; needs tqdm), False (none) or None
    (a bar when tqdm is installed and stderr is a terminal)."""
    if progress is False:
        return None
    if progress is None and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError("Progress bars need tqdm: pip install 'convscope[features]' "
                              "(or pass progress=False)") from None
        return None
    return tqdm(total=total, desc=desc, leave=False)


def spatial_layers(backend, kinds=("relu",)) -> list:
    """Names of the layers with (C, H, W) outputs of the given kinds (ReLUs by default;
    conv layers when the model has no separate ReLU layers)."""
    records = [layer for layer in backend.layers() if layer.spatial]
    names = [layer.name for layer in records if layer.kind in kinds]
    return names or [layer.name for layer in records if layer.kind == "conv"]


def check_layers(layers, backend, owner: str, param: str = "layers") -> list:
    """A layer name or a non-empty sequence of them, each known to the backend."""
    from .._validate import check_name

    if isinstance(layers, str):
        layers = [layers]
    try:
        layers = list(layers)
    except TypeError:
        raise param_error(param, owner, "a layer name or a list of layer names", repr(layers), TypeError) from None
    if not layers:
        raise param_error(param, owner, "at least one layer name", "an empty sequence")
    known = [layer.name for layer in backend.layers()]
    return [check_name(name, known, param, owner) for name in layers]


def numpy_single_threaded():
    """A context in which NumPy's BLAS uses one thread (threadpoolctl, when installed).

    The loops alternate small NumPy products (Gram matrices, colour mixing) with the
    framework's pass; idle BLAS threads spinning after each product take the cores the
    framework needs next (ten times slower steps were measured on two cores). Without
    threadpoolctl nothing changes.
    """
    from contextlib import nullcontext

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
