"""Old argument spellings that still work: one decorator, one warning per old name.

The vocabulary is one name per meaning (docs/conventions.md): ``rule`` for a backward rule,
``clip`` for a CAM's final ReLU, ``x`` for images, ``seed`` for randomness. A function that
was published with another spelling keeps accepting it through :func:`renamed`, which maps
it to the new name and warns once per (function, old name) with a DeprecationWarning.
"""
from __future__ import annotations

import functools
import sys
import warnings

__all__ = ["renamed", "warn_once"]

_warned: set = set()


def warn_once(key, message: str) -> None:
    """A DeprecationWarning, once per process and ``key``, at the user's call (the first frame
    outside convscope and pluggy)."""
    if key in _warned:
        return
    _warned.add(key)
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("convscope", "pluggy"):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, DeprecationWarning, stacklevel=level)


def renamed(**old_to_new):
    """``@renamed(relu="clip")``: ``f(relu=False)`` calls ``f(clip=False)``, warning once.

    A value may be a ``(new_name, convert)`` pair when the meaning changed shape
    (``guided=True`` -> ``rule="guided"``). Passing both spellings is a TypeError."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in old_to_new.items():
                if old not in kwargs:
                    continue
                name, convert = new if isinstance(new, tuple) else (new, None)
                if name in kwargs:
                    raise TypeError(f"{fn.__name__}() got both {old!r} and its new name {name!r}; pass only {name!r}.")
                value = kwargs.pop(old)
                kwargs[name] = convert(value) if convert else value
                warn_once((fn.__qualname__, old), f"{fn.__name__}(): the argument {old!r} is now called {name!r}; "
                                                  "the old name will be removed.")
            return fn(*args, **kwargs)
        return wrapper
    return decorate
