"""Localisation and complexity metrics against Quantus on the same maps, as ratios in one run.

    python -m benchmarks.metrics_speed [--n 64] [--repeat 15]

The maps are the demo torch model's Grad-CAM of ``shapes(n)`` (64 x 64) with a little noise
(no ties, some negative relevance), the masks the dataset's object masks. Each convscope metric
is timed against the Quantus 0.6 metric configured to the same definition (the settings the
tests check to 1e-6: ``normalise=False``; the positive part given to ``RelevanceMassAccuracy``;
``AttributionLocalisation`` on the masks' bounding boxes for the energy-based pointing game,
whose boxes are computed outside its timing while convscope computes them inside). Quantus is
given the demo model it requires but does not run. Times are medians of interleaved calls;
the target is a ratio of at most 0.5 of Quantus's call. A second ratio is to Quantus's
``evaluate_batch`` alone (its arithmetic, without the checks and preparation of its
``__call__``, which are most of its time on maps this small) so the numerics are compared too.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

from ._timing import machine, measure

TARGET = 0.5


def cases(n: int = 64):
    """(name, convscope call, (Quantus call, Quantus's evaluate_batch alone)) for each metric on
    one set of maps."""
    import quantus

    from convscope import metrics as M
    from convscope.attribution import grad_cam
    from convscope.data import demo_model, shapes
    from convscope.metrics.localisation import bounding_boxes

    model = demo_model("torch")
    data = shapes(n, seed=0)
    cams = grad_cam(model, data.images).maps
    maps = cams + np.random.default_rng(0).normal(0, 1e-3 * cams.max(), cams.shape).astype(np.float32)
    masks = data.object_masks
    s_batch = masks[:, None].astype(np.float32)
    boxes = bounding_boxes(masks)[:, None].astype(np.float32)
    a_batch = maps[:, None]

    def peer(metric, a=a_batch, s=s_batch, **options):
        instance = getattr(quantus, metric)(disable_warnings=True, normalise=False, **options)
        # a fresh copy per call: Quantus's Sparseness adds 1e-7 to the array it is given
        whole = lambda: instance(model=model, x_batch=data.images, y_batch=data.labels,  # noqa: E731
                                 a_batch=a.copy(), s_batch=s, channel_first=True, device="cpu")
        arithmetic = lambda: instance.evaluate_batch(x_batch=data.images, a_batch=a.copy(), s_batch=s)  # noqa: E731
        return whole, arithmetic

    return [
        ("relevance_mass_accuracy", lambda: M.relevance_mass_accuracy(maps, masks),
         peer("RelevanceMassAccuracy", np.maximum(a_batch, 0))),
        ("relevance_rank_accuracy", lambda: M.relevance_rank_accuracy(maps, masks), peer("RelevanceRankAccuracy")),
        ("top_k_intersection (k=1000)", lambda: M.top_k_intersection(maps, masks, k=1000),
         peer("TopKIntersection", k=1000)),
        ("mask_auc", lambda: M.mask_auc(maps, masks), peer("AUC")),
        ("energy_pointing_game", lambda: M.energy_pointing_game(maps, masks),
         peer("AttributionLocalisation", s=boxes, positive_attributions=True, abs=False)),
        ("sparseness", lambda: M.sparseness(maps), peer("Sparseness")),
        ("complexity", lambda: M.complexity(maps), peer("Complexity")),
        ("effective_complexity", lambda: M.effective_complexity(maps), peer("EffectiveComplexity")),
    ]


def table(n: int = 64, repeat: int = 15) -> str:
    """A markdown table: each metric's median time, Quantus's, and the ratio."""
    import quantus

    lines = [f"{n} Grad-CAM maps of 64 x 64 (demo torch model, shapes({n})), medians of {repeat} interleaved calls; "
             f"Quantus {quantus.__version__}.", "",
             "| metric | convscope ms | Quantus ms | ratio | target | Quantus evaluate_batch ms | ratio to it |",
             "|---|---:|---:|---:|---|---:|---:|"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, ours, (theirs, arithmetic) in cases(n):
            t = measure({"ours": ours, "quantus": theirs, "core": arithmetic}, repeat=repeat)
            ratio = t["ours"] / t["quantus"]
            flag = "ok" if ratio <= TARGET else "MISSED"
            lines.append(f"| {name} | {t['ours'] * 1e3:.2f} | {t['quantus'] * 1e3:.2f} | {ratio:.2f} | "
                         f"<= {TARGET} {flag} | {t['core'] * 1e3:.2f} | {t['ours'] / t['core']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metrics_speed", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="maps (default 64)")
    parser.add_argument("--repeat", type=int, default=15, help="interleaved calls per metric (default 15)")
    args = parser.parse_args(argv)
    from convscope.app.bench import limit_threads

    limit_threads(1)  # before torch is imported
    print(f"Machine: {machine()}\n")
    print(table(args.n, args.repeat))


if __name__ == "__main__":
    main()
