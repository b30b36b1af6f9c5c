"""Incremental occlusion (Krypton, Nakandala et al., SIGMOD 2019) on torch: ResNet-18 at 224,
random weights, one thread, every ratio from one run.

    python -m benchmarks.incremental_speed            # 48 sampled windows per case, 3 repeats
    python -m benchmarks.incremental_speed --quick    # 16 windows, 2 repeats, Captum on 64/32

For each window size and stride the same windows (spread evenly over the image's grid) are
scored two ways, in batches of 16: convscope's incremental plan and the raw floor, a
``torch.no_grad`` forward of the occluded images. A whole occlusion run costs the plan (two
forwards of the original) plus every window, so the ratio is
``(plan + windows * t_inc) / (windows * t_floor)`` for the grid's number of windows.
``conv work`` is the fraction of the convolutions' multiply-adds the plan recomputes: the
bound the exact method can reach (the rest of the network is a few percent), met against the
same model in channels-last memory (the crops' layout; last column). Captum's
``Occlusion`` is timed against ``occlusion(...)`` end to end on one case. The approximate mode
(projective-field thresholding) is timed at 32/16 and its error measured against exact
incremental scores on the same windows: the largest absolute difference of the score drops,
divided by the largest exact drop.

The ONNX section (:func:`onnx_run`) times the same cases on the model's ONNX export: the ONNX
backend's crop-wise graph against the bare batched ``InferenceSession.run`` of the occluded
images and against plain ONNX occlusion, its approximate mode, and whole occlusion runs.
"""
from __future__ import annotations

import argparse
import copy
import time

import numpy as np

from ._timing import machine, measure


def _setup():
    import torch

    import convscope
    from .models import resnet18

    torch.set_num_threads(1)
    model = resnet18(1000)
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    return torch, model, convscope.load(model), x


def _sample(window, stride, count):
    from convscope.attribution.occlusion import window_positions

    corners = np.asarray(window_positions((224, 224), (window, window), (stride, stride)))
    take = np.unique(np.linspace(0, len(corners) - 1, min(count, len(corners))).astype(int))
    return corners, corners[take]


def _floor_images(x, corners, window, fill):
    images = np.repeat(x, len(corners), 0)
    for k, (y, c) in enumerate(corners):
        images[k, :, y:y + window, c:c + window] = fill[:, y:y + window, c:c + window]
    return images


def run(quick: bool) -> str:
    from convscope._incremental import incremental_plan, window_patches

    torch, model, backend, x = _setup()
    fill = np.broadcast_to(x[0].mean(axis=(1, 2), keepdims=True), x[0].shape).astype(np.float32)
    count, repeat, per = (16, 2, 16) if quick else (48, 3, 16)
    lines = [f"Machine: {machine()}, torch {torch.__version__}, 1 thread. ResNet-18 at 224, {count} windows "
             "sampled per case.", "",
             "| window / stride | windows | conv work | incremental ms/window | floor ms/window | plan ms | "
             "ratio (whole run) | target | ratio to a channels-last floor |", "|---|---|---|---|---|---|---|---|---|"]
    exact_scores, ratios = {}, {}
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)  # the crops' layout, for comparison
    for window, stride in [(16, 8), (32, 8), (32, 16), (64, 16), (64, 32)]:
        corners, sample = _sample(window, stride, count)
        patches, starts = window_patches(x[0], fill, sample, (window, window))
        images = _floor_images(x, sample, window, fill)
        t0 = time.perf_counter()
        plan = incremental_plan(backend, x, (window, window))
        plan_s = time.perf_counter() - t0

        def incremental():
            return np.concatenate([plan.scores(patches[i:i + per], starts[i:i + per])
                                   for i in range(0, len(sample), per)])

        def floor():
            with torch.no_grad():
                return np.concatenate([model(torch.from_numpy(images[i:i + per])).numpy()
                                       for i in range(0, len(sample), per)])

        def floor_cl():
            with torch.no_grad():
                return [model_cl(torch.from_numpy(images[i:i + per]).contiguous(memory_format=torch.channels_last))
                        for i in range(0, len(sample), per)]

        got, ref = incremental(), floor()
        error = float(np.abs(got - ref).max() / np.abs(ref).max())
        exact_scores[(window, stride)] = (got, sample, patches, starts, ref)
        t = measure({"inc": incremental, "floor": floor, "floor_cl": floor_cl}, repeat=repeat, warmup=1)
        per_inc, per_floor = t["inc"] / len(sample), t["floor"] / len(sample)
        ratio = (plan_s + per_inc * len(corners)) / (per_floor * len(corners))
        ratios[f"{window} / {stride}"] = ratio
        target = "<= 0.33" if (window, stride) in ((32, 8), (32, 16)) else ""
        flag = (" ok" if ratio <= 0.33 else " MISSED") if target else ""
        lines.append(f"| {window} / {stride} | {len(corners)} | {plan.info['conv_work']:.2f} | {per_inc * 1e3:.1f} | "
                     f"{per_floor * 1e3:.1f} | {plan_s * 1e3:.0f} | {ratio:.2f} | {target}{flag} | "
                     f"{(plan_s + per_inc * len(corners)) / (t['floor_cl'] / len(sample) * len(corners)):.2f} |")
        lines[-1] += f" (max rel. difference from the floor's scores {error:.1e})" if error > 1e-5 else ""
    unpaid = [case for case, r in ratios.items() if r > 0.9]
    lines += ["", "Where it stops paying (ratio above 0.9): " + (", ".join(unpaid) if unpaid else "none of these cases")
              + ". The exact bound is the conv work column: a 32-pixel window's projective field covers most of "
              "ResNet-18's 14 x 14 maps and all of its 7 x 7 ones, so about half of the multiply-adds are recomputed "
              "whatever the stride. The crops run in channels-last memory, which this CPU's convolutions run faster "
              "than the floor's NCHW: the last column compares with the same model in channels-last, where the "
              "ratio meets the conv-work bound."]
    lines += ["", "Approximate mode at 32 / 16 (same windows; error of the score drops against exact incremental):",
              "", "| threshold | ms/window | ratio to exact incremental | max abs error | relative to max drop |",
              "|---|---|---|---|---|"]
    exact, sample, patches, starts, _ = exact_scores[(32, 16)]
    base = backend.forward(x)
    cls = int(base[0].argmax())
    exact_plan = incremental_plan(backend, x, (32, 32))
    runs = {"exact": exact_plan}
    for threshold in (0.5, 0.25):
        runs[threshold] = incremental_plan(backend, x, (32, 32), threshold)
    calls = {k: (lambda p=p: np.concatenate([p.scores(patches[i:i + per], starts[i:i + per])
                                             for i in range(0, len(sample), per)])) for k, p in runs.items()}
    t = measure(calls, repeat=repeat, warmup=1)
    drop_exact = base[0, cls] - exact[:, cls]
    for threshold in (0.5, 0.25):
        drop = base[0, cls] - calls[threshold]()[:, cls]
        err = float(np.abs(drop - drop_exact).max())
        lines.append(f"| {threshold} | {t[threshold] / len(sample) * 1e3:.1f} | {t[threshold] / t['exact']:.2f} | "
                     f"{err:.2e} | {err / np.abs(drop_exact).max():.3f} |")
    lines += ["", _captum(torch, model, x, quick), "", "### ONNX Runtime", "", onnx_run(quick)]
    return "\n".join(lines)


def _captum(torch, model, x, quick):
    """Captum's Occlusion against ``occlusion(...)`` (incremental and plain) end to end."""
    from captum.attr import Occlusion

    import convscope

    window, stride = (64, 32) if quick else (32, 16)
    xt = torch.from_numpy(x)
    target = int(convscope.load(model).forward(x)[0].argmax())
    fill = float(x.mean())

    def ours(incremental):
        return lambda: convscope.attribution.occlusion(model, x, target, window=window, stride=stride, fill=fill,
                                                       perturbations_per_eval=16, incremental=incremental)

    def captum():
        with torch.no_grad():
            return Occlusion(model).attribute(xt, sliding_window_shapes=(3, window, window),
                                              strides=(3, stride, stride), baselines=fill, target=target,
                                              perturbations_per_eval=16)

    t = measure({"inc": ours(True), "plain": ours(False), "captum": captum}, repeat=1, warmup=0)
    return (f"Whole occlusion runs at {window} / {stride} (one call each): incremental {t['inc']:.1f} s, plain "
            f"{t['plain']:.1f} s, Captum {t['captum']:.1f} s; incremental / Captum = {t['inc'] / t['captum']:.2f}, "
            f"plain / Captum = {t['plain'] / t['captum']:.2f}.")


# ---------------------------------------------------------------- ONNX Runtime
def onnx_run(quick: bool) -> str:
    """The same cases on the ResNet-18's ONNX export (ONNX Runtime, one thread): the ONNX
    backend's crop-wise graph against the bare batched ``InferenceSession.run`` of the occluded
    images (the floor) and against plain ONNX occlusion (``backend.forward`` of them). ``plan
    ms`` is the first plan of a window size: the crop-wise graph's analysis, its session and
    the forward of the original (a later image of that size pays only the forward)."""
    import warnings

    import onnxruntime

    import convscope
    from convscope._incremental import incremental_plan, window_patches
    from .models import resnet18
    from .onnx_speed import _export

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = _export(resnet18(1000))
    backend = convscope.load(data, threads=1)
    bare = onnxruntime.InferenceSession(data, backend._sessions._options(()), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    backend.forward(x)
    fill = np.broadcast_to(x[0].mean(axis=(1, 2), keepdims=True), x[0].shape).astype(np.float32)
    count, repeat, per = (16, 2, 16) if quick else (32, 3, 16)
    lines = [f"ONNX Runtime {onnxruntime.__version__}, 1 thread: the ResNet-18's ONNX export, {count} windows sampled "
             f"per case; floor = a bare `InferenceSession.run` of the occluded images in batches of {per}, plain = "
             "`backend.forward` of them (what `occlusion(..., incremental=False)` runs).", "",
             "| window / stride | windows | conv work | incremental ms/window | floor ms/window | plain ms/window | "
             "plan ms | ratio to floor (whole run) | target |", "|---|---|---|---|---|---|---|---|---|"]
    cases = [(32, 16), (32, 8)] if quick else [(16, 8), (32, 8), (32, 16), (64, 16), (64, 32)]

    def batches(fn, n, *arrays):
        return lambda: np.concatenate([fn(*(a[i:i + per] for a in arrays)) for i in range(0, n, per)])

    kept = {}
    for window, stride in cases:
        corners, sample = _sample(window, stride, count)
        patches, starts = window_patches(x[0], fill, sample, (window, window))
        images = _floor_images(x, sample, window, fill)
        t0 = time.perf_counter()
        plan = incremental_plan(backend, x, (window, window))
        plan.scores(patches[:per], starts[:per])  # the crop-wise session, built once per window size
        first = time.perf_counter() - t0
        calls = {"inc": batches(plan.scores, len(sample), patches, starts),
                 "floor": batches(lambda im: bare.run(None, {"input": im})[0], len(sample), images)}
        if window == 32:  # plain ONNX occlusion is the floor plus the backend's overhead (onnx_speed: about 1.01x)
            calls["plain"] = batches(backend.forward, len(sample), images)
        got, ref = calls["inc"](), calls["floor"]()
        error = float(np.abs(got - ref).max() / np.abs(ref).max())
        t = measure(calls, repeat=repeat, warmup=1)
        per_inc, per_floor, per_plain = (t.get(k, np.nan) / len(sample) for k in ("inc", "floor", "plain"))
        plan_s = max(0.0, first - per_inc * min(per, len(sample)))
        ratio = (plan_s + per_inc * len(corners)) / (per_floor * len(corners))
        target = "<= 0.33" if (window, stride) in ((32, 8), (32, 16)) else ""
        flag = (" ok" if ratio <= 0.33 else " MISSED") if target else ""
        lines.append(f"| {window} / {stride} | {len(corners)} | {plan.info['conv_work']:.2f} | {per_inc * 1e3:.1f} | "
                     f"{per_floor * 1e3:.1f} | {'' if np.isnan(per_plain) else f'{per_plain * 1e3:.1f}'} | "
                     f"{plan_s * 1e3:.0f} | {ratio:.2f} | "
                     f"{target}{flag} |")
        lines[-1] += f" (max rel. difference from the floor's scores {error:.1e})" if error > 1e-5 else ""
        kept[(window, stride)] = (got, sample, patches, starts, t["floor"])
    got, sample, patches, starts, floor_s = kept[(32, 16)]
    lines += ["", "ONNX approximate mode at 32 / 16 (same windows; error of the score drops against exact):", "",
              "| threshold | conv work | ms/window | ratio to floor (per window) | max abs error | "
              "relative to max drop |",
              "|---|---|---|---|---|---|"]
    base = backend.forward(x)
    cls = int(base[0].argmax())
    drop_exact = base[0, cls] - got[:, cls]
    for threshold in (0.5, 0.25):
        plan = incremental_plan(backend, x, (32, 32), threshold)
        call = batches(plan.scores, len(sample), patches, starts)
        drop = base[0, cls] - call()[:, cls]
        seconds = measure({"approximate": call}, repeat=repeat, warmup=0)["approximate"]
        err = float(np.abs(drop - drop_exact).max())
        lines.append(f"| {threshold} | {plan.info['conv_work']:.2f} | {seconds / len(sample) * 1e3:.1f} | "
                     f"{seconds / floor_s:.2f} | {err:.2e} | {err / np.abs(drop_exact).max():.3f} |")
    if not quick:
        fill_value = float(x.mean())
        runs = {k: (lambda k=k: convscope.attribution.occlusion(backend, x, cls, window=32, stride=16, fill=fill_value,
                                                                perturbations_per_eval=per, incremental=k))
                for k in (True, False)}
        t = measure(runs, repeat=1, warmup=0)
        lines += ["", f"Whole ONNX occlusion runs at 32 / 16 (one call each, sessions already built): incremental "
                      f"{t[True]:.1f} s, plain {t[False]:.1f} s, incremental / plain = {t[True] / t[False]:.2f}."]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    print(run(parser.parse_args().quick))


if __name__ == "__main__":
    main()
