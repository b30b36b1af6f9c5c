"""`convscope demo`: the whole report on the demo model, checked as text and in a real browser."""
import re
import shutil
from pathlib import Path

import pytest

from convscope.app.cli import main

pytest.importorskip("torch")

SECTIONS = ["Layers", "Filters and activation maps", "Top activating patches", "Embedding", "Saliency family",
            "CAM family", "More CAMs", "Rule-based family (LRP, DeepLift)", "Methods compared", "Activation maximisation", "DeepDream, inversion, texture, style, fooling",
            "Network Dissection", "Timing"]
LOG = {}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import contextlib
    import io

    out = tmp_path_factory.mktemp("demo")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["demo", "--quick", "--out", str(out)]) == 0
    LOG["stderr"] = err.getvalue()
    return out / "report.html"


def test_progress_per_section_with_elapsed_time(report):
    lines = LOG["stderr"].splitlines()
    for title in SECTIONS[:-1]:
        assert any(re.fullmatch(rf"\[ *\d+\.\d s\] {re.escape(title)}(: .*)?", line) for line in lines), title
    elapsed = [float(m.group(1)) for m in map(re.compile(r"\[ *(\d+\.\d) s\]").match, lines) if m]
    assert elapsed == sorted(elapsed)


def test_one_section_per_subject_and_timing_apart(report):
    page = report.read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert headings == SECTIONS  # Network Dissection once, Timing its own section, last; no perturbation in --quick
    assert "demo_weights.npz" in page.split("<header>")[1].split("</header>")[0]  # the model file is named


def test_method_grids_have_headers_row_captions_and_colour_scales(report):
    import json

    import numpy as np
    from PIL import Image

    folder = report.parent / "images"
    grid = np.asarray(Image.open(folder / "saliency.png").convert("RGB"), np.float32) / 255
    # eight columns (image + 7 methods) of 128-pixel tiles (64-pixel images at 2x), 2-pixel gaps, row captions left
    assert grid.shape[1] == 112 + 8 * 130 + 2
    band = grid[:14, 112:]
    assert band.min() < 0.4 and (band > 0.95).mean() > 0.7  # dark header text on white
    assert (grid[40:160, :112] < 0.4).any()  # caption text left of the first row
    # colour scales under the grid: a jet ramp (blue at the left end, red at the right)
    bottom = grid[-120:]
    blue = (bottom[..., 2] > 0.45) & (bottom[..., 0] < 0.1)
    red = (bottom[..., 0] > 0.45) & (bottom[..., 2] < 0.1)
    assert blue.any() and red.any()
    numbers = json.loads((report.parent / "numbers.json").read_text())
    methods = {r["method"] for r in numbers["methods"]}
    assert {"grad_cam", "integrated_gradients", "occlusion", "score_cam"} <= methods
    import html

    page = html.unescape(report.read_text())
    assert "tone mapping 'percentile'" in page  # the faint maps are drawn readable, and the mapping named
    assert "one row per image (true class, predicted class, its score)" in page


def test_report_holds_every_section_and_is_self_contained(report):
    page = report.read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page, title
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) >= 15 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page  # nothing fetched from anywhere
    # the metrics table ranks every method, with the pointing game against ground truth
    for method in ("grad_cam", "occlusion", "guided_backprop", "score_cam", "integrated_gradients"):
        assert f"<td>{method}</td>" in page
    pictures = sorted(p.name for p in (report.parent / "images").glob("*.png"))
    assert {"saliency.png", "cam.png", "classes.png", "dissection.png", "tsne_grid.png"} <= set(pictures)
    assert "Method seconds in the methods table exclude the warm-up pass" in page


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_in_headless_chromium(report, tmp_path):
    browser_path = chromium()
    if browser_path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra has it)")
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(report.as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.alt])")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert len(images) >= 15
    broken = [alt for done, width, alt in images if not (done and width > 0)]
    assert broken == []
    assert shot.stat().st_size > 50_000
    Path(report.parent / "screenshot.png").write_bytes(shot.read_bytes())
