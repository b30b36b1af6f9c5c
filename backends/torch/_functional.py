"""Functional activations as layers: ``F.relu(features)`` in a ``forward`` is a layer as an
``nn.ReLU`` module would be, so that torch and the ONNX export of one model list the same
tensors (a DenseNet's final ``F.relu(self.features(x), inplace=True)`` is the map its CAM
reads on both).

**In the probe** (:mod:`._probe`) a call of an elementwise activation (:func:`activation_ops`)
whose first argument is the output of a recorded module, outside any leaf module's own
``forward`` (an ``nn.ReLU`` calls ``F.relu``: that call is the module), is the layer
``"<module layer>:<op>"`` (``"features:relu"``; the next such call on the same layer
``"features:relu#2"``), kind ``"relu"`` for relu and relu6, ``"activation"`` otherwise,
``inputs`` the module layer. Its result's autograd node is noted as its own, so a later
module computed from it names it in ``inputs``. The probe also notes, per functional layer,
the how-manyth call of that op on that module layer's output it is, counting the calls made
inside leaf modules too (:class:`Functional`): a pass then finds it without hooks on every
module.

**In a pass** (:func:`functional_mode`) that asks for a functional layer, the capture hooks
note the tensor each anchor module hands downstream (the clone, with ``replace``), and a
``TorchFunctionMode``, installed only for such passes, counts the activation calls on it and
records the asked one: a detached copy (activations), or, with ``replace``, the result
itself, the tensor autograd differentiates (for an in-place ``relu_``, the tensor after the
op), while a clone goes downstream. The mode sits above the guided/deconvnet rule mode, so
the call it forwards still gets the rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

__all__ = ["Functional", "activation_ops", "op_kind", "is_functional", "functional_mode"]

#: canonical op -> names of the functions (torch, torch.nn.functional, Tensor methods) that compute it
_OPS = {
    "relu": ("relu", "relu_"),
    "relu6": ("relu6",),
    "silu": ("silu",),
    "gelu": ("gelu",),
    "hardswish": ("hardswish",),
    "hardsigmoid": ("hardsigmoid",),
    "leaky_relu": ("leaky_relu", "leaky_relu_"),
    "elu": ("elu", "elu_"),
    "selu": ("selu", "selu_"),
    "celu": ("celu", "celu_"),
    "mish": ("mish",),
    "softplus": ("softplus",),
    "sigmoid": ("sigmoid", "sigmoid_"),
    "tanh": ("tanh", "tanh_"),
}


@dataclass(frozen=True)
class Functional:
    """Where a functional layer is found in a pass: the ``index``-th call of ``op`` (canonical
    name) on the output of the module layer ``anchor``."""

    anchor: str
    op: str
    index: int


@lru_cache(maxsize=None)
def activation_ops(torch) -> dict:
    """``{function object: canonical op}`` for every spelling of the activations (``F.relu``,
    ``torch.relu_``, ``Tensor.sigmoid``, ...), as a ``TorchFunctionMode`` receives them."""
    F = torch.nn.functional
    table = {}
    for op, names in _OPS.items():
        for owner in (torch, F, torch.Tensor, torch._C._nn):
            for name in names:
                func = getattr(owner, name, None)
                if callable(func):
                    table.setdefault(func, op)
    return table


def op_kind(op: str) -> str:
    return "relu" if op in ("relu", "relu6") else "activation"


def is_functional(name) -> bool:
    return isinstance(name, str) and ":" in name


def _first(args, kwargs):
    return args[0] if args else kwargs.get("input", kwargs.get("self"))


@lru_cache(maxsize=None)
def _mode_class(torch):
    from torch.overrides import TorchFunctionMode

    ops = activation_ops(torch)
    Tensor = torch.Tensor

    class FunctionalCapture(TorchFunctionMode):
        """Counts activation calls on the noted anchor tensors and records the asked ones."""

        def __init__(self, wanted, anchors, store, replace, leaves, recorded):
            super().__init__()
            self.wanted = wanted  # (anchor, op, index) -> layer name
            self.anchors = anchors  # id(tensor handed on) -> (tensor, its version, anchor name)
            self.store, self.replace, self.leaves, self.recorded = store, replace, leaves, recorded
            self.counts = {}

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            op = ops.get(func)
            if op is None:
                return func(*args, **kwargs)
            x = _first(args, kwargs)
            entry = self.anchors.get(id(x)) if isinstance(x, Tensor) else None
            if entry is None or entry[0] is not x or entry[1] != x._version:
                return func(*args, **kwargs)
            key = (entry[2], op)
            n = self.counts[key] = self.counts.get(key, 0) + 1
            name = self.wanted.get((entry[2], op, n))
            r = func(*args, **kwargs)  # the modes below (the guided/deconvnet rule) see the call
            if name is None or not isinstance(r, Tensor):
                return r
            if not self.replace:
                self.store[name] = r.detach().clone()
                self.recorded()
                return r
            if name in self.leaves and not r.requires_grad:  # the pass runs without a graph until here
                try:
                    r.requires_grad_(True)  # in place too: code that goes on with ``x`` keeps the graph
                except RuntimeError:
                    r = r.detach().requires_grad_(True)
                torch.set_grad_enabled(True)  # restored by the caller's no_grad context
            self.store[name] = r
            self.recorded()
            return r.clone()

    return FunctionalCapture


def functional_mode(torch, wanted, anchors, store, replace, leaves, recorded):
    """The mode of a pass that asks for functional layers: ``wanted`` maps (anchor, op, index)
    to the asked name, ``anchors`` is filled by the capture hooks, ``recorded()`` is called
    after each record (it raises :class:`._capture.Stop` once every asked layer is in)."""
    return _mode_class(torch)(wanted, anchors, store, replace, leaves, recorded)
