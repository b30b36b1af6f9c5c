"""Assertions shared by the tests."""
import numpy as np


def assert_close(got, want, rtol=1e-4):
    """max |got - want| <= rtol * max |want| (one scale for the whole array)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    scale = max(np.abs(want).max(), 1e-12)
    assert np.abs(got - want).max() / scale < rtol, np.abs(got - want).max() / scale
