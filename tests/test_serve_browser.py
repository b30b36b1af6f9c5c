"""``convscope serve`` in headless Chromium: the command starts the server on a free local port;
every page is opened, an image uploaded, the maps waited for; the pictures must decode and the
numbers on the pages equal the library's API on the same input. Screenshots go to tmp_path
(and to ``$CONVSCOPE_SCREENSHOTS`` when set: that is how docs/images/serve_*.png are made)."""
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install convscope[serve])")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install convscope[serve])")
pytest.importorskip("torch")
from PIL import Image  # noqa: E402

import convscope  # noqa: E402
from convscope import attribution, metrics  # noqa: E402
from convscope.app.serve.server import free_port  # noqa: E402
from convscope.data import DEMO_CLASSES, demo_model, shapes  # noqa: E402
from convscope.preprocess import fit_image  # noqa: E402
from test_demo_report import chromium  # noqa: E402
from test_serve_api import write_broden_shapes  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_browser")
    write_broden_shapes(root / "broden", n=12, seed=4)
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "convscope.app.cli", "serve", "demo", "--data", str(root / "broden"),
                             "--cache", str(root / "cache"), "--port", str(port), "--quick"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line + proc.stdout.read() if proc.poll() is not None else line
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=5).read()
                break
            except OSError:
                assert time.time() < deadline and proc.poll() is None, "the server did not answer"
                time.sleep(0.2)
        yield url, root
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    path = chromium()
    if path is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra has it)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def open_page(browser, url, errors):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(120_000)  # two shared cores under load: waits are generous, the checks are not
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    page.wait_for_load_state("load")
    return page


def wait_done(page, timeout=120_000):
    page.wait_for_function("() => [...document.querySelectorAll('.ask')].every(b => b.dataset.state === 'done')",
                           timeout=timeout)


def images_ok(page) -> list:
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete && e.naturalWidth > 0, e.alt])")
    assert images and all(ok for ok, _ in images), images
    return images


def shot(page, tmp_path, name):
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    target = os.environ.get("CONVSCOPE_SCREENSHOTS")
    if target:
        shutil.copy(path, Path(target) / f"serve_{name}.png")
    return path


def test_layer_and_unit_pages(server, browser, tmp_path):
    url, _ = server
    errors = []
    page = open_page(browser, url + "/", errors)
    assert page.locator("table td a").count() == len(convscope.load(demo_model("torch")).layers())
    assert page.locator("svg.flow rect").count() >= 10
    page.click("svg.flow a:has-text('conv1')")
    page.wait_for_url("**/layer/conv1")
    wait_done(page)
    images_ok(page)
    shot(page, tmp_path, "layer")
    page.goto(url + "/unit/relu3/2")
    wait_done(page)
    assert len(images_ok(page)) >= 3  # visualisation, patches, activation map
    label = page.locator(".ask[data-ask=dissect] td.label").inner_text()
    assert label in shapes(1).concepts
    shot(page, tmp_path, "unit")
    page.select_option("select.pick", "data-3")
    page.wait_for_function("() => document.querySelector('.ask[data-ask=unit_map]').dataset.state === 'done'"
                           " && document.querySelector('.ask[data-ask=unit_map]').dataset.image === 'data-3'")
    shown = float(page.locator(".ask[data-ask=unit_map] td.num").first.get_attribute("data-value"))
    page.close()
    x = _folder_image(server[1], 3)
    a = convscope.load(demo_model("torch")).activations(x, ["relu3"])["relu3"][0, 2]
    assert shown == pytest.approx(float(a.max()), rel=1e-5)
    assert errors == []


def _folder_image(root, i):
    with Image.open(root / "broden" / "images" / f"im{i}.png") as img:
        return np.asarray(img.convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255


def test_upload_and_image_page_numbers_match_the_api(server, browser, tmp_path):
    url, _ = server
    data = shapes(1, seed=9)
    photo = Image.fromarray(np.round(data.images[0].transpose(1, 2, 0) * 255).astype(np.uint8)).resize((96, 80))
    photo.save(tmp_path / "photo.jpg", quality=95)
    errors = []
    page = open_page(browser, url + "/image", errors)
    page.set_input_files("#upload", str(tmp_path / "photo.jpg"))
    page.wait_for_url("**/image/*")
    wait_done(page, timeout=120_000)
    images_ok(page)
    shot(page, tmp_path, "image")
    predicted = int(page.locator("#predicted").get_attribute("data-class"))
    score = float(page.locator("td.num").first.get_attribute("data-value"))
    first_row = page.eval_on_selector("main table tbody tr", "r => [...r.cells].map(c => c.textContent)")
    cells = page.eval_on_selector_all(".ask[data-ask=explain] tbody tr", "rows => rows.map(r => "
                                      "[r.cells[0].textContent, r.cells[1].dataset.value])")
    page.locator(".unit-buttons button").nth(1).click()
    page.wait_for_function("() => document.querySelector('#unit-map .ask')?.dataset.state === 'done'")
    images_ok(page)
    page.close()
    assert errors == []
    backend = convscope.load(demo_model("torch"))
    with Image.open(tmp_path / "photo.jpg") as img:
        x = np.asarray(fit_image(img, (64, 64), mode="crop")[0], np.float32)[None]
    scores = backend.forward(x)[0]
    assert predicted == int(scores.argmax())
    assert first_row[:2] == [DEMO_CLASSES[predicted], str(predicted)] and len(first_row) == 4
    assert score == pytest.approx(float(scores.max()), rel=1e-4, abs=1e-4)
    auc = dict(cells)
    maps = attribution.grad_cam(backend, x, predicted)
    expected = metrics.deletion(backend, x, maps, [predicted], steps=8, output="probability").auc[0]
    assert float(auc["grad_cam"]) == pytest.approx(float(expected), rel=1e-4, abs=1e-5)


def test_bad_requests_show_an_error_page(server, browser):
    url, _ = server
    errors = []
    page = open_page(browser, url + "/unit/relu3/999", errors)
    assert "Error 404" in page.content() and "Traceback" not in page.content()
    response = page.goto(url + "/layer/no-such-layer")
    assert response.status == 404 and "unknown layer" in page.content()
    page.close()
