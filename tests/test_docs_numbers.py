"""The numbers docs/attribution.md quotes are those of the demo pipeline (docs/demo_pictures.py
writes them), and a fresh computation with the library gives them again.

Tolerance: the pointing game within one image of the 64 (1/64 = 0.016: a map whose two highest
pixels tie may peak elsewhere on another CPU), deletion AUC within 0.01.
"""
import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The full demo's settings for the scored images (convscope.app.report.demo_settings), restated here.
SCORED, TOLERANCE_PX, DELETION_STEPS = 64, 4, 12
OPTIONS = {"smoothgrad": {"samples": 16}, "integrated_gradients": {"steps": 24}, "occlusion": {"window": 8, "stride": 8},
           "score_cam": {"output": "probability"}}
#: Recomputed in the test (the other rows come from the same run, checked against demo_numbers.json).
CHECKED = ("grad_cam", "integrated_gradients", "score_cam")


def quoted():
    text = (DOCS / "attribution.md").read_text()
    block = text.split("<!-- demo-numbers:start -->")[1].split("<!-- demo-numbers:end -->")[0]
    rows = re.findall(r"^\| (\w+) \| ([\d.]+) \| ([\d.]+) \|$", block, re.M)
    return {m: (float(p), float(d)) for m, p, d in rows}


def test_the_docs_quote_the_demo_pipelines_numbers():
    numbers = json.loads((DOCS / "demo_numbers.json").read_text())
    from convscope.app.report import SALIENCY, CAMS, demo_settings

    settings = demo_settings(quick=False)
    assert numbers["settings"]["scored"] == settings["scored"] == SCORED  # rerun docs/demo_pictures.py when they change
    assert numbers["settings"]["options"] == settings["options"] == OPTIONS
    assert numbers["settings"]["deletion_steps"] == settings["deletion_steps"] == DELETION_STEPS
    table = quoted()
    assert set(table) == set(SALIENCY) | set(CAMS)
    for row in numbers["methods"]:
        assert table[row["method"]] == (round(row["pointing game"], 3), round(row["deletion AUC (lower is better)"], 3))


def test_a_fresh_run_gives_the_quoted_numbers():
    pytest.importorskip("torch")
    import convscope
    from convscope import metrics
    from convscope.data import demo_model, shapes

    data = shapes(200, seed=21)  # the demo's images; the first SCORED are scored
    x, labels, masks = data.images[:SCORED], data.labels[:SCORED], data.object_masks[:SCORED]
    backend = convscope.load(demo_model())
    table = quoted()
    for method in CHECKED:
        maps = getattr(convscope, method)(backend, x, labels, **OPTIONS.get(method, {}))
        pointing = float(metrics.pointing_game(maps, masks, tolerance=TOLERANCE_PX))
        auc = float(metrics.deletion(backend, x, maps, labels, steps=DELETION_STEPS, output="probability").auc.mean())
        assert abs(pointing - table[method][0]) <= 1 / SCORED + 1e-9, (method, pointing, table[method])
        assert abs(auc - table[method][1]) <= 0.01, (method, auc, table[method])
    assert np.isfinite(auc)
