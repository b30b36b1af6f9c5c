"""The result of :func:`convscope.metrics.compare`: a tidy table that ranks, draws and saves itself."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from ..render import Renderable, Report
from ..render.image import atomic_write
from .result import interval

__all__ = ["Comparison", "COLUMNS", "read_csv"]

#: The columns of :attr:`Comparison.rows`, in order.
COLUMNS = ("model", "framework", "method", "metric", "family", "mean", "ci_low", "ci_high", "n",
           "higher_is_better", "error", "max_map_difference")
_FLOATS = {"mean", "ci_low", "ci_high", "max_map_difference"}


def _format(v, digits=4):
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


class Comparison(Renderable):
    """One row per model x method x metric, with the per-image scores behind each row.

    Attributes
    ----------
    rows : list of dict
        Tidy rows with the keys :data:`COLUMNS`: ``mean`` over the images where the metric is
        defined, ``ci_low``/``ci_high`` its bootstrap interval at ``level``, ``n`` those
        images, ``error`` why a cell has no score ('' when it has one), and
        ``max_map_difference`` the largest |map - reference model's map| over the images
        (None when the models are not comparable).
    scores : dict (model, method, metric) -> (N,) float64, NaN where undefined.
    mean_curves : dict (model, method, metric) -> (fractions, mean score per step) for the metrics
        whose scores come with a curve (deletion, insertion: ``info["curve"]``).
    info : what was compared and what was chosen (the reference model, where masks came from).
    """

    def __init__(self, rows, scores, curves, info, level):
        self.rows, self.scores, self.mean_curves, self.info, self.level = rows, scores, curves, info, level

    @classmethod
    def from_tally(cls, tally, models, frameworks, methods, specs, level, comparable, info):
        rows, scores, curves = [], {}, {}
        for model in models:
            for method in methods:
                diff = tally.diff.get((model, method)) if model in comparable else None
                for spec in specs:
                    cell = (model, method, spec.name)
                    error = tally.errors.get(cell, "")
                    parts = sorted(tally.scores.get(cell, []), key=lambda p: int(p[0][0]))
                    s = np.concatenate([p[1] for p in parts]) if parts and not error else np.zeros(0)
                    scores[cell] = s
                    finite = s[np.isfinite(s)]
                    lo, hi = interval(s, level)
                    rows.append({"model": model, "framework": frameworks[model], "method": method,
                                 "metric": spec.name, "family": spec.family,
                                 "mean": float(finite.mean()) if len(finite) else float("nan"),
                                 "ci_low": lo, "ci_high": hi, "n": int(len(finite)),
                                 "higher_is_better": bool(spec.higher_is_better), "error": error,
                                 "max_map_difference": None if diff is None else float(diff)})
                    if cell in tally.curves and not error:
                        fractions, total, count = tally.curves[cell]
                        curves[cell] = (fractions, total / count)
        return cls(rows, scores, curves, info, level)

    # ----------------------------------------------------------------- views
    @property
    def metrics(self) -> list:
        return list(dict.fromkeys(r["metric"] for r in self.rows))

    @property
    def models(self) -> list:
        return list(dict.fromkeys(r["model"] for r in self.rows))

    def _label(self, row) -> str:
        return f"{row['model']} / {row['method']}" if len(self.models) > 1 else row["method"]

    def ranked(self, metric: str) -> list:
        """The rows of ``metric``, best first by its direction; cells without a score last."""
        rows = [r for r in self.rows if r["metric"] == metric]
        good = [r for r in rows if not r["error"] and np.isfinite(r["mean"])]
        good.sort(key=lambda r: -r["mean"] if r["higher_is_better"] else r["mean"])
        return good + [r for r in rows if r not in good]

    def table(self) -> str:
        """A ranked text table per metric (best first), with the interval, and the reason for
        each cell without a score."""
        out = []
        pct = f"{100 * self.level:g}%"
        for metric in self.metrics:
            rows = self.ranked(metric)
            arrow = "higher" if rows[0]["higher_is_better"] else "lower"
            out.append(f"{metric} ({rows[0]['family']}; {arrow} is better; mean and {pct} interval over images)")
            width = max(len(self._label(r)) for r in rows) + 2
            for rank, r in enumerate(rows, 1):
                if r["error"]:
                    out.append(f"   -  {self._label(r):{width}} {r['error']}")
                    continue
                if r["n"] == 0:
                    out.append(f"   -  {self._label(r):{width}} undefined on every image (NaN scores)")
                    continue
                line = f"  {rank:2d}  {self._label(r):{width}} {_format(r['mean']):>10}  " \
                       f"[{_format(r['ci_low'])}, {_format(r['ci_high'])}]  n={r['n']}"
                if r["max_map_difference"] is not None:
                    line += f"  max map diff {r['max_map_difference']:.2g}"
                out.append(line)
            out.append("")
        return "\n".join(out).rstrip() + "\n"

    def __str__(self):
        return self.table()

    def __repr__(self):
        return (f"Comparison({len(self.models)} models, {len({r['method'] for r in self.rows})} methods, "
                f"{len(self.metrics)} metrics, {len(self.rows)} rows)")

    # ----------------------------------------------------------------- pictures
    def heatmap(self) -> np.ndarray:
        """Methods (per model) x metrics: each metric's means scaled to [0, 1] with 1 the best
        by its direction (grey: no score), each cell labelled with its mean. With more than six
        metrics, and more metrics than methods, the metrics are the rows."""
        from ..render.plots import score_matrix

        labels = list(dict.fromkeys(self._label(r) for r in self.rows))
        metrics = self.metrics
        values = np.full((len(labels), len(metrics)), np.nan)
        texts = [["n/a"] * len(metrics) for _ in labels]
        for r in self.rows:
            i, j = labels.index(self._label(r)), metrics.index(r["metric"])
            if not r["error"] and np.isfinite(r["mean"]):
                values[i, j] = r["mean"]
                texts[i][j] = _format(r["mean"], 3)
            else:
                texts[i][j] = "undefined" if not r["error"] else "skipped" if r["error"].startswith("skipped") else "error"
        colour = np.full_like(values, np.nan)
        for j, metric in enumerate(metrics):
            col = values[:, j]
            ok = np.isfinite(col)
            if not ok.any():
                continue
            lo, hi = col[ok].min(), col[ok].max()
            scaled = np.where(ok, (col - lo) / (hi - lo) if hi > lo else 0.5, np.nan)
            better_high = next(r["higher_is_better"] for r in self.rows if r["metric"] == metric)
            colour[:, j] = scaled if better_high else 1 - scaled
        note = "cells: the mean over images; grey: no score (see the table)"
        if len(metrics) > max(len(labels), 6):  # many metrics: one row each, so the picture stays legible
            return score_matrix(metrics, labels, colour.T, [list(t) for t in zip(*texts)], note=note,
                                title="metrics x methods (colour: 1 = best in the row)")
        return score_matrix(labels, metrics, colour, texts, title="methods x metrics (colour: 1 = best in the column)",
                            note=note)

    def curves_picture(self) -> np.ndarray | None:
        """The mean curve of every curve metric (deletion, insertion), one panel each, one line
        per model x method; None when no metric drew curves."""
        from ..render.annotate import stack
        from ..render.plots import line_chart

        panels = []
        for metric in self.metrics:
            series, x = {}, None
            for (model, method, m), (fractions, mean) in self.mean_curves.items():
                if m == metric:
                    x = fractions if x is None else x
                    if len(fractions) == len(x):
                        series[f"{model} / {method}" if len(self.models) > 1 else method] = mean
            if series:
                panels.append(line_chart(x, series, title=f"{metric}: mean score over images", xlabel="fraction of "
                                         "pixels", ylabel="explained score"))
        return stack(panels) if panels else None

    def curves(self):
        """The deletion/insertion curves as a :class:`~convscope.render.Picture` (None when none)."""
        from ..render import Picture

        rgb = self.curves_picture()
        return None if rgb is None else Picture(rgb, "curves")

    def to_rgb(self) -> np.ndarray:
        return self.heatmap()

    # ----------------------------------------------------------------- files
    def to_csv(self, path=None):
        """Write the rows as CSV (the columns :data:`COLUMNS`) to ``path``; without a path,
        return the text. Read it back with :func:`read_csv`."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({k: ("" if r[k] is None else repr(r[k]) if isinstance(r[k], float) else r[k])
                             for k in COLUMNS})
        if path is None:
            return buf.getvalue()
        return atomic_write(path, buf.getvalue())

    def to_html(self) -> str:
        """The whole page: the ranked tables, the heat map, the curves (images inline)."""
        report = Report("convscope compare", f"{len(self.models)} models, {len(self.metrics)} metrics, "
                        f"{100 * self.level:g}% bootstrap intervals over images")
        report.section("What was compared")
        for key, value in self.info.items():
            text = ", ".join(f"{k} ({v})" for k, v in value.items()) if isinstance(value, dict) else str(value)
            report.text(f"{key}: {text}")
        report.section("Methods x metrics").picture(self.heatmap(), "each column scaled so that 1 is the best")
        curves = self.curves_picture()
        if curves is not None:
            report.section("Curves").picture(curves, "mean explained score as pixels are deleted or inserted")
        for metric in self.metrics:
            rows = [{"rank": i + 1 if not r["error"] and r["n"] else "-", **{k: r[k] for k in COLUMNS if k != "metric"}}
                    for i, r in enumerate(self.ranked(metric))]
            for r in rows:  # a difference of 3e-7 is not 0.0000
                d = r["max_map_difference"]
                r["max_map_difference"] = "" if d is None else f"{d:.2g}"
            report.section(f"{metric} ({'higher' if rows[0]['higher_is_better'] else 'lower'} is better)")
            report.table(rows, digits=4)
        return report.to_html()

    def _repr_html_(self) -> str:
        return self.to_html()

    def save(self, path, *, scale: int = 1):
        """Write ``.png`` (the heat map), ``.html`` (the whole self-contained page) or ``.csv``."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".html":
            return atomic_write(path, self.to_html())
        if suffix == ".csv":
            return self.to_csv(path)
        if suffix != ".png":
            from .._validate import param_error

            raise param_error("path", "Comparison.save", "a .png, .html or .csv path", repr(str(path)))
        return super().save(path, scale=scale)


def read_csv(path) -> list:
    """The rows of a CSV written by :meth:`Comparison.to_csv`, with their types restored."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for k in COLUMNS:
                v = raw[k]
                if k in _FLOATS:
                    row[k] = None if v == "" else float(v)
                elif k == "n":
                    row[k] = int(v)
                elif k == "higher_is_better":
                    row[k] = v == "True"
                else:
                    row[k] = v
            rows.append(row)
    return rows

