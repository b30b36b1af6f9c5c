"""Pieces every synthesis method shares: argument checks, the model's fixed input size, and
single-threaded NumPy around the optimisation loops."""
from __future__ import annotations

import numpy as np

from .._validate import check_number, param_error

__all__ = ["backend_range", "fixed_input_size", "input_channels", "check_weight", "check_range", "check_size", "numpy_single_threaded", "warn_zero_gradient"]


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


def backend_range(backend) -> tuple:
    """The value range of the backend's model input: ``load(model, value_range=(lo, hi))``,
    (0, 1) when the backend does not say."""
    return getattr(backend, "value_range", None) or (0.0, 1.0)


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


def warn_zero_gradient(owner: str, objective) -> None:
    """Say that the objective's gradient at the input is exactly zero for some image, so the
    image cannot change (a dead unit, a saturated ReLU, a layer the input does not reach)."""
    import warnings

    warnings.warn(f"{owner}: the gradient of {objective!r} at the input is exactly zero for at least one image, so "
                  "that image does not change; pick another layer or channel, or start from another image.",
                  RuntimeWarning, stacklevel=3)
