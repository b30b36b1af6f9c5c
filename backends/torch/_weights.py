"""A copy of a torch module with some parameters replaced, for :meth:`TorchBackend.with_weights`.

The user's module is never touched: :func:`copy.deepcopy` makes the copy (its training flags,
``requires_grad`` and hooks are copied with it), and the new values are written into the
copy's parameters under ``no_grad``. Parameters tied across modules stay tied in the copy
(``deepcopy`` keeps the sharing), so replacing one replaces them all, as it would in torch.
"""
from __future__ import annotations

import copy

import numpy as np

__all__ = ["module_with_weights"]


def module_with_weights(torch, module, named, weights):
    """A deep copy of ``module`` whose parameters ``weights`` ``{layer: {name: array}}`` replace
    the originals (``named``: the backend's ``{path: module}``, layers already checked)."""
    try:
        twin = copy.deepcopy(module)
    except Exception as err:  # noqa: BLE001 - a module holding something that cannot be copied
        raise ValueError(f"with_weights could not copy the torch module {type(module).__name__} "
                         f"(copy.deepcopy failed: {type(err).__name__}: {err}).") from None
    twin_named = dict(twin.named_modules())
    with torch.no_grad():
        for layer, params in weights.items():
            own = dict(twin_named[layer].named_parameters(recurse=False))
            for key, value in params.items():
                p = own[key]
                p.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(p.device, p.dtype))
    return twin

