"""`convscope demo`: the whole report on the demo model, checked as text and in a real browser."""
import re
import shutil
from pathlib import Path

import pytest

from convscope.app.cli import main

pytest.importorskip("torch")

SECTIONS = ["Layers", "Filters and activation maps", "Top activating patches", "Embedding", "Saliency family",
            "CAM family", "Methods compared", "Activation maximisation", "DeepDream, inversion, texture, style, fooling",
            "Network Dissection"]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    return out / "report.html"


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
