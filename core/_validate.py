"""Input validators shared by every function: one error template everywhere.

"The 'x' parameter of gradient must be a 4-d array (N, C, H, W). Got shape (3, 8) instead."
"""
from __future__ import annotations

import difflib
from typing import Iterable, Sequence

import numpy as np


def param_error(param: str, owner: str, expected: str, got: str, cls=ValueError) -> Exception:
    """Build the project's one error message for a bad argument."""
    return cls(f"The '{param}' parameter of {owner} must be {expected}. Got {got} instead.")


def describe(value) -> str:
    """A short description of what came, for error messages."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, (list, tuple)) and len(value) > 8:
        return f"a {type(value).__name__} of length {len(value)}"
    text = repr(value)
    return text if len(text) < 80 else f"a {type(value).__name__}"


def as_images(x, *, param: str = "x", owner: str = "forward", channels: int | None = None,
              spatial: tuple | None = None) -> np.ndarray:
    """Check a batch of images and return it as C-contiguous float32 (N, C, H, W)."""
    if not isinstance(x, np.ndarray):
        if hasattr(x, "__array__") or isinstance(x, (list, tuple)):
            x = np.asarray(x)
        else:
            raise param_error(param, owner, "a NumPy array (N, C, H, W)", f"{type(x).__name__}", TypeError)
    if x.dtype.kind != "f":
        raise param_error(param, owner, "a floating-point array (scale uint8 images to [0, 1] first)",
                          f"dtype {x.dtype}", TypeError)
    if x.ndim != 4:
        raise param_error(param, owner, "a 4-d array (N, C, H, W)", f"shape {x.shape}")
    if x.shape[0] == 0:
        raise param_error(param, owner, "a non-empty batch", f"shape {x.shape}")
    if channels is not None and x.shape[1] != channels:
        hint = " (channels last? convscope takes NCHW)" if x.shape[3] == channels else ""
        raise param_error(param, owner, f"an array with {channels} channels on axis 1{hint}", f"shape {x.shape}")
    if spatial is not None and tuple(x.shape[2:]) != tuple(spatial):
        raise param_error(param, owner, f"images of size {tuple(spatial)} for this fixed-size model",
                          f"shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise param_error(param, owner, "finite (no NaN or Inf)", f"{bad} non-finite values")
    return x


def check_finite(array: np.ndarray, what: str, owner: str) -> np.ndarray:
    """Report NaN or Inf that a model produced, instead of rendering a blank picture."""
    if not np.isfinite(array).all():
        bad = int(np.size(array) - np.isfinite(array).sum())
        raise FloatingPointError(f"{owner}: the model produced {bad} non-finite values in {what}; "
                                 "check the input range and the model's weights.")
    return array


def check_choice(value, choices: Sequence, param: str, owner: str):
    """Check that ``value`` is one of ``choices``."""
    if value not in choices:
        raise param_error(param, owner, "one of " + ", ".join(repr(c) for c in choices), repr(value))
    return value


def check_name(name, known: Iterable[str], param: str, owner: str, what: str = "layer") -> str:
    """Check a tensor or layer name; an unknown one lists the closest known names."""
    known = list(known)
    if not isinstance(name, str):
        raise param_error(param, owner, f"a {what} name (str)", describe(name), TypeError)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        if not close:
            close = [k for k in known if name.lower() in k.lower()][:5]
        hint = f"; closest: {', '.join(close)}" if close else f"; known: {', '.join(known[:12])}{', ...' if len(known) > 12 else ''}"
        raise ValueError(f"The '{param}' parameter of {owner} must be a known {what} name. "
                         f"Got {name!r} instead{hint}.")
    return name


def check_int(value, param: str, owner: str, *, low: int | None = None, high: int | None = None) -> int:
    """Check an integer in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise param_error(param, owner, "an int", describe(value), TypeError)
    if low is not None and value < low:
        raise param_error(param, owner, f">= {low}", str(value))
    if high is not None and value > high:
        raise param_error(param, owner, f"<= {high}", str(value))
    return int(value)


def check_number(value, param: str, owner: str, *, low: float | None = None, strict: bool = False) -> float:
    """Check a real number, optionally bounded below (``strict`` for >)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise param_error(param, owner, "a number", describe(value), TypeError)
    if not np.isfinite(value):
        raise param_error(param, owner, "finite", str(value))
    if low is not None and (value <= low if strict else value < low):
        raise param_error(param, owner, f"{'>' if strict else '>='} {low}", str(value))
    return float(value)
