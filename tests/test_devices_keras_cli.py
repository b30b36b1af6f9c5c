"""Devices on Keras (passes under ``tf.device``) and ``--device`` on the command line, through
the CLI entry point; the GPU guide's example, run as written on the CPU."""
import warnings

import numpy as np
import pytest

import convscope
from convscope.data import demo_path, shapes

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("torch")
CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
X = shapes(3, seed=1).images.astype(np.float32)


@pytest.fixture
def cuda_listed(monkeypatch):
    """ONNX Runtime as on a machine with onnxruntime-gpu installed: CUDA is listed (the real
    session, on this CPU build, then leaves it out of what it runs)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    warnings.filterwarnings("ignore", "Specified provider", UserWarning)  # ONNX Runtime's own notice


# ----------------------------------------------------------------------------- Keras
@pytest.fixture(scope="module")
def keras_demo():
    pytest.importorskip("tensorflow")
    from convscope.data import demo_model

    return demo_model("keras")


@pytest.mark.slow
def test_keras_runs_its_passes_under_the_device_asked_for(keras_demo):
    import tensorflow as tf

    default = convscope.load(keras_demo)
    on_cpu = convscope.load(keras_demo, device="/CPU:0")
    assert default.device is None and on_cpu.device == "/device:CPU:0"
    assert convscope.load(keras_demo, device="cpu").device == "/device:CPU:0"
    np.testing.assert_array_equal(on_cpu.forward(X), default.forward(X))
    out = on_cpu.forward(X)
    grads = on_cpu.gradient(X, {"output": np.ones_like(out)})
    np.testing.assert_allclose(grads["input"], default.gradient(X, {"output": np.ones_like(out)})["input"], rtol=1e-6)
    traced = [fn for key, fn in on_cpu._functions.items() if key[0] == "forward"][0]
    placed = {op.device for op in traced.graph.get_operations() if op.type == "Conv2D"}
    assert placed and all(tf.DeviceSpec.from_string(d).device_type == "CPU" for d in placed), placed


@pytest.mark.slow
@pytest.mark.parametrize("device, cls", [("/GPU:7", ValueError), ("cuda:7", ValueError), ("warp", ValueError),
                                         (5, TypeError)])
def test_keras_device_errors_list_the_devices_tensorflow_has(keras_demo, device, cls):
    with pytest.raises(cls, match=r"The 'device' parameter of convscope.load must be a device TensorFlow lists: "
                                  r".*/device:CPU:0"):
        convscope.load(keras_demo, device=device)


# ----------------------------------------------------------------------------- --device
@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("device") / "img.png"
    Image.fromarray((X[0].transpose(1, 2, 0) * 255).astype(np.uint8)).save(path)
    return path


def _explain(model, image, out, *device):
    from convscope.app.cli import main

    code = main(["explain", model, str(image), "--method", "saliency", *device, "-o", str(out)])
    return code, (np.load(out) if code == 0 else None)


@pytest.mark.parametrize("model", ["demo:onnx", "demo:torch"])
def test_device_on_the_command_line_gives_the_same_maps(model, image_file, tmp_path):
    code, want = _explain(model, image_file, tmp_path / "a.npy")
    assert code == 0
    code, got = _explain(model, image_file, tmp_path / "b.npy", "--device", "cpu")
    assert code == 0
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("model, device, message", [
    ("demo:onnx", "warp", "a provider onnxruntime knows; available here: "),
    ("demo:torch", "cuda:3", "a device this machine has"),
    ("demo:torch", "CUDAExecutionProvider", "a torch device such as 'cpu', 'cuda' or 'cuda:1'"),
])
def test_a_device_that_does_not_exist_ends_the_command_in_one_line(model, device, message, image_file, tmp_path,
                                                                    capsys):
    code, _ = _explain(model, image_file, tmp_path / "a.npy", "--device", device)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())


def test_device_cuda_on_the_command_line_asks_onnxruntime_for_cuda(cuda_listed, image_file, tmp_path, capsys):
    """With CUDA listed (and not starting, on this CPU build) the command warns and runs on the CPU."""
    from convscope._plugins import clear_cache
    from convscope.app.inputs import device_options

    assert device_options(demo_path("onnx"), "cuda:1") == {"providers": [("cuda", {"device_id": "1"})]}
    assert device_options(demo_path("onnx"), "TensorrtExecutionProvider") == {"providers": "TensorrtExecutionProvider"}
    clear_cache()
    code, got = _explain("demo:onnx", image_file, tmp_path / "a.npy", "--device", "cuda")
    err = capsys.readouterr().err
    assert code == 0 and "warning: ONNX Runtime could not start CUDAExecutionProvider" in err, err
    clear_cache()
    from convscope.app.cli import main

    assert main(["layers", "demo:onnx", "--device", "cpu"]) == 0 and "conv1" in capsys.readouterr().out


@pytest.mark.slow
def test_the_gpu_guide_runs_as_written_on_the_cpu(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "gpu.md"
    code = re.search(r"```python\n(.*?)```", doc.read_text(), re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["['CPUExecutionProvider']", "cpu", "the same maps on both: True"]
