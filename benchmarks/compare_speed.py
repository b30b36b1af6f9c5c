"""What one ``compare`` table costs against the same numbers got by hand, in one run.

Two references, with the same metric options: the metrics called one by one on maps
computed once per method (what compare adds: the streaming, the intervals, the bookkeeping;
target at most 1.05x), and each metric called with its maps computed for it, as a user
calling ``grad_cam(model, x)`` then ``deletion(model, x, maps)`` per metric does (compare
computes each model x method's maps once per batch and shares them with every metric).

    python -m benchmarks.compare_speed
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGET = 1.05
METHODS = ("grad_cam", "saliency", "input_x_gradient")
METRICS = ("deletion", "insertion", "pointing_game", "sparseness", "relevance_mass_accuracy")
OPTIONS = {"deletion": {"steps": 16}, "insertion": {"steps": 16}}


def by_hand(model, x, masks, *, share_maps=True):
    """Every metric called on its own: on maps computed once per method, or computed anew
    for each metric (``share_maps=False``)."""
    from convscope import attribution
    from convscope.metrics import METRICS as registered, evaluate_metric

    scores = {}
    for method in METHODS:
        maps = getattr(attribution, method)(model, x)
        for metric in METRICS:
            if metric not in registered:
                continue
            if not share_maps:
                maps = getattr(attribution, method)(model, x)
            scores[method, metric] = evaluate_metric(metric, model=model, x=x, maps=maps, masks=masks,
                                              options=OPTIONS.get(metric)).scores
    return scores


def with_compare(model, x, masks):
    from convscope.metrics import METRICS as registered, compare

    return compare(model, list(METHODS), [m for m in METRICS if m in registered], x, masks=masks, options=OPTIONS)


def rows(n: int = 16, repeat: int = 5) -> list[str]:
    import numpy as np

    import convscope
    from convscope.data import demo_model, shapes

    from ._timing import measure

    d = shapes(n, seed=0)
    x, masks = d.images, d.object_masks
    model = convscope.load(demo_model("torch"))
    table, hand = with_compare(model, x, masks), by_hand(model, x, masks)
    for (method, metric), s in hand.items():  # the same numbers, or the timing means nothing
        np.testing.assert_allclose(table.scores[table.models[0], method, metric], s, rtol=1e-5, atol=1e-6)
    times = measure({"compare": lambda: with_compare(model, x, masks), "shared": lambda: by_hand(model, x, masks),
                     "own": lambda: by_hand(model, x, masks, share_maps=False)}, repeat=repeat, warmup=1)
    ours = times["compare"]
    case = f"compare, demo model (torch), {n} images, {len(METHODS)} methods x {len(hand) // len(METHODS)} metrics"
    return [f"| {case} vs the metrics one by one on maps made once per method (target <= {TARGET:.2f}) | "
            f"{ours * 1e3:.0f} | {times['shared'] * 1e3:.0f} | {ours / times['shared']:.2f} |",
            f"| {case} vs each metric called with its maps made for it | {ours * 1e3:.0f} | "
            f"{times['own'] * 1e3:.0f} | {ours / times['own']:.2f} |"]


def main():
    from convscope.app.bench import limit_threads

    limit_threads(1)
    print("| case | convscope ms | by hand ms | ratio |\n|---|---:|---:|---:|")
    print("\n".join(rows()))


if __name__ == "__main__":
    main()
