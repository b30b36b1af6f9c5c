"""TensorFlow backend gradient against bare GradientTape gradients on the same model.

    python -m benchmarks.tensorflow_speed            # ResNet50 224x224 and the demo model
    python -m benchmarks.tensorflow_speed --quick    # fewer repeats

For each model, batch 1, seed = a random vector at the scores, gradient at the input:

* convscope:        ``KerasBackend.gradient(x, {"output": s})`` (NCHW in, NumPy out)
* eager tape:       ``tf.GradientTape`` around ``model(x, training=False)``, eager
* tf.function tape: the same tape inside ``tf.function`` with an input signature
* XLA tape:         the same with ``jit_compile=True``
* tf-keras-vis:     ``Saliency(model, clone=False)`` with no modifier and no normalisation, when
                    ``tf_keras_vis`` imports (``pip install tf-keras-vis``)

Every bare way converts its result to NumPy, as the backend does. Calls are interleaved
(one of each per round, in a new random order each round) and the median of the rounds is
reported; the ratio is convscope's median over the fastest bare way's, all measured in this
one run. On a shared machine, run it when nothing else is: the ratios move with the load.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def bare_ways(model, tf):
    """The framework's own ways to get the input gradient of <s, model(x)>."""
    def tape_gradient(x, s):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            y = model(x, training=False)
        return tape.gradient(y, x, s)

    shape = (None, *model.inputs[0].shape[1:])
    signature = [tf.TensorSpec(shape, tf.float32), tf.TensorSpec((None, model.outputs[0].shape[-1]), tf.float32)]
    compiled = tf.function(tape_gradient, input_signature=signature, autograph=False)
    xla = tf.function(tape_gradient, input_signature=signature, autograph=False, jit_compile=True)
    ways = {
        "eager tape": lambda x, s: tape_gradient(tf.constant(x), tf.constant(s)).numpy(),
        "tf.function tape": lambda x, s: compiled(x, s).numpy(),
        "XLA tape": lambda x, s: xla(x, s).numpy(),
    }
    try:
        from tf_keras_vis.saliency import Saliency
    except ImportError:
        print("  tf-keras-vis: not importable (pip install tf-keras-vis); skipped")
    else:
        saliency = Saliency(model, clone=False)
        ways["tf-keras-vis"] = lambda x, s: saliency(lambda out: tf.reduce_sum(out * s, axis=-1), x, keepdims=True,
                                                     gradient_modifier=None, normalize_map=False)
    return ways


def measure(name, model, size, rounds, backend_cls):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x_nchw = rng.random((1, 3, size, size), dtype=np.float32)
    x_nhwc = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))
    s = rng.standard_normal((1, model.outputs[0].shape[-1])).astype(np.float32)
    backend = backend_cls(model)
    ways = {"convscope": lambda x, s: backend.gradient(x_nchw, {"output": s})["input"], **bare_ways(model, tf)}
    want = ways["tf.function tape"](x_nhwc, s).transpose(0, 3, 1, 2)
    for way, fn in ways.items():  # warm up (trace, compile) and check that all agree
        got = fn(x_nhwc, s)
        got = got if way == "convscope" else np.asarray(got).transpose(0, 3, 1, 2)
        err = np.abs(got - want).max() / np.abs(want).max()
        if err > 1e-3:
            print(f"  warning: {way} differs from the tf.function tape by {err:.1e}")
    times = {way: [] for way in ways}
    order = np.random.default_rng(1)
    for _ in range(rounds):  # a new order each round: no way always runs after an eager one
        for way in order.permutation(list(ways)):
            start = time.perf_counter()
            ways[way](x_nhwc, s)
            times[way].append(time.perf_counter() - start)
    medians = {way: float(np.median(t)) for way, t in times.items()}
    fastest = min((m, w) for w, m in medians.items() if w != "convscope")
    print(f"{name} ({size}x{size}, batch 1, {rounds} rounds, median per call):")
    for way, m in medians.items():
        print(f"  {way:18s} {m * 1e3:8.1f} ms   {m / fastest[0]:5.2f}x the fastest bare way")
    print(f"  ratio convscope / fastest bare way ({fastest[1]}): {medians['convscope'] / fastest[0]:.3f} "
          f"(target <= 1.10)")
    return medians


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args(argv)
    import keras

    from convscope.backends.tensorflow import KerasBackend
    from convscope.data import demo_model

    keras.utils.set_random_seed(0)
    resnet = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classifier_activation=None)
    measure("ResNet50", resnet, 224, 5 if args.quick else 15, KerasBackend)
    measure("demo model", demo_model("keras"), 64, 50 if args.quick else 300, KerasBackend)


if __name__ == "__main__":
    main()
