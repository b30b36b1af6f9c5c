"""ONNX Runtime backend: speed against the raw frameworks, and the cost of a large model.

    python -m benchmarks.onnx_speed            # all three parts
    python -m benchmarks.onnx_speed --skip-vgg --threads 1    # same thread count for both
    python -m benchmarks.onnx_speed --skip-vgg --spinning     # the backend with ONNX Runtime's spinning threads

(a) input gradient of one class score, ResNet-18 exported from torch, 224 x 224, batch 1:
    convscope's ONNX backend vs raw torch autograd on the same module (target <= 0.7, at one
    thread and at two: :func:`rows` gives both);
(b) forward of the same file: backend.forward vs a bare onnxruntime session.run (target <= 1.05),
    the bare session built once with the backend's own session options (threads that stop
    spinning after a run, no pre-packing) and once with ONNX Runtime's defaults (threads that
    spin on);
(c) VGG-19 (about 550 MB of float32 weights): load, building the gradient graph and its
    session, and the first gradient, timed in a fresh process with its peak memory.

Timings alternate the contenders in blocks of a few calls and report medians per call, so
that load from other processes on the machine hits both alike. Each block starts after a
short rest, so that a contender's threads left spinning (torch's OpenMP pool, ONNX Runtime's
default pool) do not take the cores from the next one. All ratios come from this one run.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np

from .models import resnet18, vgg19


def _export(model, path=None, size=224):
    import torch

    target = path or io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.zeros(1, 3, size, size),), target, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                          opset_version=17, dynamo=False)
    return path or target.getvalue()


def interleaved(calls: dict, repeats: int, warmup: int = 3, block: int = 3, settle: float = 0.05) -> dict:
    """Median seconds per call of each named function, run in alternating blocks of ``block`` calls,
    each block after ``settle`` seconds of rest (untimed), in which the threads the block before
    left spinning (torch's OpenMP pool, a session with ONNX Runtime's defaults) go to sleep."""
    for _ in range(warmup):
        for fn in calls.values():
            fn()
    times = {name: [] for name in calls}
    for _ in range(max(1, repeats // block)):
        for name, fn in calls.items():
            time.sleep(settle)
            start = time.perf_counter()
            for _ in range(block):
                fn()
            times[name].append((time.perf_counter() - start) / block)
    return {name: float(np.median(t)) for name, t in times.items()}


def resnet_speed(repeats: int, threads: int | None = None, spinning: bool = False):
    import onnxruntime
    import torch

    import convscope

    model = resnet18()
    data = _export(model)
    defaults = onnxruntime.SessionOptions()
    if threads:
        torch.set_num_threads(threads)
        defaults.intra_op_num_threads = threads
    backend = convscope.load(data, threads=threads, spinning=spinning)
    same = backend._sessions._options(())  # exactly the options the backend's sessions get
    bare_same = onnxruntime.InferenceSession(data, same, providers=["CPUExecutionProvider"])
    bare_default = onnxruntime.InferenceSession(data, defaults, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    cls = 207
    seed = np.zeros((1, 1000), np.float32)
    seed[0, cls] = 1
    xt = torch.from_numpy(x).requires_grad_(True)

    def torch_gradient():
        with torch.enable_grad():
            return torch.autograd.grad(model(xt)[0, cls], xt)[0]

    ours = backend.gradient(x, {"output": seed})["input"]
    theirs = torch_gradient().numpy()
    error = float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))  # BatchNorm folded by the export
    grad = interleaved({"convscope onnx gradient": lambda: backend.gradient(x, {"output": seed}),
                        "torch autograd": torch_gradient}, repeats)
    fwd_same = interleaved({"convscope onnx forward": lambda: backend.forward(x),
                            "bare, same options": lambda: bare_same.run(None, {"input": x})}, repeats * 2)
    fwd_default = interleaved({"convscope onnx forward": lambda: backend.forward(x),
                               "bare, default options": lambda: bare_default.run(None, {"input": x})}, repeats * 2)
    return grad, (fwd_same, fwd_default), error


GRADIENT_TARGET = 0.7


def rows(threads, repeats: int = 9) -> list[str]:
    """Markdown rows (case, threads, convscope ms, bare ms, ratio) of the ResNet-18 gradient and forward,
    at ``threads`` and at one and two threads (torch and ONNX Runtime alike); torch's own thread
    count is put back afterwards."""
    import torch

    before = torch.get_num_threads()
    out = []
    try:
        for count in dict.fromkeys([threads or None, 1, 2]):
            grad, fwds, error = resnet_speed(repeats, count)
            ours, theirs = grad["convscope onnx gradient"], grad["torch autograd"]
            each = count or "default"
            out.append(f"| ONNX backend input gradient vs torch autograd on the same ResNet-18 (rel. L2 diff "
                       f"{error:.0e}; target <= {GRADIENT_TARGET}) | {each} | {ours * 1e3:.1f} | {theirs * 1e3:.1f} | "
                       f"{ours / theirs:.2f} |")
            for fwd in fwds:
                (_, ours), (bare_name, bare) = fwd.items()
                out.append(f"| ONNX backend forward vs bare InferenceSession.run ({bare_name}), ResNet-18 | {each} | "
                           f"{ours * 1e3:.1f} | {bare * 1e3:.1f} | {ours / bare:.2f} |")
    finally:
        torch.set_num_threads(before)
    return out


_VGG_CHILD = r"""
import json, sys, time
import numpy as np
import convscope

def peak_mb():
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024

base = peak_mb()[1]
t = time.perf_counter(); backend = convscope.load(sys.argv[1]); load = time.perf_counter() - t
after_load = peak_mb()
weights = sum(w.nbytes for w in backend.graph.weights.values()) / 2**20
t = time.perf_counter(); backend._plan((3, 224, 224), (backend.graph.scores,), (backend.graph.image,), "standard")
plan = time.perf_counter() - t
x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
seed = {"output": np.eye(1000, dtype=np.float32)[:1]}
t = time.perf_counter(); backend.gradient(x, seed); first = time.perf_counter() - t
t = time.perf_counter(); g = backend.gradient(x, seed)["input"]; second = time.perf_counter() - t
after = peak_mb()
print(json.dumps(dict(weights_mb=weights, base_mb=base, load_s=load, load_peak_mb=after_load[0] - base,
                      plan_s=plan, first_gradient_s=first, gradient_s=second, peak_mb=after[0] - base,
                      rss_mb=after[1] - base, finite=bool(np.isfinite(g).all()))))
"""


def vgg_cost():
    model = vgg19()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vgg19.onnx")
        _export(model, path)
        del model
        size = os.path.getsize(path) / 2**20
        done = subprocess.run([sys.executable, "-c", _VGG_CHILD, path], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["file_mb"] = size
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--skip-vgg", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and ONNX Runtime alike (default: each framework's own choice)")
    parser.add_argument("--spinning", action="store_true",
                        help="load the backend with spinning=True (ONNX Runtime's default idle-thread spinning)")
    args = parser.parse_args(argv)
    grad, fwds, error = resnet_speed(args.repeats, args.threads, args.spinning)
    print(f"(a) ResNet-18 224x224 batch 1, input gradient of one class score, threads: {args.threads or 'default'}, "
          f"backend spinning={args.spinning}")
    for name, t in grad.items():
        print(f"    {name:26s} {t * 1e3:8.1f} ms")
    ratio_grad = grad["convscope onnx gradient"] / grad["torch autograd"]
    print(f"    ratio onnx / torch = {ratio_grad:.2f}  (target <= {GRADIENT_TARGET}); "
          f"relative L2 difference {error:.1e}")
    print("(b) ResNet-18 forward, same file")
    for fwd in fwds:
        (ours_name, ours), (bare_name, bare) = fwd.items()
        print(f"    {ours_name:26s} {ours * 1e3:8.1f} ms   {bare_name:22s} {bare * 1e3:8.1f} ms   "
              f"ratio backend / bare = {ours / bare:.2f}  (target <= 1.05)")
    if not args.skip_vgg:
        v = vgg_cost()
        print(f"(c) VGG-19: {v['weights_mb']:.0f} MB of weights ({v['file_mb']:.0f} MB file), fresh process")
        print(f"    load {v['load_s']:.2f} s, peak +{v['load_peak_mb']:.0f} MB over the bare interpreter")
        print(f"    gradient graph built in {v['plan_s']:.2f} s; first gradient (session + run) {v['first_gradient_s']:.2f} s; "
              f"next {v['gradient_s']:.2f} s")
        print(f"    peak memory +{v['peak_mb']:.0f} MB = {v['peak_mb'] / v['weights_mb']:.2f} x the weights "
              f"(resident now +{v['rss_mb']:.0f} MB)")


if __name__ == "__main__":
    main()
