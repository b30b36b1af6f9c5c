"""LRP and DeepLift on the Keras backend against the torch backend, same nets and weights.

    python -m benchmarks.lrp_keras_speed                   # demo model (64) and VGG-style (128), batch 8
    python -m benchmarks.lrp_keras_speed --size 224 --repeat 5

Rows, each Keras vs torch on the same weights, input, targets and baselines (one thread each,
medians of interleaved repeats in this one run):

* the demo model (``demo_model("keras")`` and ``demo_model("torch")``): ``lrp`` EpsilonPlus
  (BatchNorm merged), ``lrp`` EpsilonGammaBox, ``deeplift``, and a plain input gradient
  (``saliency``) for scale;
* the VGG-style test net (tests/lrp_nets.py, ported by tests/lrp_nets_keras.py) at ``--size``:
  the same rows.

The traced Keras functions are built in the warm-up (one trace per rule set), not timed.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from ._timing import machine, measure


def _nets(size):
    import convscope

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import lrp_nets
    import lrp_nets_keras

    vgg = lrp_nets.build("vgg")
    return {"demo model at 64": (convscope.data.demo_model("keras"), convscope.data.demo_model("torch").eval(), 64),
            f"VGG-style test net at {size}": (lrp_nets_keras.port("vgg", vgg, size), vgg, size)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import torch

    import convscope
    from convscope.attribution import deeplift, lrp, saliency

    torch.set_num_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    warnings.simplefilter("ignore")
    print(f"# LRP / DeepLift: Keras backend vs torch backend, tensorflow {tf.__version__}, torch {torch.__version__}, "
          f"one thread, {machine()}\n")
    print("| net | method | Keras ms | torch ms | Keras / torch |\n|---|---|---|---|---|")
    for label, (keras_model, torch_model, size) in _nets(args.size).items():
        kb, tb = convscope.load(keras_model), convscope.load(torch_model)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 1, (args.batch, 3, size, size)).astype(np.float32)
        base = (x * 0.1).astype(np.float32)
        classes = kb.forward(x[:1]).shape[1]
        target = [i % classes for i in range(args.batch)]
        rows = {
            "lrp EpsilonPlus": lambda b: lrp(b, x, target),
            "lrp EpsilonGammaBox": lambda b: lrp(b, x, target, composite="EpsilonGammaBox"),
            "deeplift": lambda b: deeplift(b, x, target, baseline=base),
            "saliency (plain gradient)": lambda b: saliency(b, x, target),
        }
        for method, fn in rows.items():
            try:
                t = measure({"keras": lambda: fn(kb), "torch": lambda: fn(tb)}, repeat=args.repeat, warmup=1)
            except Exception as err:  # a backend refusing the model is a row of its own, not a crash
                print(f"| {label} | {method} | - | - | {type(err).__name__}: {str(err)[:80]} |")
                continue
            print(f"| {label} | {method} | {t['keras'] * 1e3:.0f} | {t['torch'] * 1e3:.0f} | "
                  f"{t['keras'] / t['torch']:.2f} |")


if __name__ == "__main__":
    main()
