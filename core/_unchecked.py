"""The trusted path of a :class:`~convscope.backend.BackendBase`: its framework calls without the checks."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .backend import INPUT, OUTPUT, BackendBase, _rule_of

__all__ = ["unchecked"]


class _Unchecked:
    """The trusted path of a :class:`BackendBase`: the framework's calls without the image and
    seed checks (the expensive ones: a scan of every value). Names are still checked, which
    costs a set look-up each, so an unknown layer a caller passed on raises the one error."""

    __slots__ = ("_backend",)

    def __init__(self, backend):
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def __repr__(self):
        return f"unchecked({self._backend!r})"

    def _images(self, x):
        x = np.ascontiguousarray(x, dtype=np.float32)  # no copy when it is already so
        self._backend._note_input(x)
        return x

    def forward(self, x):
        return self._backend._forward(self._images(x))

    def activations(self, x, layers):
        return self._backend._activations(self._images(x), self._backend._check_names(layers, "layers", "activations"))

    def gradient(self, x, seeds, *, wrt=(INPUT,), at=None, rule="standard", relu=None):
        if relu is not None:
            rule = _rule_of(rule, relu)[0]
        b = self._backend
        if at is None:
            at = list(seeds) if isinstance(seeds, Mapping) else [OUTPUT]
        return b._gradient(self._images(x), seeds, b._check_names(wrt, "wrt", "gradient"),
                           b._check_names(at, "at", "gradient"), rule)


def unchecked(backend):
    """The trusted inner path of ``backend``, for code that has checked its arguments.

    For a :class:`BackendBase`, an object with the same interface whose ``forward``,
    ``activations`` and ``gradient`` call ``_forward``, ``_activations`` and ``_gradient``
    directly: no image, seed or rule check (``x`` must be float32 (N, C, H, W) and finite,
    seeds float32 arrays shaped like their tensors); names are still checked (a set
    look-up). Every other member is the backend's own. Any other backend is returned as it is.
    """
    if isinstance(backend, _Unchecked):
        return backend
    return _Unchecked(backend) if isinstance(backend, BackendBase) else backend
