"""The CI gate: with CONVSCOPE_FULL_SUITE=1 a skipped test or module fails the run."""
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def _run(tmp_path, source, required):
    (tmp_path / "test_probe.py").write_text(source)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["_full_suite"]\n')
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("CONVSCOPE_FULL_SUITE", None)
    if required:
        env["CONVSCOPE_FULL_SUITE"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)


def test_a_skipped_test_fails_where_the_full_suite_is_required(tmp_path):
    source = "import pytest\n\ndef test_a():\n    pytest.skip('peer library missing')\n\ndef test_b():\n    pass\n"
    lenient = _run(tmp_path, source, required=False)
    assert lenient.returncode == 0 and "1 passed, 1 skipped" in lenient.stdout
    strict = _run(tmp_path, source, required=True)
    assert strict.returncode == 1 and "1 failed, 1 passed" in strict.stdout
    assert "CONVSCOPE_FULL_SUITE=1 requires the full suite" in strict.stdout and "peer library missing" in strict.stdout


def test_a_module_skipped_at_import_fails_too(tmp_path):
    source = "import pytest\n\npytest.importorskip('a_framework_that_is_not_installed')\n\ndef test_a():\n    pass\n"
    assert _run(tmp_path, source, required=False).returncode == 5  # no test ran: skipped at collection
    strict = _run(tmp_path, source, required=True)
    assert strict.returncode != 0 and "a_framework_that_is_not_installed" in strict.stdout


def test_xfail_is_not_a_skip(tmp_path):
    source = "import pytest\n\n@pytest.mark.xfail(strict=True)\ndef test_a():\n    raise ValueError\n"
    assert _run(tmp_path, source, required=True).returncode == 0
