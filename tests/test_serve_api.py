"""``convscope serve``: routes, numbers against the library's API and hand counts, errors, the
disk cache, single flight, cancellation and path safety (Starlette's TestClient, no browser)."""
import csv
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install convscope[serve])")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
pytest.importorskip("torch")
from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from convscope import attribution, features, metrics  # noqa: E402
from convscope.app.commands import METHODS  # noqa: E402
from convscope.app.serve.compute import Workspace  # noqa: E402
from convscope.app.serve.server import make_app  # noqa: E402
from convscope.data import shapes  # noqa: E402
from convscope.dissection import dissect  # noqa: E402
from convscope.preprocess import fit_image  # noqa: E402

N_IMAGES = 12


def write_broden_shapes(root: Path, n: int = N_IMAGES, seed: int = 3):
    """The generated shapes as a Broden folder (index.csv, label.csv, images and one label PNG per
    concept present, the label number in the red channel); the shape masks are the 'object' category."""
    data = shapes(n, seed=seed)
    category = {"shape": "object", "color": "color", "texture": "texture"}
    numbers = {c: i + 1 for i, c in enumerate(data.concepts)}
    (root / "images").mkdir(parents=True)
    with open(root / "label.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "name", "category", "frequency", "coverage", "syns"])
        for cat, names in data.categories.items():
            w.writerows([numbers[c], c, f"{category[cat]}(1)", 1, 0, ""] for c in names)
    rows = []
    for i in range(n):
        image = np.round(data.images[i].transpose(1, 2, 0) * 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"im{i}.png")
        row = {"image": f"im{i}.png", "split": "train", "ih": 64, "iw": 64, "sh": 64, "sw": 64}
        for cat, names in data.categories.items():
            files = []
            for c in names:
                plane = data.masks[i, data.concepts.index(c)]
                if plane.any():
                    label = np.zeros((64, 64, 3), np.uint8)
                    label[plane, 0] = numbers[c]
                    Image.fromarray(label).save(root / "images" / f"im{i}_{c}.png")
                    files.append(f"im{i}_{c}.png")
            row[category[cat]] = ";".join(files)
        rows.append(row)
    with open(root / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return data


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data = write_broden_shapes(root / "broden")
    return root, data


@pytest.fixture(scope="module")
def ws(folder):
    root, _ = folder
    workspace = Workspace("demo", data=str(root / "broden"), cache=str(root / "cache"), quick=True)
    yield workspace
    workspace.jobs.shutdown()


@pytest.fixture(scope="module")
def client(ws):
    with TestClient(make_app(ws)) as c:
        yield c


def result(client, kind, timeout=60, **params):
    """Ask for a computation and poll until it is done; the finished entry (JSON)."""
    r = client.post(f"/api/ask/{kind}", params=params)
    assert r.status_code in (200, 202), r.text
    body = r.json()
    deadline = time.time() + timeout
    while body["state"] == "running":
        assert time.time() < deadline, body
        time.sleep(0.05)
        body = client.get(f"/api/job/{body['job']}").json()
    assert body["state"] == "done", body
    return body


def decoded(client, url):
    r = client.get(url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def test_layers_page_table_and_receptive_fields_by_hand(client, ws):
    page = client.get("/").text
    for name in ws.layer_names:
        assert f">{name}</a>" in page
    rows = {r["name"]: r for r in ws.layer_rows()}
    # by hand: 3x3 convs (stride 1) and 2x2 pools (stride 2): 3, 4, 8, 10, 18, 22, 38
    expected = {"conv1": 3, "pool1": 4, "conv2": 8, "pool2": 10, "conv3": 18, "pool3": 22, "conv4": 38}
    assert {k: rows[k]["receptive field"] for k in expected} == {k: f"{v}x{v}" for k, v in expected.items()}
    assert "<svg" in page and page.count("<rect") == len(ws.layer_names)
    table = page.split("<tbody>")[1].split("</tbody>")[0]
    assert table.count("<tr>") == len(ws.layer_names) and table.count("<td") == 6 * len(ws.layer_names)
    assert "<td>conv</td><td>16x64x64</td>" in table  # kind and shape of conv1, each in its cell
    assert "http://" not in page and "https://" not in page  # nothing from a CDN


def test_filters_picture_is_the_librarys(client, ws):
    assert "Filters" in client.get("/layer/conv1").text
    body = result(client, "filters", layer="conv1")
    expected = features.filters(ws.backend, "conv1", tile=24).to_rgb()
    np.testing.assert_array_equal(decoded(client, body["pictures"]["filters"]),
                                  np.round(np.clip(expected, 0, 1) * 255).astype(np.uint8))
    assert body["numbers"]["rgb"] is True  # the first layer is drawn in colour


def test_prediction_equals_forward_on_the_folder_image(client, ws, folder):
    root, data = folder
    with Image.open(root / "broden" / "images" / "im3.png") as img:
        x = np.asarray(img.convert("RGB"), np.float32).transpose(2, 0, 1)[None] / 255
    page = client.get("/image/data-3").text
    assert "Prediction" in page
    numbers = result(client, "predict", image="data-3")["numbers"]
    np.testing.assert_allclose(numbers["scores"], ws.backend.forward(x)[0], rtol=1e-5, atol=1e-5)
    assert numbers["top"][0]["class"] == int(ws.backend.forward(x)[0].argmax())
    assert f'data-value="{numbers["top"][0]["score"]!r}"' in page


def test_explain_scores_equal_the_metrics_api(client, ws, folder):
    _, data = folder
    body = result(client, "explain", image="data-5", timeout=120)
    numbers = body["numbers"]
    x = ws.images[5:6]
    k = int(ws.backend.forward(x)[0].argmax())
    assert numbers["predicted"] == k
    rows = {r["method"]: r for r in numbers["methods"]}
    assert set(rows) == set(METHODS)
    np.testing.assert_array_equal(ws.masks[5], data.object_masks[5])  # the Broden 'object' masks are the shapes'
    for name in ("grad_cam", "occlusion", "saliency"):
        maps = getattr(attribution, name)(ws.backend, x, k, **({"window": 8, "stride": 8} if name == "occlusion" else {}))
        auc = metrics.deletion(ws.backend, x, maps, [k], steps=ws.settings["deletion_steps"], output="probability").auc[0]
        assert rows[name]["deletion AUC"] == pytest.approx(float(auc), rel=1e-6, abs=1e-7)
        hit = metrics.pointing_game(maps, data.object_masks[5:6], tolerance=4)
        assert rows[name]["pointing game"] == pytest.approx(float(hit))
    shown = [m for names in numbers["pictures"].values() for m in names]
    assert shown == [m for m in METHODS if "error" not in rows[m]]
    for url in body["pictures"].values():
        assert decoded(client, url).shape[1] > 64 * 6  # a column per method, headed, with colour scales


def test_top_patches_are_the_strongest_units_by_direct_activations(client, ws):
    numbers = result(client, "patches", layer="relu3", unit=2)["numbers"]
    acts = ws.backend.activations(ws.images, ["relu3"])["relu3"][:, 2].reshape(len(ws.images), -1).max(1)
    best = np.argsort(-acts, kind="stable")[:len(numbers["values"])]
    np.testing.assert_allclose(numbers["values"], acts[best], rtol=1e-5)
    assert sorted(numbers["images"]) == sorted(best.tolist())


def test_dissection_label_is_the_librarys(client, ws):
    assert "Network Dissection label" in client.get("/unit/relu4/7").text
    table = result(client, "dissect", layer="relu4")["numbers"]["table"]
    answer = result(client, "dissect", layer="relu4")["numbers"]
    direct = dissect(ws.backend, "relu4", ws.concepts, progress=False, skip_empty=True)
    assert answer["empty"] == direct.empty_concepts and answer["empty"]  # 12 images lack some colours: said
    direct = direct.table()
    assert [(r["unit"], r["concept"]) for r in table] == [(r["unit"], r["concept"]) for r in direct]
    np.testing.assert_allclose([r["iou"] for r in table], [r["iou"] for r in direct], rtol=1e-6)


def test_unit_map_maximum_is_the_activation(client, ws):
    numbers = result(client, "unit_map", image="data-1", layer="relu2", unit=4)["numbers"]
    a = ws.backend.activations(ws.images[1:2], ["relu2"])["relu2"][0, 4]
    assert numbers["max"] == pytest.approx(float(a.max()), rel=1e-6)
    assert tuple(numbers["peak"]) == np.unravel_index(int(a.argmax()), a.shape)
    maps = result(client, "layer_maps", image="data-1", layer="relu2")
    assert maps["numbers"]["channels"] == 32


def test_upload_any_size_and_mode_then_its_page(client, ws):
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (90, 120, 4), dtype=np.uint8), "RGBA")
    raw = io.BytesIO()
    img.save(raw, format="PNG")
    r = client.post("/upload", content=raw.getvalue(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    image = r.json()["image"]
    page = client.get(r.json()["url"])
    assert page.status_code == 200
    assert "alpha composited on white; resized from 120x90 (crop)" in page.text  # what fitting did, said
    numbers = result(client, "predict", image=image)["numbers"]
    x, _ = fit_image(img, (64, 64), mode="crop")
    np.testing.assert_allclose(numbers["scores"], ws.backend.forward(np.asarray(x, np.float32)[None])[0], atol=1e-4)


@pytest.mark.parametrize("url, status, words", [
    ("/layer/nope", 404, "unknown layer"), ("/unit/conv9/0", 404, "unknown layer"), ("/unit/relu1/16", 404, "0 to 15"),
    ("/unit/relu1/abc", 404, "not a unit"), ("/unit/fc/0", 404, "no spatial"), ("/image/deadbeef", 404, "unknown image"),
    ("/image/data-999", 404, "unknown image"), ("/nowhere", 404, "no page"), ("/data/999.png", 404, "no data image"),
    ("/picture/filters/../../../etc/passwd.png", 404, ""), ("/api/job/explain-1234", 404, "unknown job"),
    ("/api/job/zzz", 404, "unknown job")])
def test_bad_urls_get_an_error_page_not_a_traceback(client, url, status, words):
    r = client.get(url)
    assert r.status_code == status
    assert words in r.text and "Traceback" not in r.text


@pytest.mark.parametrize("query, status, words", [
    ("filters?layer=relu1", 404, "not a convolution"), ("visualize?layer=relu1", 400, "needs unit"),
    ("bogus?layer=relu1", 404, "unknown computation"), ("patches?layer=relu1&unit=-1", 404, "not a unit"),
    ("unit_map?layer=relu1&unit=0&image=../../x", 404, "unknown image")])
def test_bad_computations_are_refused_before_any_pass(client, ws, query, status, words):
    started = ws.jobs.started
    r = client.post(f"/api/ask/{query}")
    assert r.status_code == status and words in r.json()["error"]
    assert ws.jobs.started == started


def test_a_failing_computation_says_one_line_not_a_traceback(ws, monkeypatch):
    def broken(job, **params):
        raise FloatingPointError("the model gave NaN\nsecond line")

    monkeypatch.setattr(ws, "_predict", broken)
    monkeypatch.setattr(ws, "_unit_map", broken)
    with TestClient(make_app(ws), raise_server_exceptions=False) as c:
        r = c.get("/image/data-9")
        assert r.status_code == 500 and "FloatingPointError: the model gave NaN" in r.text
        assert "Traceback" not in r.text and "second line" not in r.text
        body = c.post("/api/ask/unit_map", params={"image": "data-9", "layer": "relu1", "unit": 0}).json()
        ws.jobs.get(body["job"]).finished.wait(30)
        status = c.get(f"/api/job/{body['job']}").json()
        assert status["state"] == "error" and status["error"] == "FloatingPointError: the model gave NaN"


def test_uploads_that_are_not_images_or_too_large(ws):
    with TestClient(make_app(ws, max_upload=2000)) as c:
        r = c.post("/upload", content=b"not an image at all", headers={"Content-Type": "image/png"})
        assert r.status_code == 400 and "not an image" in r.json()["error"]
        r = c.post("/upload", content=b"x" * 10, headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        r = c.post("/upload", content=b"\x89PNG" + b"0" * 5000, headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and "limit" in r.json()["error"]

        def chunks():  # no Content-Length: the body is counted as it comes
            for _ in range(10):
                yield b"0" * 500

        r = c.post("/upload", content=chunks(), headers={"Content-Type": "image/png"})
        assert r.status_code == 413
    bomb = io.BytesIO()  # 72 megapixels in a few kilobytes: refused from its header, before it is decoded
    Image.new("1", (9000, 8000)).save(bomb, format="PNG")
    with TestClient(make_app(ws)) as c:
        r = c.post("/upload", content=bomb.getvalue(), headers={"Content-Type": "image/png"})
        assert r.status_code == 413 and "9000x8000" in r.json()["error"]


def test_cache_second_visit_is_instant_and_survives_a_restart(client, ws, folder):
    root, _ = folder
    first = result(client, "visualize", layer="conv2", unit=3)
    started = ws.jobs.started
    again = client.post("/api/ask/visualize", params={"layer": "conv2", "unit": 3})
    assert again.status_code == 200 and again.json()["state"] == "done" and ws.jobs.started == started
    other = Workspace("demo", data=str(root / "broden"), cache=str(root / "cache"), quick=True)  # a new server
    try:
        with TestClient(make_app(other)) as c:
            r = c.post("/api/ask/visualize", params={"layer": "conv2", "unit": 3})
            assert r.status_code == 200 and r.json()["numbers"] == first["numbers"] and other.jobs.started == 0
    finally:
        other.jobs.shutdown()


def test_concurrent_identical_requests_compute_once(client, ws):
    started = ws.jobs.started
    answers = []

    def ask():
        answers.append(client.post("/api/ask/visualize", params={"layer": "conv3", "unit": 5}).json()["job"])

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(answers)) == 1 and ws.jobs.started == started + 1
    result(client, "visualize", layer="conv3", unit=5)


def test_cancel_stops_between_steps_and_leaves_no_entry(client, ws):
    steps, ws.steps = ws.steps, 100_000  # a job that would run for minutes
    try:
        job = client.post("/api/ask/visualize", params={"layer": "conv4", "unit": 1}).json()["job"]
        deadline = time.time() + 30
        while client.get(f"/api/job/{job}").json()["done"] < 2:
            assert time.time() < deadline
            time.sleep(0.02)
        assert client.post(f"/api/job/{job}/cancel").status_code == 200
        ws.jobs.get(job).finished.wait(30)
        status = client.get(f"/api/job/{job}").json()
        assert status["state"] == "cancelled" and status["done"] < 1000 and status["total"] == 100_000
        assert ws.cache.load("visualize", job.partition("-")[2]) is None
    finally:
        ws.steps = steps
    started = ws.jobs.started  # asking again computes (with the usual steps this time)
    assert client.post("/api/ask/visualize", params={"layer": "conv4", "unit": 1}).status_code == 202
    assert ws.jobs.started == started + 1


def test_cancel_the_image_page_between_two_methods(client, ws):
    job = client.post("/api/ask/explain", params={"image": "data-7"}).json()["job"]
    deadline = time.time() + 60
    while client.get(f"/api/job/{job}").json()["done"] < 1:
        assert time.time() < deadline
        time.sleep(0.01)
    client.post(f"/api/job/{job}/cancel")
    ws.jobs.get(job).finished.wait(60)
    status = client.get(f"/api/job/{job}").json()
    assert status["state"] == "cancelled"
    assert status["done"] < len(METHODS) - 1 and status["total"] == len(METHODS)


def test_nothing_is_written_outside_the_cache(ws, folder, tmp_path):
    root, _ = folder
    before = {p for p in root.rglob("*") if "cache" not in p.relative_to(root).parts}
    with TestClient(make_app(ws)) as c:
        for url in ("/picture/filters/..%2F..%2Fbroden/x.png", "/layer/..%2F..%2Fescape", "/image/..%2Fescape"):
            assert c.get(url).status_code == 404
        c.post("/api/ask/filters", params={"layer": "../../../escape"})
        c.post("/upload", content=b"junk", headers={"Content-Type": "image/png"})
    after = {p for p in root.rglob("*") if "cache" not in p.relative_to(root).parts}
    assert after == before
    cache = Path(ws.cache.root)
    assert all(cache in p.resolve().parents for p in cache.rglob("*"))
    with pytest.raises(ValueError, match="outside"):
        ws.cache.store("../..", "x", {}, {})
    entry = json.loads(next(cache.rglob("numbers.json")).read_text())
    assert isinstance(entry, dict)


def test_cli_parses_serve():
    from convscope.app.cli import build_parser

    args = build_parser().parse_args(["serve", "demo", "--port", "0", "--data", "x", "--preset", "imagenet"])
    assert args.command == "serve" and args.port == 0 and args.host == "127.0.0.1" and args.device is None
    assert build_parser().parse_args(["serve", "demo", "--device", "cuda:1"]).device == "cuda:1"


@pytest.mark.parametrize("argv, words", [(["nope.onnx"], "model file not found"), (["demo", "--port", "70000"], "--port"),
                                         (["demo", "--data", "/no/such/folder"], "data folder not found"),
                                         (["demo", "--n", "0"], "--n must be"),
                                         (["demo:onnx", "--device", "warp"], "available here")])
def test_cli_mistakes_are_one_line(argv, words, capsys):
    from convscope.app.cli import main

    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convscope serve: error: ") and words in err and err.count("\n") == 1



def test_a_job_done_before_its_status_is_read_answers_with_its_entry(client, ws, monkeypatch):
    """The race CI met: the cache is looked at (nothing yet), the job then stores its entry and says
    done, and only then is its status read. The answer must be the entry, never a bare "done"."""
    from convscope.app.serve.jobs import Job

    real_load, looks = ws.cache.load, []

    def load(kind, key):
        looks.append(key)
        return None if len(looks) == 1 else real_load(kind, key)  # the first look: not written yet

    def run(key, what, fn):  # the job runs to its end before the server reads its status
        job = Job(key, what)
        ws.jobs._work(job, fn)
        return job

    monkeypatch.setattr(ws.cache, "load", load)
    monkeypatch.setattr(ws.jobs, "run", run)
    body = client.post("/api/ask/filters", params={"layer": "conv1", "scale": "layer"}).json()
    assert body["state"] == "done" and "filters" in body["pictures"] and "numbers" in body, body
