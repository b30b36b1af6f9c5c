"""Synthesis step time against one bare forward + backward of the framework.

    python -m benchmarks.synthesis_speed            # torch, ONNX Runtime, TensorFlow
    python -m benchmarks.synthesis_speed --quick    # fewer rounds
    python -m benchmarks.synthesis_speed --only torch
    python -m benchmarks.synthesis_speed --threads 2  # the frameworks' own thread count

By default the run sets OMP/MKL/OpenBLAS to one thread before the frameworks load: on a
shared two-core machine, multi-threaded runs of both contenders swing by 2x from round to
round and the ratio means little; one thread gives steady figures.

One ``visualize`` step with the default settings (FFT parameterisation, decorrelated colour,
random jitter/scale/rotation with its adjoint, Adam, all in NumPy) on a 224 x 224 image,
batch 1, objective ``class_logit(207)``, against the fastest bare way the framework offers to
get the input gradient of that logit on the same model:

* torch, ResNet-18: ``torch.autograd.grad(model(x)[0, 207], x)`` (target <= 1.2);
* ONNX Runtime, the same ResNet-18 exported: ONNX Runtime has no autograd, so the bare pass
  is the backend's own adjoint-graph ``gradient`` with a constant seed (target <= 1.6); torch
  autograd on the module is printed beside it. A linear objective (a logit, a channel) has
  constant seeds, which ``visualize`` passes as such after the first step; ``layer_l2`` is
  measured too, as every non-linear objective goes through the callable-seed path;
* TensorFlow, Keras ResNet50 (``weights=None``, logits): a ``tf.function``-compiled
  ``GradientTape`` (target <= 1.2).

Each round times a block of ``visualize`` steps (per step) and the same number of bare
calls, alternately, and the medians over rounds are compared; everything in this one run.
A channel objective at a deep layer is measured as well on torch (bare: hook + autograd).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CLS = 207
SIZE = 224


def rounds_of(ours_block, bare_call, block: int, rounds: int) -> tuple:
    """Median seconds per step of ``ours_block(block)`` and per call of ``bare_call``."""
    ours_block(2)
    for _ in range(2):
        bare_call()
    ours, bare = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        ours_block(block)
        ours.append((time.perf_counter() - start) / block)
        start = time.perf_counter()
        for _ in range(block):
            bare_call()
        bare.append((time.perf_counter() - start) / block)
    return statistics.median(ours), statistics.median(bare)


def visualize_block(backend, objective):
    from convscope.synthesis import visualize

    def run(steps):
        visualize(backend, objective, steps=steps, size=SIZE, progress=False)
    return run


def line(label, ours, bare, target):
    ratio = ours / bare
    flag = "ok" if ratio <= target else "MISSED"
    print(f"  {label:44s} step {ours * 1e3:7.1f} ms   bare {bare * 1e3:7.1f} ms   ratio {ratio:5.2f} "
          f"(target <= {target}) {flag}")
    return ratio


def torch_case(block, rounds):
    import torch

    import convscope
    from convscope.synthesis import channel, class_logit

    from .models import resnet18

    model = resnet18()
    backend = convscope.load(model)
    x = torch.from_numpy(np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32))

    def bare_logit():
        xt = x.clone().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(model(xt)[0, CLS], xt)[0].numpy()

    store = {}
    hook = model.layer4.register_forward_hook(lambda m, i, o: store.__setitem__("a", o))

    def bare_channel():
        xt = x.clone().requires_grad_(True)
        with torch.enable_grad():
            model(xt)
            return torch.autograd.grad(store["a"][0, 10].mean(), xt)[0].numpy()

    print(f"torch {torch.__version__}, ResNet-18 {SIZE}x{SIZE}, batch 1, {torch.get_num_threads()} threads")
    try:
        ours, bare = rounds_of(visualize_block(backend, class_logit(CLS)), bare_logit, block, rounds)
        line("class_logit vs autograd.grad", ours, bare, 1.2)
        ours, bare = rounds_of(visualize_block(backend, channel("layer4", 10)), bare_channel, block, rounds)
        line("channel('layer4', 10) vs hook + autograd.grad", ours, bare, 1.2)
    finally:
        hook.remove()


def onnx_case(block, rounds):
    import torch

    import convscope
    from convscope.synthesis import class_logit, layer_l2

    from .models import resnet18
    from .onnx_speed import _export

    model = resnet18()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = convscope.load(_export(model, size=SIZE))
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    seed = np.zeros((1, 1000), np.float32)
    seed[0, CLS] = 1
    xt = torch.from_numpy(x)

    def torch_grad():
        xg = xt.clone().requires_grad_(True)
        with torch.enable_grad():
            return torch.autograd.grad(model(xg)[0, CLS], xg)[0].numpy()

    print(f"ONNX Runtime backend, the same ResNet-18 exported, {SIZE}x{SIZE}, batch 1")
    ours, bare = rounds_of(visualize_block(backend, class_logit(CLS)),
                           lambda: backend.gradient(x, {"output": seed}), block, rounds)
    line("class_logit vs backend.gradient (const seed)", ours, bare, 1.6)
    ours, bare = rounds_of(visualize_block(backend, layer_l2("/layer4/layer4.1/relu_1/Relu_output_0")),
                           lambda: backend.gradient(x, {"output": seed}), block, rounds)
    line("layer_l2(last ReLU) (callable seed) vs the same", ours, bare, 1.6)
    _, torch_time = rounds_of(lambda n: None, torch_grad, block, max(3, rounds // 2))
    print(f"  (torch autograd on the module: {torch_time * 1e3:.1f} ms; ONNX step / torch bare: "
          f"{ours / torch_time:.2f})")


def tensorflow_case(block, rounds):
    import keras
    import tensorflow as tf

    import convscope
    from convscope.synthesis import class_logit

    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None, input_shape=(SIZE, SIZE, 3), classifier_activation=None)
    backend = convscope.load(model)
    x = tf.constant(np.random.default_rng(0).random((1, SIZE, SIZE, 3), dtype=np.float32))

    @tf.function(autograph=False)
    def tape(x):
        with tf.GradientTape(watch_accessed_variables=False) as t:
            t.watch(x)
            y = model(x, training=False)[0, CLS]
        return t.gradient(y, x)

    print(f"TensorFlow {tf.__version__}, Keras ResNet50 (weights=None) {SIZE}x{SIZE}, batch 1")
    ours, bare = rounds_of(visualize_block(backend, class_logit(CLS)), lambda: tape(x).numpy(), block, rounds)
    line("class_logit vs tf.function GradientTape", ours, bare, 1.2)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--only", choices=("torch", "onnx", "tensorflow"), action="append")
    parser.add_argument("--threads", type=int, default=1, help="OMP/MKL/OpenBLAS threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[var] = str(args.threads)  # read by torch and TensorFlow when they load
        try:  # NumPy's OpenBLAS is already loaded: limit it directly
            from threadpoolctl import threadpool_limits
            threadpool_limits(args.threads, user_api="blas")
        except ImportError:
            pass
    block, rounds = (4, 3) if args.quick else (6, 7)
    import importlib.util

    cases = {"torch": ("torch", torch_case), "onnx": ("onnxruntime", onnx_case),
             "tensorflow": ("tensorflow", tensorflow_case)}
    for name, (module, case) in cases.items():
        if args.only and name not in args.only:
            continue
        backend_module = {"torch": "convscope.backends.torch", "onnx": "convscope.backends.onnxruntime",
                          "tensorflow": "convscope.backends.tensorflow"}[name]
        if importlib.util.find_spec(module) is None or importlib.util.find_spec(backend_module) is None:
            print(f"{name}: not installed; skipped")
            continue
        case(block, rounds)


if __name__ == "__main__":
    main()
