"""``convscope serve``: time to first byte of an image page, cold and cached, on the demo model.

The server is started by the command (uvicorn, one worker thread per job) on a free port with a
fresh cache folder and a data folder of generated shapes. For each of three images never seen:
the image page's time to first byte cold (its prediction computed) and then cached, and the time
until every attribution method's maps and scores are ready (the page's explain job) cold and
cached. The reference is the library's own time for the same work in this process (one forward
pass; the same methods and deletion curves called directly), interleaved with the server's runs
so that both see the same load.

    python -m benchmarks.serve_speed
"""
from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _folder(root: Path, n: int = 16):
    from PIL import Image

    from convscope.data import DEMO_CLASSES, shapes

    data = shapes(n, seed=5)
    for i, (image, label) in enumerate(zip(data.images, data.labels)):
        folder = root / DEMO_CLASSES[int(label)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype("uint8")).save(folder / f"{i}.png")


def _request(port, method, path):
    """(seconds to the first byte of the answer, status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    start = time.perf_counter()
    conn.request(method, path)
    response = conn.getresponse()  # returns once the status line has arrived
    first = time.perf_counter() - start
    body = response.read()
    conn.close()
    return first, response.status, body


def _explain(port, image):
    """Seconds until the explain job of ``image`` is done (asked, then polled every 50 ms, as a page polls)."""
    start = time.perf_counter()
    _, status, body = _request(port, "POST", f"/api/ask/explain?image={image}")
    state = json.loads(body)
    while state["state"] == "running":
        time.sleep(0.05)
        state = json.loads(_request(port, "GET", f"/api/job/{state['job']}")[2])
    if state["state"] != "done":
        raise RuntimeError(state)
    return time.perf_counter() - start


def _library(model, folder):
    """The library's own work for one image page: ``(forward(i), explain(i))``, each returning its seconds."""
    import numpy as np

    import convscope
    from convscope.app.commands import METHODS
    from convscope.app.inputs import read_folder
    from convscope.app.report import demo_settings
    from convscope.app.serve.compute import explain_one, score_one
    from convscope.data import demo_model

    backend = convscope.load(demo_model(model))
    data = read_folder(folder, (64, 64))
    x_all = np.concatenate([b.images for b in data.batches(64, 0, None, owner="bench")])
    settings = demo_settings(True)

    def forward(i):
        start = time.perf_counter()
        backend.forward(x_all[i:i + 1])
        return time.perf_counter() - start

    def explain(i):
        x = x_all[i:i + 1]
        start = time.perf_counter()
        k = int(backend.forward(x)[0].argmax())
        for name in METHODS:
            try:
                score_one(backend, x, explain_one(backend, x, name, k, settings), k, None, settings["deletion_steps"])
            except (ValueError, TypeError, ImportError):
                pass
        return time.perf_counter() - start

    explain(15)  # warm-up, as the server's
    return forward, explain


def run(model: str = "torch", images=(0, 1, 2), repeat: int = 20) -> list[str]:
    from convscope.app.serve.server import free_port

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _folder(tmp / "data")
        port = free_port()
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        proc = subprocess.Popen([sys.executable, "-m", "convscope.app.cli", "serve", f"demo:{model}", "--data",
                                 str(tmp / "data"), "--cache", str(tmp / "cache"), "--port", str(port), "--quick"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            proc.stdout.readline()
            deadline = time.time() + 120
            while True:
                try:
                    _request(port, "GET", "/")
                    break
                except OSError:
                    if time.time() > deadline or proc.poll() is not None:
                        raise RuntimeError("the server did not start")
                    time.sleep(0.1)
            _request(port, "GET", "/image/data-15")  # warm-up: first passes through the model
            _explain(port, "data-15")
            forward, explain = _library(model, tmp / "data")
            cold, cached, explain_cold, explain_cached, direct_forward, direct = [], [], [], [], [], []
            for i in images:  # server and library interleaved, so both see the same load
                cold.append(_request(port, "GET", f"/image/data-{i}")[0])
                cached += [_request(port, "GET", f"/image/data-{i}")[0] for _ in range(repeat)]
                direct_forward += [forward(i) for _ in range(repeat)]
                explain_cold.append(_explain(port, f"data-{i}"))
                direct.append(explain(i))
                explain_cached += [_explain(port, f"data-{i}") for _ in range(repeat // 4)]
        finally:
            proc.terminate()
            proc.wait(30)
    med = statistics.median
    forward, explain = med(direct_forward), med(direct)
    rows.append(f"| image page, time to first byte, {model} demo | {med(cold) * 1e3:.1f} | {med(cached) * 1e3:.1f} | "
                f"{forward * 1e3:.1f} | {med(cold) / med(cached):.1f} |")
    rows.append(f"| every attribution method + deletion, ready, {model} demo | {med(explain_cold) * 1e3:.0f} | "
                f"{med(explain_cached) * 1e3:.1f} | {explain * 1e3:.0f} | {med(explain_cold) / med(explain_cached):.0f} |")
    rows.append(f"| cold server / library direct (explain), {model} demo | | | | {med(explain_cold) / explain:.2f} |")
    return rows


def main():
    from convscope.app.bench import limit_threads

    limit_threads(1)
    print("| case | cold ms | cached ms | library ms | cold / cached |\n|---|---:|---:|---:|---:|")
    for model in ("torch", "onnx"):
        print("\n".join(run(model)))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"\nLibrary ms: the same work called in this process (a forward pass; every method and its deletion "
          f"curve). Load average {load:.1f} at the end (the ratios are of one run on a shared machine).")


if __name__ == "__main__":
    main()
