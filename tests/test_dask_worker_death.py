"""A Dask worker killed in the middle of a scan: its shard runs again on another worker and the
result equals the one-process scan (never a silently partial result, never a hang)."""
import os
import signal
import sys

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")
cloudpickle = pytest.importorskip("cloudpickle")

from convscope._scan import Sum, scan  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


class DiesOnce:
    """A scan step that kills its worker process the first time it sees image ``victim``."""

    def __init__(self, flag, victim):
        self.flag, self.victim = flag, victim

    def __call__(self, batch):
        if self.victim in batch.indices and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os._exit(1)  # the worker process dies, as when it is killed
        return {"n": len(batch), "total": batch.images.astype(np.float64).sum(axis=(1, 2, 3))}


def _hung(signum, frame):
    raise TimeoutError("the scan waited for a dead worker's shard for 60 s")


def test_a_killed_worker_shard_runs_again(tmp_path):
    signal.signal(signal.SIGALRM, _hung)
    signal.alarm(60)  # a shard pinned to its dead worker would wait for ever
    try:
        _scan_with_a_death(tmp_path)
    finally:
        signal.alarm(0)


def _scan_with_a_death(tmp_path):
    images = np.random.default_rng(0).random((24, 1, 4, 4), dtype=np.float32)
    want = scan(images, DiesOnce(str(tmp_path / "unused"), victim=-1), Sum, batch_size=4, progress=False)
    step = DiesOnce(str(tmp_path / "died"), victim=20)  # in the second worker's shard
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as cluster, distributed.Client(cluster) as client:
        got = scan(images, step, Sum, batch_size=4, client=client, progress=False)
    assert os.path.exists(tmp_path / "died")  # a worker did die
    assert got.totals["n"] == want.totals["n"] == 24
    np.testing.assert_allclose(got.totals["total"], want.totals["total"])


class DyingConcepts:
    """A concept source whose worker process dies the first time it reads image ``victim``."""

    def __init__(self, source, flag, victim):
        self.source, self.flag, self.victim = source, flag, victim
        self.concepts, self.categories, self.n = source.concepts, source.categories, source.n

    def batches(self, batch_size=64, start=0, stop=None):
        for i, batch in enumerate(self.source.batches(batch_size, start, stop)):
            if start + i * batch_size <= self.victim < start + (i + 1) * batch_size and not os.path.exists(self.flag):
                open(self.flag, "w").close()
                os._exit(1)
            yield batch


def test_a_killed_worker_in_a_dissection_is_reported_not_waited_for(tmp_path):
    pytest.importorskip("onnxruntime")
    import convscope
    from convscope.data import demo_path, shapes
    from convscope.dissection import concept_source

    concepts = DyingConcepts(concept_source(shapes(16, seed=2)), str(tmp_path / "died"), victim=12)
    signal.signal(signal.SIGALRM, _hung)
    signal.alarm(90)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      silence_logs=50) as cluster, distributed.Client(cluster) as client:
            with pytest.raises(RuntimeError, match=r"dissect: the Dask worker .* left the cluster while it held a shard"):
                convscope.dissection.dissect(str(demo_path("onnx")), "relu4", concepts, batch_size=4, client=client,
                                             progress=False, skip_empty=True, cache_dir=tmp_path / "cache")
    finally:
        signal.alarm(0)
    assert os.path.exists(tmp_path / "died")
