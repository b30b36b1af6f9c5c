"""`convscope compare MODEL... IMAGES_DIR --masks DIR`: a folder of photos of several sizes, a mask
folder with the same stems, the ONNX demo file; the outputs, the page, the CSV, the mistakes."""
import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from PIL import Image

from convscope.app.cli import build_parser, main
from convscope.app.compare_command import fit_mask
from convscope.data import demo_path, shapes
from convscope.metrics.comparison import read_csv
from convscope.preprocess import fit_image

pytestmark = pytest.mark.backend("onnxruntime")

SIZES = [(64, 64), (80, 96), (100, 72)]  # (H, W) of the photos


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_cli")
    photos, masks = root / "photos", root / "masks"
    photos.mkdir()
    masks.mkdir()
    d = shapes(3, seed=5)
    for i, (h, w) in enumerate(SIZES):
        img = Image.fromarray((d.images[i].transpose(1, 2, 0) * 255).round().astype(np.uint8))
        img.resize((w, h), Image.BILINEAR).save(photos / f"photo{i}.png")
        mask = Image.fromarray(d.object_masks[i].astype(np.uint8) * 255)
        mask.resize((w, h), Image.NEAREST).save(masks / f"photo{i}.{'png' if i else 'bmp'}")  # any format
    return photos, masks


def _run(capsys, *argv):
    code = main(["compare", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compare_writes_table_plots_and_a_self_contained_page(folders, tmp_path, capsys):
    photos, masks = folders
    out = tmp_path / "out"
    code, stdout, stderr = _run(capsys, demo_path("onnx"), photos, "--masks", masks, "--methods", "grad_cam",
                                "saliency", "--metrics", "pointing_game", "deletion", "--option", "deletion.steps=4",
                                "--out", out)
    assert code == 0, stderr
    for name in ("table.csv", "heatmap.png", "curves.png", "compare.html"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = read_csv(out / "table.csv")
    assert len(rows) == 1 * 2 * 2
    assert {(r["method"], r["metric"]) for r in rows} == {(m, k) for m in ("grad_cam", "saliency")
                                                          for k in ("pointing_game", "deletion")}
    assert all(r["error"] == "" and r["n"] == 3 and r["framework"] == "onnx" for r in rows)
    page = (out / "compare.html").read_text()
    assert "http:" not in page and "https:" not in page and "src=\"data:image/png;base64," in page
    assert page.count("<img") == 2  # heat map and curves inline
    assert "pointing_game (localisation; higher is better" in stdout and "wrote" in stdout
    assert "resized" in stderr  # the photos of other sizes were fitted, and it is said


def test_compare_without_masks_skips_the_masks_metric(folders, tmp_path, capsys):
    photos, _ = folders
    code, stdout, stderr = _run(capsys, "demo:onnx", photos, "--methods", "saliency", "--metrics", "pointing_game",
                                "--out", tmp_path / "o")
    assert code == 0, stderr
    (row,) = read_csv(tmp_path / "o" / "table.csv")
    assert row["error"].startswith("skipped: no masks") and row["n"] == 0
    assert not (tmp_path / "o" / "curves.png").exists()


def test_mistakes_are_one_line_and_leave_nothing(folders, tmp_path, capsys):
    photos, masks = folders
    out = tmp_path / "o"
    code, _, err = _run(capsys, "demo:onnx", photos, "--metrics", "delition", "--out", out)
    assert code == 2 and "did you mean 'deletion'" in err and len(err.strip().splitlines()) == 1
    partial = tmp_path / "partial"
    partial.mkdir()
    for p in sorted(masks.iterdir())[1:]:
        (partial / p.name).write_bytes(p.read_bytes())
    code, _, err = _run(capsys, "demo:onnx", photos, "--masks", partial, "--out", out)
    assert code == 2 and "one mask per photo" in err and "no mask for photo0" in err
    (partial / "stray.png").write_bytes((masks / "photo1.png").read_bytes())
    (partial / "photo0.png").write_bytes((masks / "photo1.png").read_bytes())  # 80x96 mask for a 64x64 photo
    code, _, err = _run(capsys, "demo:onnx", photos, "--masks", partial, "--out", out)
    assert code == 2 and "no photo for stray.png" in err
    (partial / "stray.png").unlink()
    code, _, err = _run(capsys, "demo:onnx", photos, "--masks", partial, "--out", out)
    assert code == 2 and "mask photo0.png is 96x80 but its photo photo0.png is 64x64" in err
    with pytest.raises(SystemExit):  # argparse: an IMAGES_DIR and at least one MODEL
        main(["compare", str(photos), "--out", str(out)])
    assert "MODEL" in capsys.readouterr().err
    assert not out.exists()


def test_masks_are_fitted_as_their_photos():
    # a 100 x 50 (W x H) photo whose left half is the object, cropped to 25 x 25: resized to 50 x 25,
    # then the centre 25 columns from column 12: object columns 12..24 of the resized image, i.e. 0..12
    mask = np.zeros((50, 100), np.uint8)
    mask[:, :50] = 255
    fitted = fit_mask(Image.fromarray(mask), (25, 25), "crop")
    assert fitted.shape == (25, 25) and fitted[:, :13].all() and not fitted[:, 13:].any()
    # the same geometry as the photo's own fit (the photo is the mask drawn in grey levels)
    photo = np.repeat(mask[..., None], 3, axis=2)
    for mode in ("crop", "pad", "stretch"):
        drawn, _ = fit_image(Image.fromarray(photo), (25, 25), mode)
        fitted = fit_mask(Image.fromarray(mask), (25, 25), mode)
        assert ((drawn[0] > 0.75) ^ fitted).sum() <= 25, mode  # at most one column of edge pixels (grey pad 0.5)
    # pad: scale 1/4, a 25 x 12 band (12.5 rounds to 12) pasted at row (25 - 12) // 2 = 6; nearest
    # samples column j at x = 4 j + 2, on the object for j <= 11; the padding is no object
    padded = fit_mask(Image.fromarray(mask), (25, 25), "pad")
    assert padded[6:18, :12].all() and padded.sum() == 12 * 12


def test_help_lists_compare():
    text = build_parser().format_help()
    assert "compare" in text and "score attribution methods on metrics" in text


def test_device_runs_every_model_there_and_a_bad_one_is_one_line(folders, tmp_path, capsys):
    photos, _ = folders
    common = ("--methods", "saliency", "--metrics", "sparseness")
    code, _, stderr = _run(capsys, demo_path("onnx"), photos, *common, "--out", tmp_path / "plain")
    assert code == 0, stderr
    code, _, stderr = _run(capsys, demo_path("onnx"), photos, *common, "--device", "cpu", "--out", tmp_path / "cpu")
    assert code == 0, stderr
    plain, cpu = read_csv(tmp_path / "plain" / "table.csv"), read_csv(tmp_path / "cpu" / "table.csv")
    assert [r["mean"] for r in cpu] == [r["mean"] for r in plain] and all(r["error"] == "" for r in cpu)
    code, _, stderr = _run(capsys, demo_path("onnx"), photos, *common, "--device", "warp", "--out", tmp_path / "bad")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "available here" in stderr
    assert not (tmp_path / "bad").exists()
