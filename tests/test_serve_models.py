"""``convscope serve`` on each kind of model file: a torch module from ``module:factory`` (its
weights key the cache), the ONNX file (also with no framework importable) and the Keras file,
each checked against the framework itself or the same weights on another backend."""
import io
import json

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install convscope[serve])")
pytest.importorskip("httpx", reason="Starlette's TestClient needs httpx")
pytest.importorskip("torch")
from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from convscope.app.serve.compute import Workspace  # noqa: E402
from convscope.app.serve.server import make_app  # noqa: E402
from convscope.data import shapes  # noqa: E402
from convscope.preprocess import fit_image  # noqa: E402
from test_serve_api import folder, result, ws  # noqa: E402,F401  (the fixtures: the demo model on a Broden folder)


def test_onnx_file_gives_the_same_numbers(folder, ws):
    pytest.importorskip("onnxruntime")
    from convscope.data import demo_path

    root, _ = folder
    other = Workspace(str(demo_path("onnx")), data=str(root / "broden"), cache=str(root / "cache"), quick=True)
    try:
        with TestClient(make_app(other)) as c:
            assert c.get("/").status_code == 200
            numbers = result(c, "predict", image="data-2")["numbers"]
        np.testing.assert_allclose(numbers["scores"], ws.backend.forward(ws.images[2:3])[0], atol=1e-4)
        assert other.cache.folder != ws.cache.folder  # another model file, another cache
    finally:
        other.jobs.shutdown()


TINY_NET = """
import torch
from torch import nn


def make(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))


def factory():
    return make(0)


def other():
    return make(1)
"""


def test_torch_module_factory_and_its_weights_key_the_cache(tmp_path, monkeypatch):
    import torch

    (tmp_path / "tiny_serve_net.py").write_text(TINY_NET)
    monkeypatch.chdir(tmp_path)
    spaces = [Workspace(spec, cache=str(tmp_path / "cache"), quick=True)
              for spec in ("tiny_serve_net:factory", "tiny_serve_net:factory", "tiny_serve_net:other")]
    try:
        assert spaces[0].cache.folder == spaces[1].cache.folder != spaces[2].cache.folder  # the weights' hash
        rows = {r["name"]: r for r in spaces[0].layer_rows()}  # no input_shape declared: sizes from the served images
        assert (rows["0"]["shape"], rows["0"]["receptive field"]) == ("4x32x32", "3x3")
        assert (rows["2"]["shape"], rows["2"]["receptive field"]) == ("5x32x32", "7x7")  # by hand: 3 + (3 - 1) * 2
        img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8))
        raw = io.BytesIO()
        img.save(raw, format="JPEG")
        with TestClient(make_app(spaces[0])) as c:
            assert c.get("/").status_code == 200 and c.get("/layer/0").status_code == 200
            image = c.post("/upload", content=raw.getvalue(), headers={"Content-Type": "image/jpeg"}).json()["image"]
            numbers = result(c, "predict", image=image)["numbers"]
            assert result(c, "filters", layer="0")["numbers"]["rgb"] is True
        with Image.open(io.BytesIO(c.app.state.workspace.cache.image_path(image).read_bytes())) as stored:
            x, _ = fit_image(stored, (64, 64), mode="crop")
        import tiny_serve_net

        with torch.no_grad():  # the reference: the module itself, called by torch
            expected = tiny_serve_net.factory()(torch.from_numpy(np.asarray(x, np.float32)[None]))[0].numpy()
        np.testing.assert_allclose(numbers["scores"], expected, rtol=1e-5, atol=1e-6)
    finally:
        for space in spaces:
            space.jobs.shutdown()


NO_FRAMEWORK = """
import io, json, sys
for name in ("torch", "tensorflow", "keras", "tf_keras", "jax"):
    sys.modules[name] = None  # any import of it raises ImportError
import numpy as np
from PIL import Image
from starlette.testclient import TestClient
from convscope.app.serve.compute import Workspace
from convscope.app.serve.server import make_app
from convscope.data import demo_path, shapes

ws = Workspace(str(demo_path("onnx")), cache=sys.argv[1], quick=True)
with TestClient(make_app(ws)) as c:
    assert c.get("/").status_code == 200
    raw = io.BytesIO()
    Image.fromarray((shapes(1, seed=2).images[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(raw, "PNG")
    image = c.post("/upload", content=raw.getvalue(), headers={"Content-Type": "image/png"}).json()["image"]
    for kind, params in (("predict", {"image": image}), ("visualize", {"layer": "relu2", "unit": 1}),
                         ("unit_map", {"image": image, "layer": "relu3", "unit": 0})):
        body = c.post(f"/api/ask/{kind}", params=params).json()
        while body["state"] == "running":
            body = c.get(f"/api/job/{body['job']}").json()
        assert body["state"] == "done", body
        print(json.dumps({kind: body["numbers"]}))
ws.jobs.shutdown()
"""


def test_onnx_file_with_no_framework_installed(tmp_path, ws):
    import subprocess
    import sys

    pytest.importorskip("onnxruntime")
    proc = subprocess.run([sys.executable, "-c", NO_FRAMEWORK, str(tmp_path / "cache")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    answers = {k: v for line in proc.stdout.splitlines() for k, v in json.loads(line).items()}
    x = shapes(1, seed=2).images[:1]
    x = np.round(x * 255) / 255  # as the PNG upload holds it
    np.testing.assert_allclose(answers["predict"]["scores"], ws.backend.forward(x.astype(np.float32))[0], atol=1e-4)
    a = ws.backend.activations(x.astype(np.float32), ["relu3"])["relu3"][0, 0]
    assert answers["unit_map"]["max"] == pytest.approx(float(a.max()), rel=1e-4, abs=1e-5)
    assert np.isfinite(answers["visualize"]["objective"])  # the ONNX adjoint graph's gradient steps ran


@pytest.mark.slow
def test_keras_file_gives_the_same_numbers(folder, ws):
    pytest.importorskip("keras")
    from convscope.data import demo_path

    root, _ = folder
    other = Workspace(str(demo_path("keras")), data=str(root / "broden"), cache=str(root / "cache"), quick=True)
    try:
        with TestClient(make_app(other)) as c:
            assert c.get("/").status_code == 200
            numbers = result(c, "predict", image="data-2")["numbers"]
            rows = result(c, "patches", layer=other.layer_names[2], unit=0)["numbers"]
        np.testing.assert_allclose(numbers["scores"], ws.backend.forward(ws.images[2:3])[0], atol=1e-4)
        assert len(rows["values"]) == 9
    finally:
        other.jobs.shutdown()
