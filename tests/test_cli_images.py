"""The command line on images as users have them: any size, RGBA, class names, outputs chosen
by extension, and bad input told in one line with exit status 2 and nothing written."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

from convscope.app.cli import build_parser, main
from convscope.data import DEMO_CLASSES

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A 200x150 JPEG of a red circle, an 80x80 RGBA PNG of a blue square on transparency, a text file."""
    folder = tmp_path_factory.mktemp("photos")
    im = Image.new("RGB", (200, 150), (120, 130, 110))
    ImageDraw.Draw(im).ellipse([60, 35, 140, 115], fill=(220, 30, 30))
    im.save(folder / "circle.jpg", quality=95)
    rgba = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle([20, 20, 59, 59], fill=(30, 30, 200, 255))
    rgba.save(folder / "square.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def npz(path):
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def red_box(image):
    """Height and width of the red disc in a (3, H, W) image."""
    red = (image[0] > 0.6) & (image[1] < 0.35)
    ys, xs = np.nonzero(red)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


def test_any_size_is_fitted_keeping_the_aspect(photos, tmp_path, capsys):
    assert main(["explain", "demo", str(photos / "circle.jpg"), "-o", str(tmp_path / "a.npz")]) == 0
    err = capsys.readouterr().err
    assert "resized to 64x64 (crop)" in err
    image = npz(tmp_path / "a.npz")["images"][0]
    assert image.shape == (3, 64, 64)
    h, w = red_box(image)  # an 80-px disc in a 150-px-high photo: 64 * 81 / 150 = 34.6 px, round
    assert abs(h - w) <= 1 and 32 <= h <= 37
    assert main(["explain", "demo", str(photos / "circle.jpg"), "--resize", "stretch", "-o", str(tmp_path / "s.npz")]) == 0
    h, w = red_box(npz(tmp_path / "s.npz")["images"][0])
    assert h - w >= 6  # stretched: 64/150 tall, 64/200 wide


def test_rgba_is_composited_on_white_and_said(photos, tmp_path, capsys):
    assert main(["explain", "demo", str(photos / "square.png"), "-o", str(tmp_path / "a.npz")]) == 0
    assert "composited on white" in capsys.readouterr().err
    image = npz(tmp_path / "a.npz")["images"][0]
    assert np.allclose(image[:, 2, 2], 1.0)  # transparent corner: white
    assert np.allclose(image[:, 32, 32], np.array([30, 30, 200]) / 255, atol=0.02)


def test_outputs_by_extension_state_the_classes(photos, tmp_path, capsys):
    import convscope
    from convscope.data import demo_model

    img = str(photos / "circle.jpg")
    for ext in ("png", "jpg", "html", "npy", "npz"):
        assert main(["explain", "demo", img, "--target", "square", "-o", str(tmp_path / f"m.{ext}")]) == 0
    out = capsys.readouterr().out
    data = npz(tmp_path / "m.npz")
    x = data["images"]
    scores = convscope.load(demo_model()).forward(x)
    predicted = DEMO_CLASSES[int(scores[0].argmax())]
    assert f"predicted {predicted} (score {scores[0].max():.3g}" in out and "explained square" in out
    assert data["explained"].tolist() == [1] and list(data["class_names"]) == list(DEMO_CLASSES)
    reference = convscope.grad_cam(demo_model(), x, 1).maps  # the library on the same pixels
    np.testing.assert_allclose(data["maps"], reference, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "m.npy"), reference, rtol=1e-4, atol=1e-5)
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "m.jpg").read_bytes()[:2] == b"\xff\xd8"
    page = (tmp_path / "m.html").read_text()
    assert 'src="data:image/png;base64,' in page and f"<td>{predicted}</td>" in page and "<td>square</td>" in page
    picture = Image.open(tmp_path / "m.png")
    assert picture.width >= 3 * 192 and picture.height >= 192  # three legible columns, not 200x68
    # nearest-pixel enlargement: the heat map column holds blocks of equal pixels
    a = np.asarray(picture.convert("RGB"), np.int16)
    assert (np.abs(np.diff(a[a.shape[0] // 2, :], axis=0)).sum(axis=1) == 0).mean() > 0.5


def test_fool_reports_the_class_reached(photos, tmp_path, capsys):
    from convscope.synthesis import fool

    assert main(["fool", "demo", str(photos / "circle.jpg"), "--target", "star", "-o", str(tmp_path / "f.npz")]) == 0
    out = capsys.readouterr().out
    data = npz(tmp_path / "f.npz")
    x = data["adversarial"] - data["perturbation"]
    from convscope.data import demo_model

    again = fool(demo_model(), x, 3, progress=False)  # the library, from the same original
    k = int(again.predictions[0])
    assert data["reached"].tolist() == [k]
    assert f"reached {DEMO_CLASSES[k]} with softmax {again.probabilities[0, k]:.2f}" in out


def test_labels_file_names_the_classes(photos, tmp_path, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("round\nboxy\npointy\nspiky\n")
    assert main(["explain", "demo", str(photos / "circle.jpg"), "--labels", str(labels), "--target", "pointy",
                 "-o", str(tmp_path / "a.npz")]) == 0
    assert "explained pointy" in capsys.readouterr().out
    assert npz(tmp_path / "a.npz")["explained"].tolist() == [2]


@pytest.mark.parametrize("args, message", [
    (["explain", "demo", "{photos}/notes.txt"], "cannot decode image"),
    (["patches", "demo", "{empty}", "--layer", "relu3"], "no images in"),
    (["explain", "demo", "{photos}/circle.jpg", "--labels", "{three}"], "has 3 names; the model has 4 classes"),
    (["explain", "demo", "{photos}/circle.jpg", "--target", "circel"], "close matches: circle"),
    (["explain", "demo", "{photos}/circle.jpg", "--target", "7"], "not a class of the model, which has 4"),
    (["explain", "demo", "{photos}/circle.jpg", "--preset", "imagnet"], "unknown --preset 'imagnet'"),
    (["explain", "demo", "{photos}/circle.jpg", "--mean", "0.5", "0.5"], "--mean takes 1 or 3 values"),
    (["explain", "demo", "{photos}/circle.jpg", "-o", "{tmp}/out/x.gif"], "use one of .png, .jpg"),
])
def test_bad_input_is_one_line_status_2_and_nothing_written(photos, tmp_path, capsys, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    fill = {"photos": photos, "empty": tmp_path / "empty", "three": tmp_path / "three.txt", "tmp": tmp_path}
    args = [a.format(**fill) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out" / "x.png")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".*"))


def test_wrong_size_names_the_option_and_the_models_size(photos, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert main(["explain", "demo:onnx", str(photos / "circle.jpg"), "--size", "32", "32", "-o",
                 str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "--size 32 32" in err and "64x64" in err and not (tmp_path / "x.png").exists()


def test_every_option_has_help_with_its_default_and_help_is_plain():
    parser = build_parser()
    for name, sub in parser._subparsers._group_actions[0].choices.items():
        text = sub.format_help()
        assert "``" not in text and ":mod:" not in text and "**" not in text, name
        for action in sub._actions:
            if action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if action.option_strings and action.default not in (None, False):
                assert "default" in sub._get_formatter()._get_help_string(action), (name, action.dest)


def test_warnings_are_one_line_without_a_source_path(photos, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(3):
        Image.open(photos / "circle.jpg").save(folder / f"{i}.png")
    (folder / "readme.txt").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "convscope.app.cli", "patches", "demo", str(folder), "--layer", "relu3",
                           "--k", "2", "--channels", "0", "-o", str(tmp_path / "p.png")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    warning = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert warning == [f"convscope patches: warning: skipped 1 file in {folder} that is not an image"]
    assert ".py:" not in proc.stderr and proc.stdout.strip().endswith(f"wrote {tmp_path / 'p.png'}")


def test_report_on_a_small_folder_adapts_or_names_the_option(photos, tmp_path, capsys):
    folder = tmp_path / "three"
    folder.mkdir()
    for i in range(3):
        Image.open(photos / "circle.jpg").save(folder / f"{i}.png")
    out = tmp_path / "out" / "rep.html"
    assert main(["report", "demo", str(folder), "--k", "9", "--quick", "-o", str(out)]) == 2
    assert "lower --k" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # no rep_images/ left behind
    assert main(["report", "demo", str(folder), "--quick", "-o", str(out)]) == 0
    page = out.read_text()
    assert "demo on 3 images" in page and (tmp_path / "out" / "rep_images" / "saliency.png").exists()


def test_missing_framework_names_the_extra(tmp_path):
    code = ("import sys; sys.modules['torch'] = None; from convscope.app.cli import main; "
            f"sys.exit(main(['filters', 'demo:torch', '-o', {str(tmp_path / 'f.png')!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert 'pip install "convscope[torch]"' in proc.stderr or "pip install 'convscope[torch]'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_preset_matches_the_library(photos, tmp_path):
    import convscope
    from convscope.data import demo_model

    assert main(["explain", "demo", str(photos / "circle.jpg"), "--preset", "imagenet", "-o", str(tmp_path / "a.npz")]) == 0
    data = npz(tmp_path / "a.npz")
    backend = convscope.load(demo_model(), preprocess="imagenet")
    np.testing.assert_allclose(data["maps"], convscope.grad_cam(backend, data["images"]).maps, rtol=1e-4, atol=1e-5)
    json.dumps(data["class_names"].tolist())


def test_a_failure_half_way_leaves_nothing(photos, tmp_path, capsys, monkeypatch):
    from convscope.app import report

    folder = tmp_path / "three"
    folder.mkdir()
    for i in range(3):
        Image.open(photos / "circle.jpg").save(folder / f"{i}.png")

    def broken(*args, **kwargs):  # after every picture has been written
        raise ValueError("disk full (simulated)")

    monkeypatch.setattr(report, "_timing", broken)
    assert main(["report", "demo", str(folder), "--quick", "-o", str(tmp_path / "out" / "rep.html")]) == 2
    assert "disk full (simulated)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["dissect", "demo", "--layer", "relu4", "--n", "8", "-o", str(tmp_path / "d.html")]) == 2
    assert "raise --n" in capsys.readouterr().err and not (tmp_path / "d.html").exists()
    assert main(["dissect", "demo", "--layer", "relu4", "--n", "64", "-o", str(tmp_path / "d.html")]) == 0
    assert (tmp_path / "d.html").exists() and (tmp_path / "d.png").exists() and not list(tmp_path.glob(".convscope-*"))
