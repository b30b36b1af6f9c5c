"""The README tells the truth: its Python blocks run as written, its test command is CI's."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_blocks_run(capsys, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)  # the examples save pictures
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "['conv1', 'bn1', 'relu1', 'pool1']" in out and "(4, 3, 64, 64) (4, 64, 8, 8)" in out
    assert "True\nrelu4 (1, 64, 64)\n" in out and (tmp_path / "grad_cam.png").exists()
    assert "EpsilonPlus [" in out and "pointing_game (localisation; higher is better" in out
    table = out.split("pointing_game (localisation")[1]
    assert all(f"{fw} / {m}" in table for fw in ("torch", "onnx") for m in ("lrp", "grad_cam"))


def test_ci_runs_the_readme_test_command():
    command = re.search(r"## Tests\n\n```bash\n(.*?)\n```", README, re.S).group(1).strip()
    assert command in (ROOT / ".ci" / "run").read_text()
