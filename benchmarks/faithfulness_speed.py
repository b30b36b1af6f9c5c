"""Faithfulness metrics against Quantus on the same model and maps, as ratios in one run.

    python -m benchmarks.faithfulness_speed [--n 16] [--repeat 3]

The maps are the demo torch model's Grad-CAM of ``shapes(n)`` (64 x 64) with a little noise (no
ties). Each convscope metric is timed against the Quantus 0.6 metric configured to the same work
(the settings the tests check to 1e-6). Quantus's ``ROAD`` and ``IROF`` fail on colour images
with one map per image (ROAD ranks C x H x W values and indexes H x W pixels with them; IROF
asserts a (N, 1, H, W) mask equals (N, 3, H, W) images), so those two run on the demo model fed a
grey image repeated on its three channels (the same weights, one input channel). ROAD: 9 fractions,
noise 0.01; IROF: SLIC inside the call on both sides (scikit-image's defaults, 100 segments), fill
0.3; faithfulness correlation: 50 subsets of 128; infidelity: Quantus's cumulative 4 x 4 black
patches (256 perturbations), given to convscope as a callable. Times are medians of interleaved
calls; the target is at most 0.5 of Quantus's time. The last columns time the bare torch forwards
of as many images as the metric evaluates (the floor of any implementation): where Quantus already
batches over the images (IROF, faithfulness correlation, infidelity: one forward per step for the
whole batch) both sides are bound by these forwards.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

from ._timing import machine, measure

TARGET = 0.5


def _grey(model):
    import torch

    spread = torch.nn.Conv2d(1, 3, 1, bias=False)  # the grey image repeated on R, G and B
    with torch.no_grad():
        spread.weight.fill_(1.0)
    return torch.nn.Sequential(spread, model).eval()


def _blocks(shape, patch=4):
    n, c, h, w = shape
    state = {"j": 0}

    def perturb(images, rng):
        state["j"] = state["j"] % ((h // patch) * (w // patch)) + 1
        mask = np.zeros((h // patch) * (w // patch), bool)
        mask[:state["j"]] = True
        return images * np.kron(mask.reshape(h // patch, w // patch), np.ones((patch, patch), bool))
    return perturb


def _floor(model, channels, count, batch=64):
    """The bare torch forwards of ``count`` 64 x 64 images in batches of ``batch``: what any
    implementation of a metric that evaluates that many images must spend."""
    import torch

    images = torch.rand(min(batch, count), channels, 64, 64)

    def run():
        with torch.no_grad():
            for start in range(0, count, batch):
                model(images[:min(batch, count - start)])
    return run


def cases(n: int = 16):
    """(name, convscope call, Quantus call, floor) for each metric."""
    import quantus

    from convscope import metrics as M
    from convscope.attribution import grad_cam
    from convscope.data import demo_model, shapes

    if not hasattr(np, "trapz"):  # Quantus 0.6's IROF calls np.trapz, gone in NumPy 2.4
        np.trapz = np.trapezoid
    model = demo_model("torch")
    data = shapes(n, seed=0)
    x, y = data.images, data.labels
    cams = grad_cam(model, x).maps
    maps = cams + np.random.default_rng(0).normal(0, 1e-3 * cams.max(), cams.shape).astype(np.float32)
    grey_model, grey = _grey(model), x.mean(axis=1, keepdims=True)
    a = maps[:, None]

    def peer(metric, net=model, images=x, **options):
        instance = getattr(quantus, metric)(disable_warnings=True, normalise=False, abs=False, **options)
        return lambda: instance(model=net, x_batch=images, y_batch=y, a_batch=a, channel_first=True, device="cpu")

    fractions = [p / 10 for p in range(1, 10)]
    segments = int(M.irof(grey_model, grey, maps, y, fill=0.3).info["n_segments"].sum())
    return [
        ("road (MoRF, 9 fractions)", lambda: M.road(grey_model, grey, maps, y, fractions=fractions),
         peer("ROAD", grey_model, grey, percentages=[10 * p for p in range(1, 10)], noise=0.01),
         _floor(grey_model, 1, 10 * n)),
        ("irof (SLIC, fill 0.3)", lambda: M.irof(grey_model, grey, maps, y, fill=0.3),
         peer("IROF", grey_model, grey, perturb_baseline=0.3, return_aggregate=False),
         _floor(grey_model, 1, segments + n)),
        ("faithfulness_correlation (50 x 128)", lambda: M.faithfulness_correlation(model, x, maps, y, subset_size=128,
                                                                                   samples=50, fill="zero"),
         peer("FaithfulnessCorrelation", nr_runs=50, subset_size=128, perturb_baseline=0.0, return_aggregate=False),
         _floor(model, 3, 51 * n)),
        ("infidelity (256 cumulative 4 x 4 patches)",
         lambda: M.infidelity(model, x, maps, y, perturbation=_blocks(x.shape), samples=256),
         peer("Infidelity", perturb_patch_sizes=[4], n_perturb_samples=1, perturb_baseline=0.0),
         _floor(model, 3, 257 * n)),
    ]


def table(n: int = 16, repeat: int = 3) -> str:
    """A markdown table: each metric's median time, Quantus's, and the ratio."""
    import quantus

    lines = [f"{n} Grad-CAM maps of 64 x 64 (demo torch model, shapes({n})), medians of {repeat} interleaved calls; "
             f"Quantus {quantus.__version__}.", "",
             "| metric | convscope s | Quantus s | ratio | target | bare forwards s | convscope / bare |",
             "|---|---:|---:|---:|---|---:|---:|"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, ours, theirs, floor in cases(n):
            t = measure({"ours": ours, "quantus": theirs, "floor": floor}, repeat=repeat, warmup=1)
            ratio = t["ours"] / t["quantus"]
            lines.append(f"| {name} | {t['ours']:.3f} | {t['quantus']:.3f} | {ratio:.2f} | "
                         f"<= {TARGET} {'ok' if ratio <= TARGET else 'MISSED'} | {t['floor']:.3f} | "
                         f"{t['ours'] / t['floor']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faithfulness_speed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="images (default 16)")
    parser.add_argument("--repeat", type=int, default=3, help="interleaved calls per metric (default 3)")
    args = parser.parse_args(argv)
    from convscope.app.bench import limit_threads

    limit_threads(1)  # before torch is imported
    print(f"Machine: {machine()}\n")
    print(table(args.n, args.repeat))


if __name__ == "__main__":
    main()
