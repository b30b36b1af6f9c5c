"""What the torch backend explains: the scores before a final softmax, by default.

``load(model, output="scores")`` (the default) explains the input of a final softmax: an
``nn.Softmax``/``nn.LogSoftmax`` module, or a ``torch.softmax``/``F.softmax``/``log_softmax``
call (function or tensor method), whose result is the model's output; ``output="probabilities"``
keeps it. The first pass finds it (:func:`detect_softmax`: a ``TorchFunctionMode`` that notes
softmax calls, and hooks on the softmax modules, for that one pass; :mod:`._probe` notes it
too), and when one is found that pass is run again without it. From then on a forward hook on
the module (or, for a functional call, a ``TorchFunctionMode`` installed only for such
models) hands on the softmax's input instead of its result. ``select=`` picks one output of a model that returns
a tuple or dict (index or key); an ``output=`` value other than the two words is taken as
``select=`` with a DeprecationWarning.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache

from convscope._outputs import OUTPUTS, output_options as _output_options

__all__ = ["OUTPUTS", "output_options", "FinalSoftmax", "softmax_functions", "strip_softmax", "detect_softmax"]


def output_options(output, select):
    """(output, select) from ``load``'s options (:func:`convscope._outputs.output_options`)."""
    return _output_options(output, select)[:2]


@dataclass(frozen=True)
class FinalSoftmax:
    """A final softmax found by the probe: ``module`` (its path) and ``call`` (which call of
    it), or, for a functional one, ``function`` and ``call``, the how-manyth softmax call of
    the pass it is."""

    call: int
    module: str = ""
    function: str = ""

    def describe(self) -> str:
        what = f"the final {self.function} {self.module!r}" if self.module else \
            f"the final {self.function} call of the model's forward"
        return (f"{what} is left out: methods explain the scores before it; "
                "load(model, output='probabilities') keeps it")


@lru_cache(maxsize=None)
def softmax_functions(torch) -> dict:
    """``{function: its name}`` for every way of calling a softmax or log-softmax."""
    F = torch.nn.functional
    pairs = [(F.softmax, "softmax"), (F.log_softmax, "log_softmax"), (torch.softmax, "softmax"),
             (torch.log_softmax, "log_softmax"), (torch.Tensor.softmax, "softmax"),
             (torch.Tensor.log_softmax, "log_softmax"), (torch.special.softmax, "softmax"),
             (torch.special.log_softmax, "log_softmax")]
    return {f: n for f, n in pairs}


@lru_cache(maxsize=None)
def _mode_class(torch):
    from torch.overrides import TorchFunctionMode

    functions = softmax_functions(torch)

    class NoteSoftmax(TorchFunctionMode):
        """Notes the result of every softmax call, in call order."""

        def __init__(self):
            super().__init__()
            self.results = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            r = func(*args, **(kwargs or {}))
            if func in functions:
                self.results.append((r, functions[func]))
            return r

    class SkipSoftmax(TorchFunctionMode):
        """Counts softmax calls; call number ``call`` returns its input unchanged."""

        def __init__(self, call):
            super().__init__()
            self.call, self.seen = call, 0

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in functions:
                self.seen += 1
                if self.seen == self.call:
                    return args[0]
            return func(*args, **(kwargs or {}))

    return SkipSoftmax, NoteSoftmax


class _Detection:
    """What one pass saw: :meth:`found` tells whether its output is a softmax's result."""

    def __init__(self, mode, modules):
        self.mode, self.modules = mode, modules

    def found(self, out):
        if self.modules and self.modules[-1][3] is out:
            name, call, cls, _ = self.modules[-1]
            return FinalSoftmax(call=call, module=name, function=cls)
        k = next((i for i, (r, _) in enumerate(self.mode.results) if r is out), None)
        return None if k is None else FinalSoftmax(call=k + 1, function=self.mode.results[k][1])


@contextmanager
def detect_softmax(torch, modules):
    """For one pass: yields a :class:`_Detection` (softmax calls noted, and the calls of the
    softmax modules among ``modules``, path -> module)."""
    seen, handles, calls = [], [], {}

    def make_hook(name):
        def hook(module, inputs, out):
            calls[name] = calls.get(name, 0) + 1
            seen.append((name, calls[name], type(module).__name__, out))
        return hook

    mode = _mode_class(torch)[1]()
    try:
        for name, m in modules.items():
            if isinstance(m, (torch.nn.Softmax, torch.nn.LogSoftmax)):
                handles.append(m.register_forward_hook(make_hook(name)))
        with mode:
            yield _Detection(mode, seen)
    finally:
        for h in handles:
            h.remove()


@contextmanager
def strip_softmax(torch, modules, head: FinalSoftmax):
    """Within the context a pass of the model returns the input of its final softmax."""
    if head.module:
        calls = [0]

        def hook(module, inputs, out):
            calls[0] += 1
            return inputs[0] if calls[0] == head.call else None

        handle = modules[head.module].register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()
    else:
        with _mode_class(torch)[0](head.call):
            yield
