"""BackendBase: one behaviour, one message, for every edge case, on every built-in backend.

Each case runs against the torch, ONNX Runtime and Keras demo models (the same weights);
a backend whose framework is missing is skipped. The trusted path, ``unchecked``, is
checked to skip the checks and give the same numbers.
"""
import importlib.util
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import convscope
import convscope._renamed
import convscope.backend as backend_module
from convscope.backend import BackendBase, unchecked
from convscope.data import demo_model, demo_path

FRAMEWORKS = {"torch": "torch", "onnx": "onnxruntime", "keras": "tensorflow"}


def _load(name):
    if importlib.util.find_spec(FRAMEWORKS[name]) is None:
        pytest.skip(f"{FRAMEWORKS[name]} is not installed")
    return convscope.load(demo_model("torch") if name == "torch" else str(demo_path(name)))


@pytest.fixture(scope="module", params=[pytest.param(n, marks=pytest.mark.backend(FRAMEWORKS[n])) for n in FRAMEWORKS])
def backend(request):
    return _load(request.param)


X = convscope.data.shapes(2, seed=3).images
OUT = np.ones((2, 4), np.float32)


def template(param, expected):
    return rf"The '{param}' parameter of \w+ must be {expected}"


def test_every_builtin_backend_is_a_backend_base(backend):
    assert isinstance(backend, BackendBase) and isinstance(backend, convscope.Backend)


@pytest.mark.parametrize("call, error, match", [
    (lambda b: b.gradient(X, {}), ValueError,
     r"The 'seeds' parameter of gradient must be a mapping with at least one seed\. Got an empty mapping instead\."),
    (lambda b: b.gradient(X, [OUT]), TypeError,
     r"The 'seeds' parameter of gradient must be a mapping \{name: array\} or a callable returning one\. Got "),
    (lambda b: b.gradient(X, OUT), TypeError, r"'seeds' parameter of gradient must be a mapping .* Got an array of shape"),
    (lambda b: b.gradient(X, {"output": OUT[:, :2]}), ValueError,
     r"The 'seeds' parameter of gradient must be shaped like 'output', \(2, 4\)\. Got shape \(2, 2\) instead\."),
    (lambda b: b.gradient(X, {"relu2": np.ones((2, 32, 32), np.float32)}), ValueError,
     r"must be shaped like 'relu2', \(2, 32, 32, 32\)\. Got shape \(2, 32, 32\)"),
    (lambda b: b.gradient(X, {"relu9": OUT}), ValueError,
     r"The 'seeds' parameter of gradient must be a known layer name\. Got 'relu9' instead; closest: relu"),
    (lambda b: b.gradient(X, {"relu2": OUT}, at=["output"]), ValueError,
     r"The 'seeds' parameter of gradient names 'relu2', which is not in at=\['output'\]\."),
    (lambda b: b.gradient(X, {"output": OUT}, wrt=["relu9"]), ValueError,
     r"The 'wrt' parameter of gradient must be a known layer name\. Got 'relu9' instead; closest: relu"),
    (lambda b: b.gradient(X, {"output": OUT}, at=["output", "conv9"]), ValueError,
     r"The 'at' parameter of gradient must be a known layer name\. Got 'conv9' instead; closest: conv"),
    (lambda b: b.activations(X, ["pool9"]), ValueError,
     r"The 'layers' parameter of activations must be a known layer name\. Got 'pool9' instead; closest: pool"),
    (lambda b: b.activations(X, [3]), TypeError, r"The 'layers' parameter of activations must be a layer name \(str\)"),
    (lambda b: b.gradient(X, {"output": OUT}, rule="sideways"), ValueError,
     r"The 'rule' parameter of gradient must be one of 'standard', 'guided', 'deconvnet'\. Got 'sideways' instead\."),
    (lambda b: b.gradient(X, {"output": np.full((2, 4), np.nan, np.float32)}), ValueError,
     r"The 'seeds' parameter of gradient must be finite \(no NaN or Inf\)\. Got 8 non-finite values at 'output'"),
    (lambda b: b.gradient(X, {"output": np.array([["a"] * 4] * 2)}), TypeError,
     r"The 'seeds' parameter of gradient must be an array for 'output'"),
    (lambda b: b.gradient(X, lambda acts: {"output": OUT}, at=[]), ValueError,
     r"The 'at' parameter of gradient must be at least one tensor name when seeds is a callable\. Got \[\] instead\."),
    # a callable's result is checked as a mapping is
    (lambda b: b.gradient(X, lambda acts: [OUT]), TypeError,
     r"must be a mapping \{name: array\} or a callable returning one\. Got a seeds callable returning \[array"),
    (lambda b: b.gradient(X, lambda acts: {}), ValueError,
     r"must be a mapping with at least one seed\. Got a seeds callable returning an empty mapping instead\."),
    (lambda b: b.gradient(X, lambda acts: {"output": OUT[:1]}), ValueError,
     r"The 'seeds' parameter of gradient must be shaped like 'output', \(2, 4\)\. Got shape \(1, 4\) instead\."),
    (lambda b: b.gradient(X, lambda acts: {"relu2": acts["relu3"]}, at=["relu3"]), ValueError,
     r"names 'relu2', which is not in at=\['relu3'\]"),
    (lambda b: b.gradient(X, lambda acts: {"relu3": acts["relu3"] + np.inf}, at=["relu3"]), ValueError,
     r"must be finite \(no NaN or Inf\)\. Got \d+ non-finite values at 'relu3'"),
    # images
    (lambda b: b.forward(X[:, :1]), ValueError,
     r"The 'x' parameter of forward must be an array with 3 channels on axis 1\. Got shape \(2, 1, 64, 64\)"),
    (lambda b: b.activations(X.transpose(0, 2, 3, 1), ["relu2"]), ValueError, r"3 channels on axis 1 \(channels last\?"),
    (lambda b: b.gradient(np.where(X > 0.5, np.nan, X), {"output": OUT}), ValueError,
     r"The 'x' parameter of gradient must be finite \(no NaN or Inf\)\. Got \d+ non-finite values instead\."),
    (lambda b: b.forward(X[:0]), ValueError,
     r"The 'x' parameter of forward must be a non-empty batch\. Got shape \(0, 3, 64, 64\) instead\."),
    (lambda b: b.forward(X[0]), ValueError, r"The 'x' parameter of forward must be a 4-d array \(N, C, H, W\)"),
    (lambda b: b.forward((X * 255).astype(np.uint8)), TypeError, r"'x' parameter of forward must be a floating-point"),
], ids=["empty-seeds", "list-seeds", "array-seeds", "output-seed-shape", "layer-seed-shape", "unknown-seed",
        "seed-not-in-at", "unknown-wrt", "unknown-at", "unknown-layer", "non-str-layer", "unknown-rule", "nan-seed",
        "text-seed", "callable-empty-at", "callable-list", "callable-empty", "callable-shape", "callable-not-in-at",
        "callable-inf", "channels", "channels-last", "nan-input", "empty-batch", "rank", "uint8"])
def test_one_behaviour_and_message_per_edge_case(backend, call, error, match):
    with pytest.raises(error, match=match):
        call(backend)


def test_at_defaults_to_the_seed_names_or_the_output(backend):
    seed = np.random.default_rng(0).standard_normal((2, 32, 32, 32)).astype(np.float32)
    g = backend.gradient(X, {"relu2": seed})
    assert set(g.activations) >= {"relu2"} and g["input"].shape == X.shape
    seen = {}
    backend.gradient(X, lambda acts: seen.update(acts) or {"output": OUT})
    assert list(seen) == ["output"]
    one = backend.activations(X, "relu2")  # one name as a str
    assert list(one) == ["relu2"] and one["relu2"].shape == (2, 32, 32, 32)


def test_relu_is_a_deprecated_alias_of_rule(backend, monkeypatch):
    monkeypatch.setattr(convscope._renamed, "_warned", set())  # deprecations warn once per process
    with pytest.warns(DeprecationWarning, match=r"relu=\.\.\.\) is deprecated; pass rule="):
        old = backend.gradient(X, {"output": OUT}, relu="guided")["input"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process, and never for rule=
        backend.gradient(X, {"output": OUT}, relu="guided")
        new = backend.gradient(X, {"output": OUT}, rule="guided")["input"]
    np.testing.assert_array_equal(old, new)
    with pytest.raises(ValueError, match=r"The 'relu' parameter of gradient must be one of"):
        backend.gradient(X, {"output": OUT}, relu="Guided")  # the message names what the caller wrote
    with pytest.raises(TypeError, match=r"got rule='guided' and its deprecated alias relu='deconvnet'"):
        backend.gradient(X, {"output": OUT}, rule="guided", relu="deconvnet")


def test_unchecked_skips_the_checks_and_gives_the_same_numbers(backend, monkeypatch):
    x = np.ascontiguousarray(X)
    want_f = backend.forward(x)
    want_a = backend.activations(x, ["relu2", "output"])
    want_g = backend.gradient(x, {"output": OUT}, wrt=["input", "relu3"], rule="guided")
    want_c = backend.gradient(x, lambda acts: {"relu3": acts["relu3"]}, at=["relu3"])

    def refuse(*args, **kwargs):
        raise AssertionError("the trusted path checked its images")

    monkeypatch.setattr(backend_module, "as_images", refuse)
    monkeypatch.setattr(type(backend), "_seed_map", refuse)
    trusted = unchecked(backend)
    assert unchecked(trusted) is trusted and trusted.name == backend.name and trusted.layers() == backend.layers()
    np.testing.assert_array_equal(trusted.forward(x), want_f)
    got = trusted.activations(x, ["relu2", "output"])
    for name in want_a:
        np.testing.assert_array_equal(got[name], want_a[name])
    g = trusted.gradient(x, {"output": OUT}, wrt=["input", "relu3"], rule="guided")
    for name in ("input", "relu3"):
        np.testing.assert_allclose(g[name], want_g[name], rtol=1e-6, atol=1e-7)
    c = trusted.gradient(x, lambda acts: {"relu3": acts["relu3"]}, at=["relu3"])
    np.testing.assert_allclose(c["input"], want_c["input"], rtol=1e-6, atol=1e-7)
    with pytest.raises(AssertionError, match="checked its images"):
        backend.forward(x)  # the public call does check


def test_unchecked_returns_a_bare_protocol_backend_itself():
    from test_plugins import LinearBackend

    bare = LinearBackend(np.eye(3))
    assert unchecked(bare) is bare


# --------------------------------------------------------------------------- the documented example
def _doc_example() -> dict:
    text = (Path(__file__).parents[1] / "docs" / "writing-a-backend.md").read_text()
    blocks = re.findall(r"```python\n(# numpy_backend\.py.*?)```", text, re.S)
    assert len(blocks) == 1, "docs/writing-a-backend.md lost its numpy_backend.py example"
    namespace = {"__name__": "numpy_backend"}
    exec(compile(blocks[0], "numpy_backend.py", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


def test_the_documented_numpy_backend_registers_and_passes_check_backend():
    from convscope.testing import check_backend

    example = _doc_example()
    plugin = example["NumpyPlugin"]()
    name = convscope.register_backend(plugin, name="numpy-doc")
    try:
        assert name == "numpy-doc" and "numpy-doc" in convscope.installed_backends()
        rng = np.random.default_rng(0)
        model = example["NumpyModel"](rng.standard_normal((6, 3)), rng.standard_normal((4, 6)))
        backend = convscope.load(model)
        assert isinstance(backend, BackendBase) and convscope.load(model) is not None
        x = rng.random((3, 3, 8, 8), dtype=np.float32) - 0.3
        report = check_backend(backend, x)
        assert report["relu_rule_sites"] == 1
        with pytest.raises(ValueError, match=r"'seeds' parameter of gradient must be a mapping with at least one"):
            backend.gradient(x, {})  # the base's checks, not written by the example
        maps = convscope.saliency(backend, x)  # and a convscope method runs on it
        assert maps.maps.shape == (3, 8, 8)
    finally:
        convscope._plugins.unregister_backend(plugin)
    assert "numpy-doc" not in convscope.installed_backends()


def test_register_backend_refuses_what_is_not_a_plugin():
    with pytest.raises(TypeError, match=r"The 'plugin' parameter of register_backend must be a module or object "
                                        r"with a convscope_make_backend hookimpl\. Got int instead\."):
        convscope.register_backend(3)


def test_public_validators_are_the_implementation():
    from convscope import _validate, validate

    for name in validate.__all__:
        assert getattr(validate, name) is getattr(_validate, name)
    with pytest.raises(ValueError, match=r"The 'k' parameter of f must be >= 1\. Got 0 instead\."):
        validate.check_int(0, "k", "f", low=1)
