"""A scan that stops half-way (an exception from the data, Ctrl-C) leaves no cache file behind,
and the next scan gives the result of an uninterrupted one."""
import os

import numpy as np
import pytest

import convscope
from convscope.data import demo_path, shapes

pytest.importorskip("onnxruntime")


class Breaking:
    """A concept source that raises ``error`` after ``after`` batches."""

    def __init__(self, source, error, after=2):
        self.source, self.error, self.after = source, error, after
        self.concepts, self.categories, self.n = source.concepts, source.categories, source.n

    def batches(self, batch_size=64, start=0, stop=None):
        for i, batch in enumerate(self.source.batches(batch_size, start, stop)):
            if i == self.after:
                raise self.error
            yield batch


@pytest.fixture(scope="module")
def backend():
    return convscope.load(str(demo_path("onnx")))


@pytest.mark.parametrize("error", [RuntimeError("the disk went away"), KeyboardInterrupt()])
@pytest.mark.parametrize("cache_ram_mb", [0, 256])  # the activation cache on disk, and in memory
def test_an_interrupted_dissection_leaves_no_files(backend, tmp_path, error, cache_ram_mb):
    from convscope.dissection import concept_source

    data = shapes(12, seed=3)
    broken = Breaking(concept_source(data), error)
    with pytest.raises(type(error)):
        convscope.dissection.dissect(backend, "relu4", broken, batch_size=4, progress=False, cache_dir=tmp_path,
                                     cache_ram_mb=cache_ram_mb, skip_empty=True)
    assert os.listdir(tmp_path) == []
    again = convscope.dissection.dissect(backend, "relu4", data, batch_size=4, progress=False, cache_dir=tmp_path,
                                         cache_ram_mb=cache_ram_mb, skip_empty=True)
    fresh = convscope.dissection.dissect(backend, "relu4", data, batch_size=4, progress=False, skip_empty=True)
    np.testing.assert_array_equal(again.iou, fresh.iou)
    assert os.listdir(tmp_path) == []


def test_an_interrupted_top_patches_scan_raises_and_the_next_one_is_whole(backend):
    data = shapes(12, seed=4).images

    def batches():
        yield data[:4]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convscope.features.top_patches(backend, batches(), "relu3", [0], k=2, progress=False)
    got = convscope.features.top_patches(backend, data, "relu3", [0], k=2, progress=False)
    want = backend.activations(data, ["relu3"])["relu3"][:, 0].reshape(12, -1).max(axis=1)
    np.testing.assert_allclose(got.values[0], np.sort(want)[::-1][:2], rtol=1e-6)
