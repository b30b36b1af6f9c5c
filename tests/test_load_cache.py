"""load() memoised: files by (path, mtime, size, options), in-memory models weakly by identity."""
import gc
import importlib.util
import os
import shutil
import weakref

import numpy as np
import pytest

import convscope
from convscope import _plugins
from convscope.data import demo_model, demo_path


def needs(module):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")


@pytest.fixture
def onnx_copy(tmp_path):
    needs("onnxruntime")
    path = tmp_path / "demo.onnx"
    shutil.copyfile(demo_path("onnx"), path)
    return path


def test_same_file_and_options_give_the_same_backend(onnx_copy):
    first = convscope.load(str(onnx_copy))
    assert convscope.load(str(onnx_copy)) is first
    assert convscope.load(onnx_copy) is first  # a Path and its str are one file
    assert convscope.load(os.path.join(str(onnx_copy.parent), ".", onnx_copy.name)) is first
    assert convscope.load(str(onnx_copy), threads=1) is not first
    assert convscope.load(str(onnx_copy), threads=1) is convscope.load(str(onnx_copy), threads=1)
    assert convscope.load(str(onnx_copy), input_shape=[3, 64, 64]) is convscope.load(str(onnx_copy),
                                                                                     input_shape=[3, 64, 64])


def test_a_rewritten_file_is_read_again(onnx_copy):
    first = convscope.load(str(onnx_copy))
    st = os.stat(onnx_copy)
    os.utime(onnx_copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = convscope.load(str(onnx_copy))
    assert second is not first and convscope.load(str(onnx_copy)) is second
    x = convscope.data.shapes(1, seed=0).images
    np.testing.assert_array_equal(first.forward(x), second.forward(x))


def test_the_file_cache_is_bounded(tmp_path):
    needs("onnxruntime")
    paths = []
    for i in range(_plugins.FILE_CACHE_SIZE + 2):
        paths.append(tmp_path / f"m{i}.onnx")
        shutil.copyfile(demo_path("onnx"), paths[-1])
    backends = [convscope.load(str(p)) for p in paths]
    assert len(_plugins._files) <= _plugins.FILE_CACHE_SIZE
    assert convscope.load(str(paths[-1])) is backends[-1]
    assert convscope.load(str(paths[0])) is not backends[0]  # the least recently used went first


def test_options_count_by_content_and_unhashable_ones_are_not_cached(onnx_copy):
    a = convscope.load(str(onnx_copy), input_shape=(3, 64, 64))
    assert _plugins._frozen({"input_shape": [3, 64, 64]}) != _plugins._frozen({"input_shape": (3, 64, 64)})
    with pytest.raises(TypeError):
        _plugins._frozen({"x": {1, 2}})  # a set: unhashable content, so that call is built afresh
    assert a is convscope.load(str(onnx_copy), input_shape=(3, 64, 64))


def test_a_backend_is_returned_unchanged(onnx_copy):
    backend = convscope.load(str(onnx_copy))
    assert convscope.load(backend) is backend


def test_register_backend_clears_the_cache(onnx_copy):
    first = convscope.load(str(onnx_copy))

    class Nobody:
        @convscope.hookspecs.hookimpl
        def convscope_make_backend(self, model, options):
            return None

    plugin = Nobody()
    convscope.register_backend(plugin)
    try:
        assert convscope.load(str(onnx_copy)) is not first
    finally:
        _plugins.unregister_backend(plugin)


def test_torch_module_shares_its_caches_and_frees_them_with_the_module():
    needs("torch")
    model = demo_model("torch")
    a = convscope.load(model)
    x = convscope.data.shapes(2, seed=0).images
    a.gradient(x, {"relu2": np.ones((2, 32, 32, 32), np.float32)})  # probes for the seed's shape
    b = convscope.load(model)
    assert b._layers is a._layers and b._lock is a._lock and b._shape_cache is a._shape_cache
    assert convscope.load(model, input_shape=(3, 32, 32))._layers is not a._layers
    entries = len(_plugins._models)
    ref = weakref.ref(model)
    del model, a, b
    gc.collect()
    assert ref() is None and len(_plugins._models) == entries - 1  # the module and its records are gone


def test_keras_model_shares_its_traced_functions_and_frees_them_with_the_model():
    needs("tensorflow")
    model = demo_model("keras")
    a = convscope.load(model)
    x = convscope.data.shapes(2, seed=0).images
    want = a.gradient(x, {"output": np.ones((2, 4), np.float32)}, rule="guided")["input"]
    b = convscope.load(model)
    assert b._functions is a._functions and b._traces == 0
    np.testing.assert_array_equal(b.gradient(x, {"output": np.ones((2, 4), np.float32)}, rule="guided")["input"], want)
    assert b._traces == 0  # traced once, by the first backend
    refs = weakref.ref(model), weakref.ref(a._functions)
    del model, a, b
    gc.collect()
    assert refs[0]() is None and refs[1]() is None


def test_keras_file_is_loaded_once():
    needs("tensorflow")
    path = str(demo_path("keras"))
    assert convscope.load(path) is convscope.load(path)
