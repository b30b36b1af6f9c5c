"""Speed of the sanity checks against Quantus 0.6.0, as ratios measured in one run.

On the demo model (torch) and the same images, the same attribution function (convscope's
saliency, given to Quantus as its ``explain_func``) and the same randomised weights (Quantus's
own draw, ``torch.manual_seed(seed + 1)`` then ``reset_parameters``, given to convscope as
``randomize``), so both compute the same numbers (tests/test_sanity_checks.py checks that):

1. MPRT, cascading from the top, Spearman: ``model_randomisation`` vs ``quantus.MPRT``;
2. the random-logit test, SSIM: ``random_logit`` vs ``quantus.RandomLogit``, both given the
   maps of the explained class (``maps=`` / ``a_batch``).

Each ratio (convscope's time / Quantus's) is given by wall-clock and by process CPU time (the
minimum over alternating repeats); on a shared machine the CPU-time ratio is the steadier one.

Run: ``python -m benchmarks.sanity_speed [--n 32] [--repeats 3]``.
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def timed(fn) -> tuple:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(ours, reference, repeats: int) -> dict:
    """Alternate the two; each one's fastest wall and CPU time, and the ratios ours / reference."""
    t_ours, t_ref = [], []
    for _ in range(repeats):
        t_ref.append(timed(reference))
        t_ours.append(timed(ours))
    w_o, c_o = min(t[0] for t in t_ours), min(t[1] for t in t_ours)
    w_r, c_r = min(t[0] for t in t_ref), min(t[1] for t in t_ref)
    return {"ours s": w_o, "quantus s": w_r, "wall ratio": w_o / w_r, "cpu ratio": c_o / c_r}


def quantus_draw(torch, model, seed):
    def randomize(name, weights, rng):
        module = copy.deepcopy(model.get_submodule(name))
        torch.manual_seed(seed + 1)
        module.reset_parameters()
        return {k: v.detach().numpy().copy() for k, v in module.named_parameters(recurse=False)}
    return randomize


def ssim_2d(a, b, batched=True, **kwargs):
    """Quantus's SSIM on the 2-d maps (its own flattens them), data_range as Quantus."""
    from skimage.metrics import structural_similarity

    side = int(round(np.sqrt(a.shape[1])))
    out = []
    for aa, bb in zip(a, b):
        both = np.concatenate([aa, bb])
        out.append(structural_similarity(aa.reshape(side, side), bb.reshape(side, side),
                                         data_range=float(both.max() - both.min())))
    return np.array(out)


def run(n: int = 32, repeats: int = 3) -> list:
    import quantus
    import torch

    from convscope.attribution import saliency
    from convscope.data import demo_model, shapes
    from convscope.metrics import model_randomisation, random_logit

    torch.set_num_threads(1)
    model = demo_model("torch")
    x = shapes(n, seed=2).images
    y = saliency(model, x).target
    a = saliency(model, x, y).maps

    def explain(model, inputs, targets, **kwargs):
        return saliency(model, np.asarray(inputs, np.float32), np.asarray(targets)).maps

    per_sample = {"normalise_axes": [1, 2, 3]}
    rows = []
    draw = quantus_draw(torch, model, 42)
    mprt = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True, return_last_correlation=True)
    rows.append(("MPRT (cascading, Spearman, 9 layers)", compare(
        lambda: model_randomisation(model, x, explain, y, similarity="spearman", randomize=draw),
        lambda: mprt(model=model, x_batch=x, y_batch=y, a_batch=a, channel_first=True, explain_func=explain,
                     device="cpu"), repeats)))
    logit = quantus.RandomLogit(num_classes=4, seed=0, abs=False, disable_warnings=True, similarity_func=ssim_2d,
                                normalise_func_kwargs=per_sample)
    rows.append(("RandomLogit (SSIM)", compare(
        lambda: random_logit(model, x, explain, y, maps=a, similarity="ssim", seed=0),
        lambda: logit(model=model, x_batch=x, y_batch=y, a_batch=a, channel_first=True, explain_func=explain,
                      device="cpu"), repeats)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="images (64 x 64)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = run(args.n, args.repeats)
    print(f"## Sanity checks vs Quantus ({args.n} demo images, demo model on torch, one thread)\n")
    print("| metric | convscope s | Quantus s | wall ratio | CPU ratio |")
    print("|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['ours s']:.3f} | {r['quantus s']:.3f} | {r['wall ratio']:.2f}x | {r['cpu ratio']:.2f}x |")


if __name__ == "__main__":
    main()
