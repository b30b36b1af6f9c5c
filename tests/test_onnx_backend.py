"""The ONNX Runtime backend on the shipped demo model: conformance, agreement with the torch
backend, caching, bad input, and a run with torch and TensorFlow blocked from import.
Operators and real-world graphs are in test_onnx_graphs.py."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import convscope  # noqa: E402
from convscope.testing import check_backend  # noqa: E402

import onnx_models as om  # noqa: E402
from onnx_models import images, relative  # noqa: E402

pytestmark = pytest.mark.backend("onnxruntime")

DEMO_LAYERS = ["conv1", "bn1", "relu1", "pool1", "conv2", "relu2", "conv3", "relu3", "pool3", "conv4", "bn4",
               "relu4", "gap", "flatten", "fc"]


# --------------------------------------------------------------------------- shipped demo model
@pytest.fixture(scope="module")
def demo():
    return convscope.load(convscope.data.demo_model("onnx"))


def test_demo_file_ships_and_passes_conformance(demo):
    assert convscope.data.demo_path("onnx").stat().st_size < 1_000_000
    assert demo.name == "onnxruntime"
    report = check_backend(demo, images())
    assert report["relu_rule_sites"] > 0  # check_backend raised had finite differences disagreed
    records = {r.name: r for r in demo.layers()}
    assert [n for n in DEMO_LAYERS if n in records] == DEMO_LAYERS
    assert records["conv2"].shape == (32, 32, 32) and records["conv2"].kernel == (3, 3)
    assert records["conv2"].padding == (1, 1, 1, 1) and records["pool1"].stride == (2, 2)
    assert records["relu1"].inputs == ("bn1",) and records["gap"].kernel == (8, 8)
    assert records["bn1"].op == "BatchNormalization" and records["fc"].kind == "linear"


@pytest.fixture(scope="module")
def torch_demo():
    pytest.importorskip("torch")
    return convscope.load(convscope.data.demo_model("torch"))


def test_demo_activations_and_weights_match_torch(demo, torch_demo):
    x = images()
    got = demo.activations(x, DEMO_LAYERS + ["input", "output"])
    want = torch_demo.activations(x, DEMO_LAYERS + ["input", "output"])
    for name in DEMO_LAYERS + ["output"]:
        assert relative(got[name], want[name]) < 1e-4, name
    np.testing.assert_array_equal(got["input"], x)
    np.testing.assert_array_equal(demo.activations(x, "input")["input"], x)
    for layer in ("conv1", "bn2", "fc"):
        theirs = torch_demo.weights(layer)
        ours = demo.weights(layer)
        for key in ("weight", "bias"):
            np.testing.assert_array_equal(ours[key], theirs[key])


@pytest.mark.parametrize("rule", ["standard", "guided", "deconvnet"])
@pytest.mark.parametrize("seed_at, wrt", [("output", ["input", "conv2", "relu3"]),
                                          ("relu4", ["input", "bn1"]), ("pool2", ["conv2"])])
def test_demo_gradients_match_torch(demo, torch_demo, rule, seed_at, wrt):
    x = images()
    shape = (3, *[r for r in torch_demo.layers() if r.name == seed_at][0].shape) if seed_at != "output" else (3, 4)
    seed = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    got = demo.gradient(x, {seed_at: seed}, wrt=wrt, rule=rule)
    want = torch_demo.gradient(x, {seed_at: seed}, wrt=wrt, rule=rule)
    for name in wrt:
        assert np.abs(want[name]).max() > 0
        assert relative(got[name], want[name]) < 1e-4, name
    assert relative(got.outputs, want.outputs) < 1e-4
    assert relative(got.activations[seed_at], want.activations[seed_at]) < 1e-4


def test_callable_seeds_run_once_and_agree_with_fixed_seeds(demo, torch_demo):
    """Grad-CAM's pattern: seeds computed from the pass's own scores, gradient at a conv layer."""
    x = images()

    def top_class(acts):
        out = acts["output"]
        seed = np.zeros_like(out)
        seed[np.arange(len(out)), out.argmax(1)] = 1
        return {"output": seed}

    got = demo.gradient(x, top_class, at=["output", "conv4"], wrt=["conv4"], rule="guided")
    want = torch_demo.gradient(x, top_class, at=["output", "conv4"], wrt=["conv4"], rule="guided")
    assert relative(got["conv4"], want["conv4"]) < 1e-4
    assert relative(got.activations["conv4"], want.activations["conv4"]) < 1e-4
    fixed = demo.gradient(x, top_class({"output": demo.forward(x)}), wrt=["conv4"], rule="guided")
    np.testing.assert_allclose(got["conv4"], fixed["conv4"], rtol=1e-5, atol=1e-7)


def test_fixed_seeds_cost_one_run_and_callable_seeds_two(demo, monkeypatch):
    calls = []
    original = type(demo._runner)._call

    def counted(self, session, outputs, feeds, shape, ort_values=False):
        calls.append(len(outputs))
        return original(self, session, outputs, feeds, shape, ort_values)

    monkeypatch.setattr(type(demo._runner), "_call", counted)
    x = images(2)
    demo.gradient(x, {"output": np.ones((2, 4), np.float32)}, wrt=["input", "conv2"], rule="guided")
    assert len(calls) == 1
    demo.gradient(x, lambda acts: {"output": acts["output"]}, at=["output"], wrt=["conv3"])
    assert len(calls) == 3  # one forward, one backward


def test_callable_seeds_run_one_forward_and_a_backward_that_recomputes_nothing(monkeypatch):
    """The forward session also returns the residuals the backward nodes read; the backward
    session takes them as inputs and holds no forward node, so the two run exactly the nodes
    of the one-call graph that fixed seeds use, and give the same numbers."""
    backend = convscope.load(convscope.data.demo_model("onnx"))
    built, runs = {}, []
    build_session = backend._sessions.session

    def recording(key, build):
        def build_and_keep():
            made = build()
            built[key[0]] = made[0]
            return made
        return build_session(key, build_and_keep)

    original = type(backend._runner)._call

    def counted(self, session, outputs, feeds, shape, ort_values=False):
        runs.append(set(feeds))
        return original(self, session, outputs, feeds, shape, ort_values)

    monkeypatch.setattr(backend._sessions, "session", recording)
    monkeypatch.setattr(type(backend._runner), "_call", counted)
    x = images(2)
    at, wrt = ["relu3", "output"], ["input", "conv2"]
    squares = lambda acts: {"relu3": 2 * acts["relu3"], "output": acts["output"]}  # noqa: E731  (d/dz of ||z||^2)
    called = backend.gradient(x, squares, at=at, wrt=wrt, rule="guided")
    assert len(runs) == 2 and sorted(built) == ["split-backward", "split-forward"]
    forward_tensors = {o for node in backend.graph.nodes for o in node.output}
    backward = built["split-backward"].graph
    assert not forward_tensors & {o for node in backward.node for o in node.output}
    residuals = {v.name for v in backward.input} & forward_tensors
    assert {"relu1", "relu2", "relu3", "pool1"} <= residuals and runs[1] >= residuals and runs[0] == {"input"}
    fixed = backend.gradient(x, squares(called.activations), at=at, wrt=wrt, rule="guided")
    assert len(runs) == 3
    assert len(built["combined"].graph.node) == len(built["split-forward"].graph.node) + len(backward.node)
    for name in wrt:
        assert np.abs(fixed[name]).max() > 0
        np.testing.assert_allclose(called[name], fixed[name], rtol=1e-5, atol=1e-6 * np.abs(fixed[name]).max())

    def scribbling(acts):  # the arrays handed to the callable are its own: the backward reads the pass's values
        seeds = {k: v.copy() for k, v in squares(acts).items()}
        for a in acts.values():
            a[...] = -1
        return seeds

    again = backend.gradient(x, scribbling, at=at, wrt=wrt, rule="guided")
    for name in wrt:
        np.testing.assert_array_equal(again[name], called[name])


def test_threads_stop_spinning_after_each_run_unless_spinning_is_asked(demo):
    def entries(backend):
        backend.forward(images(1))
        options = [s.get_session_options() for s in backend._sessions._sessions.values()]
        return {o.get_session_config_entry("session.force_spinning_stop") for o in options}

    assert entries(demo) == {"1"}
    spinning = convscope.load(convscope.data.demo_path("onnx"), spinning=True)
    with pytest.raises(Exception, match="does not have configuration"):
        entries(spinning)  # the entry is left unset: ONNX Runtime's default, threads spinning on
    np.testing.assert_array_equal(spinning.forward(images(2)), demo.forward(images(2)))
    with pytest.raises(TypeError, match=r"'spinning' parameter of convscope.load must be True or False\. "
                                        r"Got 'yes' instead"):
        convscope.load(convscope.data.demo_path("onnx"), spinning="yes")


def test_fixed_size_is_the_size_the_file_fixes(demo):
    from convscope.synthesis._common import fixed_input_size

    assert demo.fixed_size == (64, 64) and fixed_input_size(demo) == (64, 64)
    free = convscope.load(om.custom_op_model(), input_shape=(om.C, 5, 7))  # every axis symbolic in the file
    assert free.fixed_size is None and fixed_input_size(free) is None
    assert convscope.load(om.operator_model("Relu")).fixed_size == (om.H, om.W)


def test_sessions_and_adjoint_graphs_are_cached(demo):
    x = images(2)
    seed = {"output": np.ones((2, 4), np.float32)}
    demo.gradient(x, seed, wrt=["conv3"], rule="deconvnet")
    demo.activations(x, ["relu2", "pool3"])
    plans, sessions = len(demo._plans), len(demo._sessions)
    for _ in range(2):
        demo.gradient(x, {"output": np.full((2, 4), 2.0, np.float32)}, wrt=["conv3"], rule="deconvnet")
        demo.activations(images(2, seed=1), ["relu2", "pool3"])
    assert (len(demo._plans), len(demo._sessions)) == (plans, sessions)


# --------------------------------------------------------------------------- bad input
def test_bad_files_are_reported_clearly(tmp_path):
    text = tmp_path / "notes.onnx"
    text.write_text("these are my notes, not a network\n" * 20)
    with pytest.raises(ValueError, match=r"notes.onnx' is not an ONNX model"):
        convscope.load(text)
    data = convscope.data.demo_path("onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"is truncated: it ends in the middle of a record"):
        convscope.load(str(cut))
    with pytest.raises(ValueError, match=r"truncated"):
        convscope.load(data[:-7])
    with pytest.raises(FileNotFoundError, match="No ONNX file at"):
        convscope.load(str(tmp_path / "missing.onnx"))
    with pytest.raises(ValueError, match=r"no image-like input: .* inputs are x: float32\[\?, 8\]"):
        convscope.load(om.no_image_model())


def test_bytes_and_modelproto_load_the_same_model(demo):
    data = convscope.data.demo_path("onnx").read_bytes()
    x = images(2)
    want = demo.forward(x)
    np.testing.assert_array_equal(convscope.load(data).forward(x), want)
    np.testing.assert_array_equal(convscope.load(onnx.load_from_string(data)).forward(x), want)


def test_unknown_names_list_close_matches(demo):
    x = images(2)
    with pytest.raises(ValueError, match=r"'layers' parameter of activations must be a known layer name\. "
                                         r"Got 'conv5' instead; closest: conv"):
        demo.activations(x, ["conv5"])
    with pytest.raises(ValueError, match=r"'wrt' parameter of gradient .* Got 'relu9' instead; closest: relu"):
        demo.gradient(x, {"output": np.ones((2, 4), np.float32)}, wrt=["relu9"])
    with pytest.raises(ValueError, match=r"'seeds' parameter of gradient must be shaped like 'conv2', \(2, 32, 32, 32\)"):
        demo.gradient(x, {"conv2": np.ones((2, 32, 16, 16), np.float32)})
    with pytest.raises(ValueError, match=r"images of size \(64, 64\) for this fixed-size model"):
        demo.forward(images(1, (3, 32, 32)))


def test_runs_with_torch_and_tensorflow_blocked():
    code = textwrap.dedent("""
        import sys

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "tensorflow", "keras", "jax"):
                    raise ImportError("blocked in this test: " + name)

        sys.meta_path.insert(0, Blocked())
        import numpy as np
        import convscope

        backend = convscope.load(convscope.data.demo_model("onnx"))
        x = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
        g = backend.gradient(x, {"output": np.eye(4, dtype=np.float32)[:2]}, wrt=["input", "conv4"], rule="guided")
        assert g["input"].shape == x.shape and np.abs(g["conv4"]).sum() > 0
        assert not any(m.split(".")[0] in ("torch", "tensorflow") for m in sys.modules), "a framework was imported"
        print("ok", backend.name)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                                      os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok onnxruntime"
