"""The package as users get it: imports with no framework, a real (non-editable) install, the demo model."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = "torch tensorflow keras onnx onnxruntime tf_keras jax"


def run_python(code, **kwargs):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=300, **kwargs)


def test_core_imports_with_every_framework_blocked():
    proc = run_python(f"""
        import sys
        for name in {BLOCK.split()!r}:
            sys.modules[name] = None  # any import of it raises ImportError
        import convscope, convscope.render, convscope.testing
        data = convscope.data.shapes(4)
        assert data.images.shape == (4, 3, 64, 64)
        assert convscope.installed_backends() == []  # only backends whose framework imports
        missing = convscope.installed_backends(missing=True)  # the others, each with the extra to install
        assert 'pip install "convscope[torch]"' in missing["torch"] and "blocked" in missing["torch"]
        assert sorted(missing) == ["onnxruntime", "tensorflow", "torch"]
        try:
            convscope.load(object())
        except TypeError as err:
            print("refused:", err)
        """)
    assert proc.returncode == 0, proc.stderr
    assert "No convscope backend accepts a model of type builtins.object" in proc.stdout
    assert "Installed backends: none; torch cannot run (torch is blocked from importing: " in proc.stdout


@pytest.mark.slow
def test_non_editable_install_imports_and_finds_its_plugins(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--quiet",
                            "--target", str(target), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    proc = run_python("""
        import convscope, json
        from importlib.metadata import entry_points
        eps = sorted(ep.value for ep in entry_points(group="convscope"))
        print(json.dumps({"file": convscope.__file__, "backends": convscope.installed_backends(), "eps": eps,
                          "weights": convscope.data.demo_path("torch").exists()}))
        """, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["file"].startswith(str(target))
    assert "torch" in info["backends"] and "convscope.backends.torch" in info["eps"]
    assert info["weights"]


def test_shipped_demo_model_accuracy_on_held_out_images():
    torch = pytest.importorskip("torch")
    from convscope.data import demo_model, shapes
    from convscope.data._build.train_demo import TEST_SEED, TRAIN_SEED

    assert TEST_SEED != TRAIN_SEED
    model = demo_model("torch")
    data = shapes(500, seed=TEST_SEED)
    with torch.no_grad():
        pred = model(torch.from_numpy(data.images)).argmax(1).numpy()
    assert (pred == data.labels).mean() >= 0.95
    size = (ROOT / "core/data/demo_weights.npz").stat().st_size
    assert size < 2_000_000


@pytest.mark.slow
def test_training_script_still_trains():
    pytest.importorskip("torch")
    from convscope.data._build.train_demo import train

    model, acc = train(n_train=3000, n_test=256, epochs=4, log=lambda *_: None)
    assert acc > 0.5  # four classes: chance is 0.25; the full run reaches >= 0.95
