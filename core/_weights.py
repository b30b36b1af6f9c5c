"""The check of the weights given to ``Backend.with_weights``, in the project's one error template."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ._validate import check_name, describe, param_error

__all__ = ["checked_weights"]


def checked_weights(backend, weights) -> dict:
    """``weights`` ``{layer: {parameter: array}}`` checked against ``backend`` (a BackendBase): known
    layers with parameters (:meth:`BackendBase._replaceable`), known parameter names, the same
    shapes, float (or the parameter's own) dtype, finite values; the arrays copied."""
    owner = "with_weights"
    if not isinstance(weights, Mapping):
        raise param_error("weights", owner, "a mapping {layer: {parameter: array}}", describe(weights), TypeError)
    checked = {}
    for layer, params in weights.items():
        if not (isinstance(layer, str) and backend._layer_known(layer)):
            check_name(layer, backend._layer_names(), "weights", owner)
        have = backend._replaceable(layer)
        if not isinstance(params, Mapping):
            raise param_error("weights", owner, f"a mapping {{parameter: array}} for layer {layer!r}",
                              describe(params), TypeError)
        if not have:
            raise param_error("weights", owner, "layers with parameters", f"{layer!r}, which has none")
        checked[layer] = {}
        for key, value in params.items():
            what = f"{layer!r} {key!r}"
            if key not in have:
                check_name(key, have, f"weights[{layer!r}]", owner, what="parameter")
            arr = np.asarray(value)
            want = have[key]
            if arr.dtype.kind not in "fiub" or (arr.dtype.kind != "f" and arr.dtype != want.dtype):
                raise param_error("weights", owner, f"a float array for {what}", f"dtype {arr.dtype}", TypeError)
            if arr.shape != want.shape:
                raise param_error("weights", owner, f"shape {want.shape} for {what}", f"shape {arr.shape}")
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                bad = int(arr.size - np.isfinite(arr).sum())
                raise param_error("weights", owner, f"finite values for {what}", f"{bad} NaN or Inf")
            checked[layer][key] = np.array(arr)  # a copy: later edits of the caller's array do not reach it
    return checked
