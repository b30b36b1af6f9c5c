"""The one progress bar every long loop uses (scans, optimisation loops, texture synthesis).

``progress``: ``True`` a tqdm bar (needs tqdm, from the ``features`` extra), ``False`` none,
``None`` (the default everywhere) a bar when tqdm is installed and stderr is a terminal.
Without a bar a silent stand-in takes the same calls, so loops never test for one.
"""
from __future__ import annotations

import contextlib
import contextvars
import sys

__all__ = ["progress_bar", "observed"]

#: a callable ``(done, total, desc)`` told of every step of every bar in this context
#: (the explorer server's job progress); it may raise to stop the loop (a cancelled job)
_observer = contextvars.ContextVar("convscope_progress_observer", default=None)


@contextlib.contextmanager
def observed(callback):
    """Tell ``callback(done, total, desc)`` of each step of the loops run inside this block."""
    token = _observer.set(callback)
    try:
        yield
    finally:
        _observer.reset(token)


class _Observed:
    """A bar (or stand-in) whose steps are also told to the context's observer."""

    def __init__(self, bar, callback, total, desc):
        self.bar, self.callback, self.total, self.desc, self.done = bar, callback, total, desc, 0

    def __iter__(self):
        for item in self.bar:
            yield item
            self.done += 1
            self.callback(self.done, self.total, self.desc)

    def update(self, n=1):
        self.bar.update(n)
        self.done += n
        self.callback(self.done, self.total, self.desc)

    def set_postfix(self, *args, **kwargs):
        self.bar.set_postfix(*args, **kwargs)

    def close(self):
        self.bar.close()


class _Silent:
    """What a loop talks to when no bar is shown."""

    def __init__(self, iterable=None):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n=1):
        pass

    def set_postfix(self, *args, **kwargs):
        pass

    def close(self):
        pass


def progress_bar(iterable=None, *, total=None, desc=None, progress=None, unit="it"):
    """A tqdm bar, or a silent stand-in with the same ``update``/``set_postfix``/``close``.

    The bar clears its line when it closes, so nothing printed after it shares the line.
    Inside :func:`observed`, every step is also told to the observer."""
    callback = _observer.get()
    bar = _bar(iterable, total, desc, progress, unit)
    return bar if callback is None else _Observed(bar, callback, total, desc)


def _bar(iterable, total, desc, progress, unit):
    if progress is False or (progress is None and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())):
        return _Silent(iterable)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if progress:
            raise ImportError("Progress bars need tqdm: pip install 'convscope[features]' "
                              "(or pass progress=False)") from None
        return _Silent(iterable)
    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
