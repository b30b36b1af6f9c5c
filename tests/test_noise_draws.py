"""convscope._noise.gaussian: the Box-Muller draws equal their definition written out in float64
(tests/_box_muller.py), are standard normal (Kolmogorov-Smirnov against scipy's normal CDF), and
depend on the seed alone."""
import numpy as np
import pytest

from convscope._noise import gaussian
from _box_muller import box_muller


@pytest.mark.parametrize("shape", [(1,), (7,), (2, 3, 5, 5), (4, 3, 16, 17)])
def test_draws_equal_the_written_out_transform(shape):
    got = gaussian([3, 1], shape)
    assert got.dtype == np.float32 and got.shape == shape
    np.testing.assert_allclose(got, box_muller([3, 1], shape), rtol=2e-5, atol=2e-6)


def test_draws_are_standard_normal():
    stats = pytest.importorskip("scipy.stats")
    z = gaussian([0, 0], (200_001,)).astype(np.float64)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01
    halves = z[:100_001], z[100_001:]  # the cosine and the sine halves are independent normals
    assert abs(np.corrcoef(halves[0][:100_000], halves[1])[0, 1]) < 0.01


def test_out_is_filled_and_the_seed_alone_decides():
    out = np.full((2, 3, 4, 4), np.nan, np.float32)
    assert gaussian([5, 2], out.shape, out=out) is out
    np.testing.assert_array_equal(out, gaussian([5, 2], out.shape))
    assert np.isfinite(out).all()
    assert not np.array_equal(gaussian([5, 2], out.shape), gaussian([5, 3], out.shape))
