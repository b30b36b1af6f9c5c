"""docs/onnx.md runs as written with torch and TensorFlow blocked from import."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "onnx.md"


def test_onnx_guide_runs_without_torch_or_tensorflow(tmp_path):
    pytest.importorskip("onnxruntime")
    code = re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1)
    blocker = "import sys\nfor _name in ('torch', 'tensorflow', 'keras', 'tf_keras', 'jax'):\n    sys.modules[_name] = None\n"
    proc = subprocess.run([sys.executable, "-c", blocker + code], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "['conv1', 'bn1', 'relu1']"
    scores = {line.split()[0]: float(line.split()[-1]) for line in lines[1:7]}
    assert scores["grad_cam"] >= 0.8 and scores["occlusion"] >= 0.8 and scores["guided_backprop"] >= 0.8
    assert lines[-1] == "64 units dissected"
