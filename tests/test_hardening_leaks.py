"""1,000 repeated calls keep memory and per-call time flat: per backend (torch, ONNX Runtime,
Keras; the demo model, batch 1) and per family (one cheap call each).

Bounds, after 100 warm-up calls (caches, traced functions, sessions, allocator pools):

* resident memory grows by less than 16 MB over the next 900 calls, i.e. under 18 KB a call,
  below the 48 KB of one input image: keeping any input, activation or result per call fails;
* the median time of the last 100 calls is at most twice the median of calls 100-200 (a
  cache or list that grows with each call makes later calls slower).
"""
import gc
import os
import tempfile

import numpy as np
import pytest

import convscope

CALLS, WARMUP = 1000, 100
RSS_GROWTH_MB = 16.0


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_flat(call, calls=CALLS, warmup=WARMUP):
    """Call ``calls`` times; return the RSS growth after warm-up in MB. (No timing: a timed
    assertion fails on a loaded machine; what makes calls slower over time, a growing cache
    or retracing, shows in memory and in the backends' own counters.)"""
    for i in range(calls):
        if i == warmup:
            gc.collect()
            base = rss_mb()
        call()
    gc.collect()
    return rss_mb() - base


def check(call, what, calls=CALLS):
    growth = run_flat(call, calls)
    assert growth < RSS_GROWTH_MB, f"{what}: resident memory grew {growth:.1f} MB over {calls - WARMUP} calls"


@pytest.fixture(autouse=True)
def linux_only():
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("reads resident memory from /proc")


@pytest.fixture
def one_torch_thread():
    """One torch thread: its two spinning OpenMP threads slow 50-fold when another process
    holds a core of a two-core machine. Restored after the test."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


X = convscope.data.shapes(1, seed=4).images
SEEDS = np.eye(4, dtype=np.float32)[[2]]


@pytest.mark.parametrize("framework, module", [
    pytest.param("torch", "torch", marks=pytest.mark.backend("torch")),
    pytest.param("onnx", "onnxruntime", marks=pytest.mark.backend("onnxruntime")),
    pytest.param("keras", "tensorflow", marks=pytest.mark.backend("tensorflow")),
])
def test_a_thousand_backend_calls_stay_flat(framework, module, request):
    pytest.importorskip(module)
    if framework == "torch":
        request.getfixturevalue("one_torch_thread")
    backend = convscope.load(convscope.data.demo_model(framework))
    calls = [lambda: backend.forward(X),
             lambda: backend.gradient(X, {"output": SEEDS}, wrt=["input", "relu3"], rule="guided"),
             lambda: backend.gradient(X, lambda acts: {"relu4": acts["relu4"]}, at=["relu4"])]
    step = iter(range(10**9))
    check(lambda: calls[next(step) % 3](), f"{framework} backend")


@pytest.fixture(scope="module")
def onnx_demo():
    pytest.importorskip("onnxruntime")
    return convscope.load(convscope.data.demo_model("onnx"))


FRAMEWORKS = [pytest.param("torch", marks=pytest.mark.backend("torch")),
              pytest.param("onnx", marks=pytest.mark.backend("onnxruntime")),
              pytest.param("keras", marks=pytest.mark.backend("tensorflow"))]


@pytest.fixture(scope="module", params=FRAMEWORKS)
def any_demo(request):
    pytest.importorskip({"torch": "torch", "onnx": "onnxruntime", "keras": "tensorflow"}[request.param])
    if request.param == "torch":
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
        yield request.param, convscope.load(convscope.data.demo_model("torch"))
        torch.set_num_threads(before)
        return
    yield request.param, convscope.load(str(convscope.data.demo_path(request.param)))


def _family_calls(backend):
    from convscope import attribution, dissection, features, metrics, render, synthesis

    maps = np.random.default_rng(0).random((1, 64, 64), dtype=np.float32)
    masks = convscope.data.shapes(1, seed=4).object_masks
    return {
        "attribution": lambda: attribution.saliency(backend, X),
        "features": lambda: features.activation_maps(backend, X, "relu2", channels=[0, 3]),
        "synthesis": lambda: synthesis.visualize(backend, synthesis.channel("relu3", 1), steps=1, size=64,
                                                 progress=False),
        "dissection": lambda: dissection.segmentation_iou(dissection.segment(maps), masks),
        "metrics": lambda: metrics.deletion(backend, X, maps, steps=2),
        "render": lambda: render.png_bytes(render.overlay(X[0], render.normalize(maps)[0])),
    }


@pytest.mark.parametrize("family", ["attribution", "features", "synthesis", "dissection", "metrics", "render"])
def test_a_thousand_calls_per_family_stay_flat(family, any_demo):
    framework, backend = any_demo
    check(_family_calls(backend)[family], f"{family} on {framework}")


@pytest.mark.parametrize("framework", [p for p in FRAMEWORKS if p.values[0] != "torch"])
def test_a_thousand_calls_given_the_file_path_stay_flat(framework):
    """Each call loads the file anew through the memoised load(): no backend, session or trace
    piles up."""
    pytest.importorskip({"onnx": "onnxruntime", "keras": "tensorflow"}[framework])
    path = str(convscope.data.demo_path(framework))
    check(lambda: convscope.saliency(path, X), f"saliency given the {framework} file's path")


@pytest.mark.backend("onnxruntime")
def test_repeated_dissections_leave_no_files_and_stay_flat(onnx_demo):
    data = convscope.data.shapes(4, seed=1)
    with tempfile.TemporaryDirectory() as cache:
        def call():
            convscope.dissection.dissect(onnx_demo, "relu4", data, batch_size=2, progress=False, cache_dir=cache,
                                         skip_empty=True)
            assert not os.listdir(cache)  # each run removes its activation cache
        growth = run_flat(call, calls=60, warmup=10)
    assert growth < RSS_GROWTH_MB
