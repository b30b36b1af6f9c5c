"""Eval mode for a call and the forward hooks that record (or hand on) layer outputs.

Each hook records the output of one call of one module. With ``replace`` it hands a clone
downstream, so that an operation after the layer that works in place (an in-place ReLU, a
``+=``) cannot change, or break the gradient of, the recorded tensor. A module that returns
a tensor already handed downstream returns either the same value (a container returning its
last child's output, an ``Identity``: the tensor recorded for it is that child's) or a value
changed in place (``ReLU(inplace=True)``: its version counter moved on, so its output is a
new value, recorded and cloned again).
"""
from __future__ import annotations

from contextlib import contextmanager

__all__ = ["Stop", "training_modules", "eval_mode", "capture"]


class Stop(Exception):
    """Raised by a hook once every asked layer is captured, to skip the rest of the pass."""


def training_modules(root) -> list:
    """Every module under ``root`` (itself included) in training mode; a plain walk of the
    ``_modules`` dicts, several times faster than ``modules()``, so it can run every call and
    see modules added after loading."""
    found, stack = [], [root]
    while stack:
        m = stack.pop()
        if m is not None:
            if m.training:
                found.append(m)
            stack.extend(m._modules.values())
    return found


@contextmanager
def eval_mode(module):
    """Eval mode for the call; every module's training flag restored afterwards."""
    switched = training_modules(module)  # setattr on a Module is slow: only these
    try:
        for m in switched:
            m.training = False
        yield
    finally:
        for m in switched:
            m.training = True


def split_calls(names) -> dict:
    """``{module path: {call number: layer name}}`` for names such as ``"block.relu#2"``."""
    wanted = {}
    for n in names:
        base, _, call = n.partition("#")
        wanted.setdefault(base, {})[int(call or 1)] = n
    return wanted


@contextmanager
def capture(torch, modules, names, store, replace, stop_when_done=False, leaves=()):
    """Forward hooks on ``modules[path]`` that record the outputs of ``names`` into ``store``.

    With ``replace`` the recorded tensor is the one autograd differentiates and a clone goes
    downstream (module docstring); without it a detached copy is recorded. A layer in
    ``leaves`` whose output carries no graph (the pass started with gradients off) is
    recorded as a fresh leaf that requires grad, and gradient recording is switched on from
    there: the layers before it build no graph.
    """
    wanted = split_calls(names)
    calls = dict.fromkeys(wanted, 0)
    handles = []
    handed = {}  # id(clone handed downstream) -> (that clone, its version, the tensor recorded for it)
    total = len(names)

    def make_hook(base):
        def hook(module, inputs, out):
            calls[base] += 1
            name = wanted[base].get(calls[base])
            if name is None:
                return None
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"Layer {name!r} returns a {type(out).__name__}, not a tensor; "
                                "pick one of its children instead.")
            if replace:
                seen = handed.get(id(out))
                if seen is not None and seen[0] is out and seen[1] == out._version:
                    store[name] = seen[2]  # the same value as a layer already recorded: one tensor
                    return None
            if name in leaves and not out.requires_grad:
                out = out.detach().requires_grad_(True)
                torch.set_grad_enabled(True)  # restored by the caller's no_grad context
            store[name] = out if replace else out.detach().clone()
            if stop_when_done and len(store) == total:
                raise Stop
            if not replace:
                return None
            clone = out.clone()
            handed[id(clone)] = (clone, clone._version, out)
            return clone
        return hook

    try:
        for base in wanted:
            handles.append(modules[base].register_forward_hook(make_hook(base)))
        yield
    finally:
        for h in handles:
            h.remove()
