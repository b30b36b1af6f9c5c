"""LRP and DeepLift on the ONNX Runtime backend against the torch backend and Captum.

    python -m benchmarks.lrp_onnx_speed                 # one thread each, batch 4 at 128 x 128
    python -m benchmarks.lrp_onnx_speed --size 224 --batch 1

A VGG-style net (VGG-11's layout, half its channels, BatchNorm after every conv: what
canonization merges) exported from torch to ONNX. Per call, medians of interleaved repeats:

* LRP, composite EpsilonPlus: ``convscope.lrp`` on the ONNX file vs the same call on the torch
  module (the torch backend's modified autograd) and vs Captum's ``LRP`` (its default epsilon rule
  on every layer, BatchNorm not merged: a different rule set, the same work of one forward and one
  modified backward);
* DeepLift with a baseline: ``convscope.deeplift`` on ONNX vs the torch backend vs Captum's ``DeepLift``.

All ratios come from this one run (the ONNX figure is the issue's "state the ONNX figure").
"""
from __future__ import annotations

import argparse
import io
import warnings

import numpy as np

from ._timing import machine, measure


def vgg_style(torch, classes=10, seed=0):
    """VGG-11 (Simonyan and Zisserman 2015) with half the channels and BatchNorm, eval mode."""
    nn = torch.nn
    torch.manual_seed(seed)
    layers, c = [], 3
    for v in (32, "M", 64, "M", 128, 128, "M", 256, 256, "M", 256, 256, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU()]
            c = v
    class VGG(nn.Module):  # flatten in forward: Captum's LRP has no rule for an nn.Flatten
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1))
            self.classifier = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Dropout(), nn.Linear(512, classes))

        def forward(self, x):
            return self.classifier(torch.flatten(self.features(x), 1))

    net = VGG()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _export(torch, net, size):
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, size, size),), buffer, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          opset_version=17, dynamo=False)
    return buffer.getvalue()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    import torch
    from captum.attr import LRP, DeepLift

    import convscope
    from convscope.attribution import deeplift, lrp

    torch.set_num_threads(1)
    net = vgg_style(torch)
    onnx_backend = convscope.load(_export(torch, net, args.size), threads=1)
    torch_backend = convscope.load(net)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 3, args.size, args.size), dtype=np.float32)
    base = np.zeros_like(x)
    target = list(range(args.batch))
    xt, bt = torch.tensor(x), torch.tensor(base)

    def captum_lrp():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return LRP(net).attribute(xt, target=target)

    def captum_deeplift():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return DeepLift(net).attribute(xt, baselines=bt, target=target)

    times = measure({
        "lrp onnx": lambda: lrp(onnx_backend, x, target),
        "lrp torch": lambda: lrp(torch_backend, x, target),
        "lrp captum": captum_lrp,
        "deeplift onnx": lambda: deeplift(onnx_backend, x, target, baseline=base),
        "deeplift torch": lambda: deeplift(torch_backend, x, target, baseline=base),
        "deeplift captum": captum_deeplift,
    }, repeat=args.repeat)
    print(f"## LRP and DeepLift, VGG-style at {args.size} x {args.size}, batch {args.batch}, one thread; "
          f"{machine()}\n")
    print("| method | ONNX ms | torch backend ms | Captum ms | ONNX / torch | ONNX / Captum | torch / Captum |")
    print("|---|---|---|---|---|---|---|")
    for method in ("lrp", "deeplift"):
        o, t, c = (times[f"{method} {k}"] for k in ("onnx", "torch", "captum"))
        print(f"| {method} | {o * 1e3:.1f} | {t * 1e3:.1f} | {c * 1e3:.1f} | {o / t:.2f} | {o / c:.2f} | {t / c:.2f} |")


if __name__ == "__main__":
    main()
