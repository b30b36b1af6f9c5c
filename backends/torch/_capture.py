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

from contextlib import ExitStack, contextmanager

from ._functional import functional_mode, is_functional

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
def capture(torch, modules, names, store, replace, stop_when_done=False, leaves=(), functional=None):
    """Forward hooks on ``modules[path]`` that record the outputs of ``names`` into ``store``.

    With ``replace`` the recorded tensor is the one autograd differentiates and a clone goes
    downstream (module docstring); without it a detached copy is recorded. A layer in
    ``leaves`` whose output carries no graph (the pass started with gradients off) is
    recorded as a fresh leaf that requires grad, and gradient recording is switched on from
    there: the layers before it build no graph.

    A functional layer (``"features:relu"``, :mod:`._functional`) is found through
    ``functional`` (name -> :class:`._functional.Functional`, from the probe): its anchor
    module's hook notes the tensor it hands on, and a ``TorchFunctionMode``, entered only
    then, records the call.
    """
    asked = [n for n in names if is_functional(n) and n.partition("#")[0] not in modules]
    wanted = split_calls([n for n in names if n not in asked])
    where = {n: (functional or {}).get(n) for n in asked}
    unknown = [n for n, f in where.items() if f is None]
    if unknown:
        raise ValueError(f"Layers {unknown} did not run in the probe pass; they cannot be recorded.")
    anchored = split_calls({f.anchor for f in where.values()})
    anchors = {}  # id(tensor an anchor handed on) -> (that tensor, its version, the anchor's name)
    bases = list(dict.fromkeys([*wanted, *anchored]))
    calls = dict.fromkeys(bases, 0)
    handles = []
    handed = {}  # id(clone handed downstream) -> (that clone, its version, the tensor recorded for it)
    total = len(names)

    def recorded():
        if stop_when_done and len(store) == total:
            raise Stop

    def note(anchor, t):
        if anchor is not None and isinstance(t, torch.Tensor):
            anchors[id(t)] = (t, t._version, anchor)

    def make_hook(base):
        mine, anchor_of = wanted.get(base, {}), anchored.get(base, {})

        def hook(module, inputs, out):
            calls[base] += 1
            name, anchor = mine.get(calls[base]), anchor_of.get(calls[base])
            if name is None:
                note(anchor, out)  # what goes downstream
                return None
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"Layer {name!r} returns a {type(out).__name__}, not a tensor; "
                                "pick one of its children instead.")
            if replace:
                seen = handed.get(id(out))
                if seen is not None and seen[0] is out and seen[1] == out._version:
                    store[name] = seen[2]  # the same value as a layer already recorded: one tensor
                    note(anchor, out)
                    return None
            if name in leaves and not out.requires_grad:
                out = out.detach().requires_grad_(True)
                torch.set_grad_enabled(True)  # restored by the caller's no_grad context
            store[name] = out if replace else out.detach().clone()
            recorded()
            if not replace:
                note(anchor, out)
                return None
            clone = out.clone()
            handed[id(clone)] = (clone, clone._version, out)
            note(anchor, clone)
            return clone
        return hook

    try:
        with ExitStack() as stack:
            for base in bases:
                handles.append(modules[base].register_forward_hook(make_hook(base)))
            if asked:
                targets = {(f.anchor, f.op, f.index): n for n, f in where.items()}
                stack.enter_context(functional_mode(torch, targets, anchors, store, replace, set(leaves), recorded))
            yield
    finally:
        for h in handles:
            h.remove()
