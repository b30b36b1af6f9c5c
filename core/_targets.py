"""What to explain: a class per sample, or seeds computed from the outputs; and the shared
entry checks (the model as a Backend, the images as float32 NCHW).

``target`` is one of

- ``None``: the predicted (top-scoring) class of each sample;
- an int: the same class for every sample;
- a sequence of ints, one per sample;
- a callable on the outputs (N, K) of the pass that returns either one class per sample
  (N,) ints, or seeds (N, K): the gradient of the explained objective with respect to the
  outputs (``lambda out: softmax_grad(out)``, say). A gradient-free method explains the
  linear objective ``sum_k seeds[n, k] * outputs[n, k]`` with the seeds taken at the
  unperturbed image.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._plugins import load
from .backend import unchecked
from .preprocess import user_images
from ._validate import as_images, describe, param_error

__all__ = ["prepare", "entry_images", "with_choices", "check_target", "output_seeds", "index_per_sample", "softmax", "objective", "OUTPUT_MODES"]

#: What a perturbation method compares: the raw scores, or their softmax.
OUTPUT_MODES = ("score", "probability")


def prepare(model, x, owner: str):
    """The Backend for ``model`` and ``x`` checked once, as C-contiguous float32 (N, C, H, W).

    The backend returned is its trusted path (:func:`convscope.backend.unchecked`): the
    method's own passes do not check the images again."""
    backend = load(model)
    return unchecked(backend), entry_images(backend, x, owner)


def entry_images(backend, x, owner: str, param: str = "x") -> np.ndarray:
    """``x`` checked once at a method's entry, as C-contiguous float32 (N, C, H, W), against
    the backend's channels and fixed size. A backend with a declared preprocessing takes
    images as users hold them (uint8, PIL, one image, channels-last where declared)."""
    p = getattr(backend, "preprocess", None)
    if p is not None:
        x = user_images(x, p.layout)
    return as_images(x, param=param, owner=owner, channels=getattr(backend, "channels", None),
                     spatial=getattr(backend, "fixed_size", None))


def with_choices(info: dict, backend) -> dict:
    """``info`` with what convscope chose for the user on this model (a final softmax left
    out, say: ``backend.choices``) under ``"choices"``, when it chose anything."""
    chosen = {**(getattr(backend, "choices", None) or {}), **info.get("choices", {})}
    return {**info, "choices": chosen} if chosen else info


_KINDS = "an int, one int per sample, a callable or None"


def check_target(target, n: int, owner: str, param: str = "target"):
    """Check the type of ``target`` before any pass (the range is checked on the outputs)."""
    if target is None or callable(target):
        return target
    if isinstance(target, (bool, np.bool_)):
        raise param_error(param, owner, _KINDS, describe(target), TypeError)
    if isinstance(target, (int, np.integer)):
        return int(target)
    if isinstance(target, (Sequence, np.ndarray)) and not isinstance(target, str):
        arr = np.asarray(target)
        if arr.ndim != 1 or arr.dtype.kind not in "iu":
            raise param_error(param, owner, _KINDS, describe(target), TypeError)
        if len(arr) != n:
            raise param_error(param, owner, f"one int per sample ({n})", f"{len(arr)} values")
        return arr.astype(np.int64)
    raise param_error(param, owner, _KINDS, describe(target), TypeError)


def index_per_sample(target, n: int, k: int, owner: str, *, param: str = "target",
                     what: str = "a class index", of: str = "outputs") -> np.ndarray:
    """(n,) int64 indices from an int or per-sample ints, each checked to lie in [0, k)."""
    idx = np.asarray(target, dtype=np.int64)
    idx = np.full(n, idx) if idx.ndim == 0 else idx.copy()
    if idx.min() < 0 or idx.max() >= k:
        shown = int(idx[(idx < 0) | (idx >= k)][0]) if np.ndim(target) == 0 else describe(np.asarray(target).tolist())
        raise param_error(param, owner, f"{what} in [0, {k - 1}] for {k} {of}", str(shown))
    return idx


def output_seeds(target, outputs: np.ndarray, owner: str):
    """Seeds (N, K) float32 for the outputs and the class per sample (None for callable seeds)."""
    n, k = outputs.shape
    if target is None:
        classes = outputs.argmax(axis=1).astype(np.int64)
    elif callable(target):
        got = np.asarray(target(outputs))
        if got.shape == (n, k) and got.dtype.kind == "f":
            return np.ascontiguousarray(got, dtype=np.float32), None
        if got.shape in ((), (n,)) and got.dtype.kind in "iu":
            classes = index_per_sample(got, n, k, owner)
        else:
            raise param_error("target", owner, f"a callable that returns seeds shaped like the outputs {(n, k)} "
                              f"or one class per sample ({n},) ints", describe(got))
    else:
        classes = index_per_sample(target, n, k, owner)
    seeds = np.zeros((n, k), np.float32)
    seeds[np.arange(n), classes] = 1.0
    return seeds, classes


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for stability, returned as float32."""
    z = scores.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def objective(outputs: np.ndarray, seeds: np.ndarray, output: str) -> np.ndarray:
    """``sum_k seeds[n, k] * g(outputs)[n, k]``, g = identity (``"score"``) or softmax (``"probability"``)."""
    values = softmax(outputs) if output == "probability" else outputs
    return np.einsum("nk,nk->n", values.astype(np.float64), seeds.astype(np.float64))
