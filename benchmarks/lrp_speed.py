"""LRP, DeepLift, DeepLiftShap and GradientShap on the torch backend against Captum.

    python -m benchmarks.lrp_speed                    # VGG-style at 224, batch 4, one thread
    python -m benchmarks.lrp_speed --size 128 --repeat 3

The VGG-style net is :func:`benchmarks.lrp_onnx_speed.vgg_style` (VGG-11's layout, half its
channels, BatchNorm after every conv). Rows, each convscope vs its peer on the same model,
input, targets and baselines, medians of interleaved repeats in this one run:

* ``lrp`` epsilon on every layer with BatchNorm not merged (``canonize=False``: Captum's own
  rule set, its epsilon rule on conv, linear, pools and BatchNorm) vs Captum's ``LRP``;
  ``lrp`` EpsilonPlus with canonization vs the same Captum call (a different rule set, the same
  work of one forward and one modified backward);
* ``deeplift`` vs Captum's ``DeepLift``; ``deeplift_shap`` (4 baselines) vs ``DeepLiftShap``;
  ``gradient_shap`` (5 samples) vs ``GradientShap``;
* convscope's ``lrp`` on the ResNet-style net of the tests (Captum's LRP refuses its residual
  additions): time alone, next to a plain input gradient on it.

Target: convscope / Captum <= 1.0 on torch. Two rows run the same calls on the ONNX export of
the net (ONNX Runtime, one thread) against Captum on torch; ``benchmarks.lrp_onnx_speed`` has
more ONNX figures.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

from ._timing import machine, measure


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    import torch
    from captum import attr as captum

    import convscope
    from convscope.attribution import deeplift, deeplift_shap, gradient_shap, lrp, saliency

    from .lrp_onnx_speed import _export, vgg_style

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    net = vgg_style(torch)
    backend = convscope.load(net)
    onnx_backend = convscope.load(_export(torch, net, args.size), threads=1)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (args.batch, 3, args.size, args.size)).astype(np.float32)
    base = (x * 0.1).astype(np.float32)
    refs = rng.uniform(0, 1, (4, 3, args.size, args.size)).astype(np.float32)
    target = list(range(args.batch))
    xt, bt, rt, tt = (torch.from_numpy(a) for a in (x, base, refs, np.array(target)))
    rows = {
        "lrp epsilon, BN unmerged (Captum's rules)": (
            lambda: lrp(backend, x, target, composite="epsilon", epsilon=1e-9, sum_stabilizer=1e-9, canonize=False),
            lambda: captum.LRP(net).attribute(xt, target=tt)),
        "lrp EpsilonPlus, canonized (vs Captum's default LRP)": (
            lambda: lrp(backend, x, target), lambda: captum.LRP(net).attribute(xt, target=tt)),
        "deeplift": (lambda: deeplift(backend, x, target, baseline=base),
                     lambda: captum.DeepLift(net).attribute(xt, baselines=bt, target=tt)),
        "deeplift_shap (4 baselines)": (lambda: deeplift_shap(backend, x, target, baselines=refs),
                                        lambda: captum.DeepLiftShap(net).attribute(xt, baselines=rt, target=tt)),
        "ONNX Runtime: lrp EpsilonPlus (vs Captum's default LRP on torch)": (
            lambda: lrp(onnx_backend, x, target), lambda: captum.LRP(net).attribute(xt, target=tt)),
        "ONNX Runtime: deeplift (vs Captum's DeepLift on torch)": (
            lambda: deeplift(onnx_backend, x, target, baseline=base),
            lambda: captum.DeepLift(net).attribute(xt, baselines=bt, target=tt)),
        "gradient_shap (5 samples)": (lambda: gradient_shap(backend, x, target, baselines=refs, samples=5),
                                      lambda: captum.GradientShap(net).attribute(xt, baselines=rt, target=tt,
                                                                                 n_samples=5)),
    }
    print(f"# LRP / DeepLift speed, torch {torch.__version__}, one thread, {machine()}")
    print(f"VGG-style (VGG-11 layout, half channels, BN) at {args.size} x {args.size}, batch {args.batch}\n")
    print("| method | convscope ms | Captum ms | ratio |\n|---|---|---|---|")
    for label, (ours, peer) in rows.items():
        t = measure({"ours": ours, "peer": peer}, repeat=args.repeat, warmup=1)
        print(f"| {label} | {t['ours'] * 1e3:.0f} | {t['peer'] * 1e3:.0f} | {t['ours'] / t['peer']:.2f} |")
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import lrp_nets

    res = lrp_nets.build("resnet")
    xr = lrp_nets.images(args.batch, size=args.size)
    t = measure({"lrp": lambda: lrp(res, xr, target), "saliency": lambda: saliency(res, xr, target)},
                repeat=args.repeat, warmup=1)
    print(f"\nResNet-style test net (residual additions; Captum's LRP refuses it) at {args.size}: "
          f"lrp EpsilonPlus {t['lrp'] * 1e3:.0f} ms, saliency {t['saliency'] * 1e3:.0f} ms "
          f"(ratio {t['lrp'] / t['saliency']:.2f})")


if __name__ == "__main__":
    main()
