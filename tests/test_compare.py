"""convscope.metrics.compare: one table over models x methods x metrics.

References: the metrics called one by one on the same maps (the table must hold their scores,
not its own), the bootstrap interval of result.interval on those scores, a toy metric
registered for the test whose scores are worked out by hand, and the same table computed
another way (three frameworks, batches, Dask shards)."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import convscope
from convscope import attribution
from convscope.attribution import AttributionMaps
from convscope.data import demo_model, shapes
from convscope.metrics import METRICS, Comparison, compare, deletion, pointing_game, register_metric
from convscope.metrics.comparison import COLUMNS, read_csv
from convscope.metrics.result import MetricScores, interval

pytestmark = pytest.mark.backend("torch")

METRICS_USED = ["deletion", "insertion", "pointing_game"]
FAST = {"deletion": {"steps": 6}, "insertion": {"steps": 6}}


@pytest.fixture(scope="module")
def data():
    return shapes(6, seed=3)


@pytest.fixture(scope="module")
def torch_table(data):
    return compare(demo_model("torch"), ["grad_cam", "saliency"], METRICS_USED, data, options=FAST, batch_size=4)


def _means(table):
    return {(r["method"], r["metric"]): r["mean"] for r in table.rows}


class CountingForward:
    """Counts forward calls of a torch module (hooks removed on exit)."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda *a: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def test_rows_hold_the_metrics_own_scores_and_intervals(torch_table, data):
    t = torch_table
    assert isinstance(t, Comparison) and len(t.rows) == 1 * 2 * 3
    assert all(tuple(r) == COLUMNS for r in t.rows)
    model = demo_model("torch")
    x, masks = data.images, data.object_masks
    for method in ("grad_cam", "saliency"):
        maps = getattr(attribution, method)(model, x)
        expected = {"deletion": deletion(model, x, maps, steps=6).auc,
                    "pointing_game": pointing_game(maps, masks, per_sample=True).astype(float)}
        for r in t.rows:
            if r["method"] != method or r["metric"] not in expected:
                continue
            s = expected[r["metric"]]
            np.testing.assert_allclose(t.scores[r["model"], method, r["metric"]], s, rtol=1e-5, atol=1e-6)
            assert r["mean"] == pytest.approx(s.mean(), rel=1e-5)
            lo, hi = interval(s, 0.95)
            assert (r["ci_low"], r["ci_high"]) == pytest.approx((lo, hi), rel=1e-5, abs=1e-6)
            assert r["ci_low"] <= r["mean"] <= r["ci_high"] and r["n"] == len(x) and r["error"] == ""
            assert r["higher_is_better"] == METRICS[r["metric"]].higher_is_better
    assert t.info["masks"].startswith("masks: the dataset's object_masks")
    assert all(r["max_map_difference"] is None for r in t.rows) and "one model" in t.info["reference"]


def test_table_ranks_by_direction_and_renders(torch_table, tmp_path):
    t = torch_table
    for metric in METRICS_USED:
        means = [r["mean"] for r in t.ranked(metric)]
        assert means == sorted(means, reverse=METRICS[metric].higher_is_better)
    text = t.table()
    assert text.index("deletion (faithfulness; lower is better") < text.index("insertion (faithfulness; higher")
    png, page = t.save(tmp_path / "h.png"), t.save(tmp_path / "t.html")
    assert png.read_bytes()[:4] == b"\x89PNG" and t.heatmap().shape[2] == 3
    html = page.read_text()
    assert "data:image/png;base64," in html and "http" not in html.replace("http-equiv", "")
    assert t.curves() is not None and t.curves_picture().shape[0] > 200  # deletion and insertion panels
    assert "<table>" in t._repr_html_()


def test_csv_round_trip(torch_table, tmp_path):
    path = torch_table.to_csv(tmp_path / "t.csv")
    back = read_csv(path)
    assert len(back) == len(torch_table.rows)
    for a, b in zip(torch_table.rows, back):
        for k in COLUMNS:
            if isinstance(a[k], float):
                assert b[k] == a[k] or (math.isnan(a[k]) and math.isnan(b[k]))
            else:
                assert b[k] == a[k], k


@pytest.fixture
def toy_metric():
    """A metric registered for the test only: the mean of each map, NaN where it is negative."""
    @register_metric("toy_map_mean", "complexity", higher_is_better=False, needs=("maps",))
    def toy(maps, **options):
        m = np.asarray(getattr(maps, "maps", maps), np.float64).mean(axis=(1, 2))
        return MetricScores("toy_map_mean", np.where(m < 0, np.nan, m), False, {"choices": {"pixels": "all of them"}})
    try:
        yield "toy_map_mean"
    finally:
        del METRICS["toy_map_mean"]


def test_hand_computed_means_intervals_and_undefined_images(toy_metric):
    x = np.zeros((4, 3, 2, 2), np.float32)
    x[:, 0, 0, 0] = [0.25, 0.5, -0.5, 1.0]  # map mean = this / 4 (one pixel of four): 1/16, 1/8, NaN, 1/4

    def first_pixel(model, x, target=None):
        return AttributionMaps(x[:, 0], x, "first_pixel")

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    t = compare(net, {"first": first_pixel}, [toy_metric], x, batch_size=3)
    (row,) = t.rows
    assert row["method"] == "first" and row["family"] == "complexity" and row["higher_is_better"] is False
    assert row["n"] == 3 and row["mean"] == pytest.approx((1 / 16 + 1 / 8 + 1 / 4) / 3)
    assert np.isnan(t.scores["Sequential", "first", toy_metric][2])
    assert t.info["choices"] == {toy_metric: {"pixels": "all of them"}}  # what the metric chose is said
    assert t.info["target"].startswith("each model's predicted class")
    # bootstrap of three values: the interval lies within their range, around the mean
    assert 1 / 16 <= row["ci_low"] < row["mean"] < row["ci_high"] <= 1 / 4
    assert (row["ci_low"], row["ci_high"]) == interval([1 / 16, 1 / 8, 1 / 4])


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 16), torch.nn.ReLU(),
                               torch.nn.Linear(16, 4)).eval()


def test_a_method_that_does_not_apply_is_reported_in_its_cells(data):
    mlp = _mlp()
    t = compare({"cnn": demo_model("torch"), "mlp": mlp}, ["grad_cam", "saliency"], ["deletion", "pointing_game"],
                data.images[:3], options={"deletion": {"steps": 4}})
    cells = {(r["model"], r["method"], r["metric"]): r for r in t.rows}
    assert len(cells) == 2 * 2 * 2
    for metric in ("deletion", "pointing_game"):
        bad = cells["mlp", "grad_cam", metric]
        assert "grad_cam on mlp" in bad["error"] and "spatial" in bad["error"].lower() and math.isnan(bad["mean"])
    # no masks: the masks metric is skipped per cell, with the reason, while the others compute
    for model, method in (("cnn", "grad_cam"), ("cnn", "saliency"), ("mlp", "saliency")):
        assert cells[model, method, "pointing_game"]["error"].startswith("skipped: no masks")
        assert cells[model, method, "deletion"]["error"] == "" and cells[model, method, "deletion"]["n"] == 3
    assert "skipped" in t.table() and "grad_cam on mlp" in t.table()
    # the failing method left the model as it was
    assert not mlp.training and all(p.requires_grad for p in mlp.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in mlp.modules())
    assert t.heatmap().shape[0] > 0  # grey cells drawn


def test_invalid_arguments_raise_before_any_pass(data):
    model = demo_model("torch")
    x = data.images[:2]
    with CountingForward(model) as counter:
        with pytest.raises(ValueError, match=r"'metrics' parameter of compare.*'delition'.*did you mean 'deletion'"):
            compare(model, ["grad_cam"], ["delition"], x)
        with pytest.raises(ValueError, match=r"'masks' parameter of compare.*one mask per image"):
            compare(model, ["grad_cam"], ["pointing_game"], x, masks=np.zeros((2, 32, 32), bool))
        with pytest.raises(ValueError, match=r"'masks' parameter of compare.*boolean"):
            compare(model, ["grad_cam"], ["pointing_game"], x, masks=np.zeros((2, 64, 64), np.float32))
        with pytest.raises(ValueError, match=r"'methods' parameter of compare.*did you mean 'grad_cam'"):
            compare(model, ["grad_kam"], ["deletion"], x)
        with pytest.raises(ValueError, match=r"'options' parameter of compare.*'insertoin'"):
            compare(model, ["grad_cam"], ["insertion"], x, options={"insertoin": {"steps": 2}})
        with pytest.raises(ValueError, match=r"'reference' parameter of compare"):
            compare({"a": model}, ["grad_cam"], ["deletion"], x, reference="b")
        with pytest.raises(ValueError, match=r"'level' parameter"):
            compare(model, ["grad_cam"], ["deletion"], x, level=1.5)
        with pytest.raises(ValueError, match=r"'target' parameter of compare.*one int per sample"):
            compare(model, ["grad_cam"], ["deletion"], x, target=[0, 1, 2])
    assert counter.calls == 0
    # images the model cannot take: known once the backend is loaded (its probe), before any pass on them
    with pytest.raises(ValueError, match=r"'data' parameter of compare.*3 channels"):
        compare(model, ["grad_cam"], ["deletion"], x[:, :1])
    assert not model.training and all(p.requires_grad for p in model.parameters())


def test_metric_families_and_all(data):
    t = compare(demo_model("torch"), ["saliency"], ["localisation"], data.images[:2],
                masks=data.object_masks[:2])
    assert {r["metric"] for r in t.rows} == {n for n, s in METRICS.items() if s.family == "localisation"}
    with pytest.raises(ValueError, match="did you mean 'localisation'"):
        compare(demo_model("torch"), ["saliency"], ["localization"], data.images[:2])


def test_streaming_batches_give_the_table_of_one_array(data, torch_table):
    x, masks = data.images, data.object_masks
    one = compare(demo_model("torch"), ["grad_cam", "saliency"], METRICS_USED, x, masks=masks, options=FAST)
    pair = compare(demo_model("torch"), ["grad_cam", "saliency"], METRICS_USED, (x, masks), options=FAST)
    stream = compare(demo_model("torch"), ["grad_cam", "saliency"], METRICS_USED,
                     ((x[i:i + 4], masks[i:i + 4]) for i in range(0, 6, 4)), options=FAST)
    with pytest.raises(ValueError, match=r"'masks' parameter of compare.*boolean masks of shape \(4, 64, 64\)"):
        compare(demo_model("torch"), ["saliency"], ["pointing_game"], iter([(x[:4], masks[:4, :32])]))
    for table in (stream, pair, torch_table):
        for a, b in zip(one.rows, table.rows):
            assert (a["method"], a["metric"], a["n"]) == (b["method"], b["metric"], b["n"])
            assert b["mean"] == pytest.approx(a["mean"], rel=1e-6)
            assert (b["ci_low"], b["ci_high"]) == pytest.approx((a["ci_low"], a["ci_high"]), rel=1e-6)


@pytest.mark.slow
def test_three_frameworks_give_the_same_table(data):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tensorflow")
    models = {"torch": demo_model("torch"), "onnx": demo_model("onnx"), "keras": demo_model("keras")}
    t = compare(models, ["grad_cam", "saliency"], METRICS_USED, data, options=FAST)
    assert len(t.rows) == 3 * 2 * 3 and t.info["models"] == {"torch": "torch", "onnx": "onnx", "keras": "keras"}
    assert t.info["reference"].startswith("torch (chosen")
    by = {(r["model"], r["method"], r["metric"]): r for r in t.rows}
    for (model, method, metric), r in by.items():
        ref = by["torch", method, metric]
        assert r["framework"] == model and r["error"] == ""
        assert abs(r["mean"] - ref["mean"]) < 1e-4, (model, method, metric)
        np.testing.assert_allclose(t.scores[model, method, metric], t.scores["torch", method, metric], atol=1e-4)
        assert r["max_map_difference"] < 1e-4
    assert by["torch", "grad_cam", "deletion"]["max_map_difference"] == 0.0
    assert "torch / grad_cam" in t.table()


def test_models_that_differ_leave_the_map_difference_empty(data):
    five = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 5)).eval()
    t = compare({"demo": demo_model("torch"), "five": five}, ["saliency"], ["deletion"], data.images[:2],
                options={"deletion": {"steps": 2}})
    assert all(r["max_map_difference"] is None for r in t.rows)
    assert "differ in output count" in t.info["reference"]


@pytest.mark.slow
def test_dask_client_gives_the_same_table(data, torch_table):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        t = compare(demo_model("torch"), ["grad_cam", "saliency"], METRICS_USED, data, options=FAST, batch_size=4,
                    client=client)
    for a, b in zip(torch_table.rows, t.rows):
        assert (a["method"], a["metric"], a["n"]) == (b["method"], b["metric"], b["n"])
        assert b["mean"] == pytest.approx(a["mean"], rel=1e-6, abs=1e-9)
    for cell, s in torch_table.scores.items():
        np.testing.assert_allclose(t.scores[cell], s, rtol=1e-6)


def test_top_level_name():
    assert convscope.metrics.compare is compare and convscope.compare is compare


def test_heat_map_colours_by_direction_and_turns_for_many_metrics(monkeypatch):
    import convscope.render.plots as plots

    def row(method, metric, mean, higher, error=""):
        return {"model": "m", "framework": "torch", "method": method, "metric": metric, "family": "complexity",
                "mean": mean, "ci_low": mean, "ci_high": mean, "n": 0 if error or mean != mean else 3,
                "higher_is_better": higher, "error": error, "max_map_difference": None}

    drawn, draw = {}, plots.score_matrix

    def spy(rows_, cols, colour, texts, **kw):
        drawn.update(rows=rows_, cols=cols, colour=np.asarray(colour), texts=texts)
        return draw(rows_, cols, colour, texts, **kw)

    monkeypatch.setattr(plots, "score_matrix", spy)
    rows = [row("a", "up", 1.0, True), row("b", "up", 3.0, True), row("a", "down", 1.0, False),
            row("b", "down", 3.0, False), row("a", "nan", float("nan"), True), row("b", "nan", 2.0, True, "skipped: x")]
    Comparison(rows, {}, {}, {}, 0.95).heatmap()
    assert drawn["rows"] == ["a", "b"] and drawn["cols"] == ["up", "down", "nan"]
    np.testing.assert_array_equal(drawn["colour"][:, :2], [[0, 1], [1, 0]])  # 1 = best by the direction
    assert np.isnan(drawn["colour"][:, 2]).all() and drawn["texts"][0][2] == "undefined"
    assert drawn["texts"][1][2] == "skipped"
    many = [row("a", f"k{i}", float(i), True) for i in range(8)]
    rgb = Comparison(many, {}, {}, {}, 0.95).heatmap()
    assert drawn["rows"] == [f"k{i}" for i in range(8)] and drawn["cols"] == ["a"]  # eight metrics: the rows
    assert rgb.shape[0] > rgb.shape[1]
