"""The convscope command: every subcommand on the demo model, one-line errors with exit 2,
nothing half-written, --help everywhere."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from convscope.app.cli import build_parser, main
from convscope.data import shapes

pytest.importorskip("torch")


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "convscope.app.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    data = shapes(12, seed=3)
    for i, img in enumerate(data.images):
        Image.fromarray((img.transpose(1, 2, 0) * 255).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def test_console_script_is_installed():
    assert shutil.which("convscope"), "the console script 'convscope' is not on PATH"


def test_help_everywhere(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"layers", "explain", "filters", "activations", "patches", "neighbors", "embed", "visualize", "dream",
            "invert", "style", "fool", "dissect", "report", "demo"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as done:
            main([name, "--help"])
        assert done.value.code == 0
        assert "usage: convscope " + name in capsys.readouterr().out


def test_layers(capsys):
    assert main(["layers", "demo"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "(16, 64, 64)" in out and "(3, 3)/(1, 1)/(1, 1, 1, 1)" in out
    assert main(["layers", "demo", "--size", "32", "32"]) == 0
    assert "(16, 32, 32)" in capsys.readouterr().out  # shapes for the asked size, not the model's own


@pytest.mark.parametrize("command, extra", [
    ("explain", ["--method", "grad_cam", "--layer", "relu4"]),
    ("explain", ["--method", "occlusion"]),
    ("activations", ["--layer", "relu1"]),
    ("dream", ["--layer", "relu3", "--steps", "2"]),
    ("invert", ["--layers", "relu1", "--steps", "3"]),
    ("fool", ["--target", "1"]),
])
def test_image_commands_write_pictures(images, tmp_path, command, extra):
    out = tmp_path / f"{command}.png"
    assert main([command, "demo", str(images / "00.png"), str(images / "01.png"), *extra, "-o", str(out)]) == 0
    assert Image.open(out).size[0] > 32


@pytest.mark.parametrize("command, extra", [
    ("filters", []),
    ("patches", ["--layer", "relu3", "--channels", "0", "1", "--k", "3"]),
    ("neighbors", ["--layer", "relu4", "--queries", "0", "--k", "3"]),
    ("embed", ["--layer", "relu4", "--method", "pca"]),
    ("visualize", ["--class", "2", "--steps", "4"]),
])
def test_model_and_data_commands(images, tmp_path, command, extra):
    out = tmp_path / f"{command}.png"
    args = [command, "demo"] + ([str(images)] if command in ("patches", "neighbors", "embed") else []) + extra
    assert main([*args, "-o", str(out)]) == 0
    assert out.exists()


def test_style_and_dissect(images, tmp_path):
    assert main(["style", "demo", str(images / "00.png"), str(images / "01.png"), "--steps", "3",
                 "-o", str(tmp_path / "style.png")]) == 0
    assert main(["dissect", "demo", "--layer", "relu4", "--n", "64", "-o", str(tmp_path / "d.html")]) == 0
    assert "Network Dissection of relu4" in (tmp_path / "d.html").read_text()


def test_onnx_file_and_torch_factory(images, tmp_path):
    pytest.importorskip("onnxruntime")
    from convscope.data import demo_path

    assert main(["explain", str(demo_path("onnx")), str(images / "00.png"), "-o", str(tmp_path / "a.png")]) == 0
    (tmp_path / "mymodels.py").write_text("from convscope.data import demo_model\n\ndef make():\n    return demo_model()\n")
    proc = run("layers", "mymodels:make", cwd=tmp_path)
    assert proc.returncode == 0 and "relu4" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["layers", "missing.onnx"], "model file not found: missing.onnx"),
    (["layers", "{notes}"], "model format not recognised"),
    (["explain", "demo", "{notes}", "-o", "{tmp}/x.png"], "cannot decode image"),
    (["explain", "demo", "{img}", "-o", "{notes}/x.png"], "cannot write the output"),
    (["explain", "demo", "{img}", "--layer", "relu9", "-o", "{tmp}/x.png"], "known layer name. Got 'relu9'"),
    (["layers", "nomodule_xyz:make"], "cannot import 'nomodule_xyz'"),
    (["visualize", "demo", "-o", "{tmp}/v.png"], "give either --layer with --channel, or --class"),
])
def test_user_mistakes_end_in_one_line_and_status_2(images, tmp_path, args, message):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image or a model")
    fill = {"notes": notes, "tmp": tmp_path, "img": images / "00.png"}
    proc = run(*[a.format(**fill) for a in args])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*"))  # nothing half-written


def test_debug_shows_the_traceback(tmp_path):
    proc = run("--debug", "layers", tmp_path / "missing.onnx")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "UsageError" in proc.stderr
