"""Incremental inference beyond occlusion: feature ablation over a grid of windows and the early
steps of deletion curves, through the backend's incremental plan against the plain path (every
perturbed image through the whole network), ResNet-18 at 224 x 224 with random weights, one
thread, torch and ONNX Runtime. Every ratio comes from one run.

    python -m benchmarks.incremental_windows_speed            # 9 minutes on 2 cores shared with others
    python -m benchmarks.incremental_windows_speed --quick    # torch only, three cases, one repeat

Cases (one image; the same images, features, batches and backend for both paths):

* feature ablation over a 16-pixel grid (196 windows): ``incremental="auto"`` (one plan, windows
  of 16 x 16) against ``incremental=False``; a 32-pixel grid (49 windows) the same way;
* deletion, 32 steps, on a compact map (a Gaussian bump, as a CAM's top pixels are): ``"auto"``
  plans an image only when at least ``MIN_EVALUATIONS`` (32) of its steps fit a box with sides at
  most half the image's, which 32 steps never give, so it runs the plain path and says so; the
  row "early steps routed" lowers that minimum to 1 to show what routing the few early steps
  costs or saves; 224 steps (RISE's 224 pixels a step at 224 x 224) lets "auto" plan. A
deletion step's box with sides up to half the image's already reaches most of ResNet-18's maps
(the plan's ``conv_work``, the fraction of the forward's multiply-adds it recomputes, is 0.73-0.75
there), so the early steps can save at most a quarter of their forwards: deletion gains little.

Each row gives the best of the repeats, the two paths interleaved (plain, incremental, plain,
...), how many evaluations went through the plan, and the largest difference of the perturbed
images' scores (for ablation ``f(x) - a``) relative to the plain path's largest. Target of the
issue: where the plan is used it is not slower than the plain path (ratio <= 1.0).
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from ._timing import machine


def _grid(size, cell):
    side = -(-size // cell)
    return ((np.arange(size)[:, None] // cell) * side + np.arange(size)[None] // cell).astype(np.int64)


def _bump(size, centre=(0.4, 0.55), width=0.12):
    yy, xx = np.mgrid[:size, :size] / size
    return np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * width ** 2))[None].astype(np.float32)


def _backends(quick):
    import torch

    import convscope
    from .models import resnet18

    torch.set_num_threads(1)
    model = resnet18().eval()
    found = {"torch": convscope.load(model)}
    if not quick:
        try:
            import onnxruntime  # noqa: F401

            from .onnx_speed import _export
            found["onnx"] = convscope.load(_export(model), threads=1)
        except ImportError:
            pass
    return found


def _cases(backend, x, quick):
    from convscope import _incremental_runs
    from convscope.attribution import feature_ablation
    from convscope.metrics import deletion

    maps = _bump(x.shape[-1])

    def ablation(cell):
        return lambda mode: feature_ablation(backend, x, 0, features=_grid(x.shape[-1], cell), baseline=0.0,
                                             perturbations_per_eval=8, incremental=mode)

    def curve(steps, minimum=None):
        def run(mode):
            saved = _incremental_runs.MIN_EVALUATIONS
            if minimum is not None:
                _incremental_runs.MIN_EVALUATIONS = minimum
            try:
                return deletion(backend, x, maps, 0, steps=steps, batch_size=8, incremental=mode)
            finally:
                _incremental_runs.MIN_EVALUATIONS = saved
        return run

    cases = {"feature ablation, 16-px grid (196 windows)": ablation(16),
             "deletion, 32 steps (auto)": curve(32),
             "deletion, 32 steps, early steps routed": curve(32, minimum=1)}
    if not quick:
        cases["feature ablation, 32-px grid (49 windows)"] = ablation(32)
        cases["deletion, 224 steps (auto)"] = curve(224)
    return cases


def _scores(result):
    """The perturbed images' explained scores: a curve's, or ablation's ``f(x) - map``."""
    if hasattr(result, "scores"):
        return np.asarray(result.scores, np.float64)
    clean = np.asarray(result.outputs, np.float64)[np.arange(len(result.maps)), result.target]
    return clean[:, None, None] - np.asarray(result.maps, np.float64)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    repeat = 1 if args.quick else 2
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    lines = ["## Incremental feature ablation and deletion (ResNet-18, 224 x 224, random weights, one image, "
             "one thread)", "", f"machine: {machine()}", "",
             "| backend | case | plain ms | incremental ms | ratio | through the plan | scores' max rel. diff | note |",
             "|---|---|---|---|---|---|---|---|"]
    for name, backend in _backends(args.quick).items():
        for label, run in _cases(backend, x, args.quick).items():
            run("auto")  # traces the model once (memoised per model, as a user's second call finds it)
            best = {False: np.inf, "auto": np.inf}
            results = {}
            for _ in range(repeat):
                for mode in (False, "auto"):
                    start = time.perf_counter()
                    results[mode] = run(mode)
                    best[mode] = min(best[mode], time.perf_counter() - start)
            info = results["auto"].info
            ref, got = _scores(results[False]), _scores(results["auto"])
            diff = np.abs(got - ref).max() / np.abs(ref).max()
            routed = f"{info['incremental_evaluated']} of {info['incremental_evaluated'] + info['plain_evaluated']}"
            note = "" if info["incremental"] else info.get("incremental_why", "")[:90]
            if info["incremental"]:
                note = f"windows {info['incremental_windows']}, plan work {info.get('plan', {}).get('conv_work')}"
            lines.append(f"| {name} | {label} | {best[False] * 1e3:.0f} | {best['auto'] * 1e3:.0f} | "
                         f"{best['auto'] / best[False]:.2f} | {routed} | {diff:.1e} | {note} |")
            print(lines[-1], flush=True)
    print()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
