"""`convscope bench MODEL` and convscope.app.bench: the table, and that floors and peers compute
what convscope computes (a ratio between different work would mean nothing)."""
import importlib.util
import re
import subprocess
import sys

import numpy as np
import pytest

import convscope
from convscope import attribution as A
from convscope.app.bench import METHODS, BenchRow, bench_backend, best_of, format_rows, peak_memory_mb
from convscope.app.cli import main

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def demo():
    return convscope.data.demo_model("torch")


@pytest.fixture(scope="module")
def x():
    return convscope.data.shapes(2, seed=3).images


def test_bench_command_prints_the_table_for_the_demo_model(capsys):
    code = main(["bench", "demo", "--batch", "2", "--repeat", "1", "--steps", "2", "--visualize-steps", "1"])
    out = capsys.readouterr().out
    assert code == 0
    assert "batch 2 of 3x64x64" in out and "threads 1" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "torch |" in line]
    assert [r.split("|")[1].strip() for r in rows] == list(METHODS)
    for r in rows:
        cells = [c.strip() for c in r.split("|")[1:-1]]
        ours, floor, x_floor = float(cells[2]), float(cells[3]), float(cells[4])
        assert ours > 0 and floor > 0
        assert x_floor == pytest.approx(ours / floor, rel=0.06, abs=0.01)  # printed to 0.1 ms and 0.01
    peers = {r.split("|")[1].strip(): r.split("|")[6].strip() for r in rows}
    if importlib.util.find_spec("captum"):
        assert all(peers[m].startswith("Captum") for m in ("saliency", "guided_backprop", "integrated_gradients",
                                                           "occlusion", "grad_cam"))
    assert peers["activations"] == "-"


def test_bench_command_on_the_onnx_demo_uses_a_bare_session(capsys):
    pytest.importorskip("onnxruntime")
    code = main(["bench", "demo:onnx", "--batch", "1", "--repeat", "1", "--steps", "2", "--methods", "activations",
                 "occlusion", "--no-peers"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"\| activations \| onnxruntime \| [\d.]+ \| [\d.]+ \|", out)
    assert "forward of the same" in out


def test_bench_command_reports_a_bad_model_in_one_line(capsys):
    assert main(["bench", "no_such_model.onnx"]) == 2
    assert "convscope bench: error: model file not found" in capsys.readouterr().err


def test_unknown_method_is_refused_by_name(demo, x):
    with pytest.raises(ValueError, match="The 'methods' parameter of bench must be one of"):
        bench_backend(convscope.load(demo), x, methods=("saliency", "sideways"))


def test_floors_compute_what_convscope_computes(demo, x):
    from convscope.app.bench_floors import TorchFloor

    backend, floor = convscope.load(demo), TorchFloor(demo)
    xt = floor.native(x)
    seeds = np.eye(4, dtype=np.float32)[[1, 2]]
    np.testing.assert_allclose(floor.forward(xt), backend.forward(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(floor.layer(xt, "relu3"), backend.activations(x, ["relu3"])["relu3"], atol=1e-5)
    want = backend.gradient(x, {"output": seeds}, wrt=["input", "relu4"])
    np.testing.assert_allclose(floor.input_grad(xt, seeds), want["input"], rtol=1e-4, atol=1e-6)
    acts, g = floor.layer_grad(xt, "relu4", seeds)
    np.testing.assert_allclose(g, want["relu4"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(acts, want.activations["relu4"], atol=1e-5)
    assert not any(m.training for m in demo.modules()) and not demo._forward_hooks


@pytest.mark.parametrize("framework", ["onnx", "keras"])
def test_floors_of_the_other_frameworks_agree_too(framework, x):
    from convscope.app.bench_floors import floor_for

    pytest.importorskip("onnxruntime" if framework == "onnx" else "tensorflow")
    source = convscope.data.demo_model(framework)
    backend = convscope.load(source)
    floor = floor_for(backend, source)
    xn = floor.native(x)
    to_nchw = getattr(floor, "to_nchw", lambda a: a)
    seeds = np.eye(4, dtype=np.float32)[[0, 3]]
    np.testing.assert_allclose(floor.forward(xn), backend.forward(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_nchw(floor.layer(xn, "relu2")), backend.activations(x, ["relu2"])["relu2"],
                               atol=1e-4)
    want = backend.gradient(x, {"output": seeds}, wrt=["input", "relu4"])
    np.testing.assert_allclose(to_nchw(floor.input_grad(xn, seeds)), want["input"], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(to_nchw(floor.layer_grad(xn, "relu4", seeds)[1]), want["relu4"], rtol=1e-3, atol=1e-6)


def test_captum_peers_compute_the_same_maps(demo, x):
    pytest.importorskip("captum")
    from convscope.app.bench_peers import captum_peers

    target = np.array([1, 2])
    peers = captum_peers(demo, x, target, layer="relu4", steps=4, window=(16, 16), stride=(8, 8), per_eval=49)
    sal = peers["saliency"][1]()
    np.testing.assert_allclose(sal.max(axis=1), A.saliency(demo, x, target).maps, rtol=1e-4, atol=1e-7)
    ig = peers["integrated_gradients"][1]()
    np.testing.assert_allclose(ig.sum(axis=1), A.integrated_gradients(demo, x, target, steps=4).maps,
                               rtol=1e-3, atol=1e-5)
    occ = peers["occlusion"][1]()
    np.testing.assert_allclose(occ[:, 0], A.occlusion(demo, x, target, window=16, stride=8).maps, rtol=1e-3, atol=1e-4)
    cam = peers["grad_cam"][1]()
    np.testing.assert_allclose(cam[:, 0], A.grad_cam(demo, x, target, layer="relu4").maps, rtol=1e-3, atol=1e-5)
    assert all(m.inplace for m in demo.modules() if isinstance(m, torch.nn.ReLU))  # the user's module untouched


def test_best_of_is_interleaved_and_keeps_the_minimum():
    order, clock = [], iter([0.0, 0.3, 1.0, 1.1, 2.0, 2.1, 3.0, 3.5] * 2)
    import convscope.app.bench as bench

    real = bench.time.perf_counter
    bench.time.perf_counter = lambda: next(clock)
    try:
        got = best_of({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeat=2, warmup=0)
    finally:
        bench.time.perf_counter = real
    assert order == ["a", "b", "a", "b"]
    assert got == {"a": pytest.approx(0.1), "b": pytest.approx(0.1)}


def test_peak_memory_sees_a_large_temporary_array():
    # a fresh process: in this one, an allocator may serve the array from memory freed by earlier tests
    code = ("import numpy as np; from convscope.app.bench import peak_memory_mb; "
            "print(peak_memory_mb(lambda: np.ones(40 * 2**20 // 8).sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    if out == "None":
        pytest.skip("no way to read peak memory here")
    assert 35 < float(out) < 60


def test_table_ratios_and_placeholders():
    rows = [BenchRow("saliency", "torch", 0.002, 0.001, "one gradient", 0.004, "Captum", 1.0, 25.0, "autograd"),
            BenchRow("visualize", "onnxruntime", 0.5)]
    text = format_rows(rows)
    assert "| saliency | torch | 2.0 | 1.0 | 2.00 | Captum | 4.0 | 0.50 | 1.0 / 25 |" in text
    assert "| visualize | onnxruntime | 500.0 | - | - | - | - | - | - / - |" in text
    assert "Floors (the framework alone): saliency: one gradient. A gradient there is autograd on torch." in text


def test_a_method_the_model_cannot_do_is_left_out_with_the_reason():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3)).eval()  # no spatial layer
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    rows = bench_backend(convscope.load(model), x, methods=("saliency", "grad_cam"), repeat=1, memory=False)
    assert rows[0].ours > 0 and rows[0].floor > 0 and not rows[0].note
    assert rows[1].ours is None and rows[1].note.startswith("convscope failed: ValueError: grad_cam found no layer")
    assert "Left out: grad_cam on torch: convscope failed: ValueError" in format_rows(rows)
