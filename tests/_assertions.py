"""Assertions shared by the tests."""
import numpy as np


def assert_close(got, want, rtol=1e-4, *, min_scale=0.0):
    """max |got - want| <= rtol * max |want| (one scale for the whole array); ``min_scale``: the
    reference's largest magnitude must exceed it (a tiny reference would make the check vacuous)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    if min_scale:
        assert np.abs(want).max() > min_scale, np.abs(want).max()
    scale = max(np.abs(want).max(), 1e-12)
    assert np.abs(got - want).max() / scale < rtol, np.abs(got - want).max() / scale


class batch_sizes:
    """``with batch_sizes(backend, "_forward") as sizes:`` records the number of images of every
    call the backend's framework method gets (patched on the instance, restored on exit)."""

    def __init__(self, backend, method: str):
        self.backend, self.method, self.sizes = backend, method, []

    def __enter__(self):
        real = getattr(self.backend, self.method)

        def counting(images, *args, **kwargs):
            self.sizes.append(len(images))
            return real(images, *args, **kwargs)

        setattr(self.backend, self.method, counting)
        return self.sizes

    def __exit__(self, *exc):
        delattr(self.backend, self.method)
