"""Old argument spellings that still work: one decorator, one warning per old name.

The vocabulary is one name per meaning (docs/conventions.md): ``rule`` for a backward rule,
``clip`` for a CAM's final ReLU, ``x`` for images, ``seed`` for randomness. A function that
was published with another spelling keeps accepting it through :func:`renamed`, which maps
it to the new name and warns once per (function, old name) with a DeprecationWarning.
"""
from __future__ import annotations

import functools
import warnings

__all__ = ["renamed"]

_warned: set = set()


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
                if (fn.__qualname__, old) not in _warned:
                    _warned.add((fn.__qualname__, old))
                    warnings.warn(f"{fn.__name__}(): the argument {old!r} is now called {name!r}; "
                                  f"the old name will be removed.", DeprecationWarning, stacklevel=2)
            return fn(*args, **kwargs)
        return wrapper
    return decorate
