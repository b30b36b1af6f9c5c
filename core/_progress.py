"""The one progress bar every long loop uses (scans, optimisation loops, texture synthesis).

``progress``: ``True`` a tqdm bar (needs tqdm, from the ``features`` extra), ``False`` none,
``None`` (the default everywhere) a bar when tqdm is installed and stderr is a terminal.
Without a bar a silent stand-in takes the same calls, so loops never test for one.
"""
from __future__ import annotations

import sys

__all__ = ["progress_bar"]


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

    The bar clears its line when it closes, so nothing printed after it shares the line."""
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
