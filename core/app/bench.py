"""Benchmark convscope on a model: each method's time as a ratio to the framework's own
floor and to a peer library, all measured in one run.

    convscope bench MODEL [--batch 4] [--repeat 5] [--threads 1] [--methods saliency grad_cam ...]

For every method the table gives convscope's time, the **floor** (the fastest way the
framework itself offers to compute what the method needs: one forward and one backward for a
gradient method, the batched forward of the same occluded images for occlusion, see
:mod:`convscope.app.bench_floors`) and a **peer** (Captum on torch; tf-keras-vis, or a bare
eager ``GradientTape``, on TensorFlow; see :mod:`convscope.app.bench_peers`), each as a ratio:
``x floor = convscope / floor`` and ``x peer = convscope / peer`` (below 1: convscope is
faster). Times are the best of ``repeat`` calls of each contender, run interleaved
(A, B, C, A, B, C, ...): on a shared machine the minimum is the least disturbed estimate of
the work, and interleaving makes drift hit every contender alike. Peak memory is the rise of
the process's resident memory over one call (Linux: the high-water mark reset before it).

Frameworks run with one thread by default (``--threads``), which gives steady ratios on a
shared machine; the command sets the thread counts before it loads the model.
"""
from __future__ import annotations

import os
import platform
import threading
import time
from dataclasses import dataclass

import numpy as np

from .._validate import check_choice, check_int, param_error

__all__ = ["METHODS", "BenchRow", "best_of", "peak_memory_mb", "machine", "limit_threads", "bench_backend",
           "format_rows", "add_bench_command"]

#: The methods :func:`bench_backend` times, in table order.
METHODS = ("activations", "saliency", "guided_backprop", "integrated_gradients", "occlusion", "grad_cam", "visualize")


@dataclass
class BenchRow:
    """One line of the table: seconds per call of convscope, the floor and the peer (None when
    there is none), and peak memory in MB of one call of convscope and of the peer."""

    method: str
    backend: str
    ours: float | None
    floor: float | None = None
    floor_name: str = ""
    peer: float | None = None
    peer_name: str = ""
    ours_mb: float | None = None
    peer_mb: float | None = None
    gradient: str = ""
    note: str = ""

    @property
    def x_floor(self):
        return None if self.floor is None or self.ours is None else self.ours / self.floor

    @property
    def x_peer(self):
        return None if self.peer is None or self.ours is None else self.ours / self.peer


# --------------------------------------------------------------------------- measuring
def best_of(calls: dict, *, repeat: int = 5, warmup: int = 1, per_call: int = 1) -> dict:
    """Best seconds per call of each zero-argument callable, timed interleaved; a callable that
    does ``per_call`` units of work (optimisation steps) is divided by it."""
    for fn in calls.values():
        for _ in range(warmup):
            fn()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(repeat):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], (time.perf_counter() - start) / per_call)
    return best


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory_mb(fn) -> float | None:
    """Rise of resident memory over one call of ``fn``, in MB: on Linux the exact high-water
    mark (reset through ``/proc/self/clear_refs`` first), elsewhere the largest value seen by
    a sampling thread (every 2 ms, needs psutil); None when neither is available."""
    base = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        fn()
        peak = _status_kb("VmHWM")
        return None if peak is None or base is None else max(peak - base, 0) / 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        fn()
        return None
    process, done = psutil.Process(), threading.Event()
    start = process.memory_info().rss
    seen = [start]

    def sample():
        while not done.wait(0.002):
            seen.append(process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return max(max(seen) - start, 0) / 2**20


def machine() -> str:
    """CPU, cores, OS and Python, for the table's header."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def limit_threads(threads: int | None):
    """Use ``threads`` threads in every framework: environment variables for those not yet
    loaded, torch and TensorFlow's own settings for those loaded, NumPy's BLAS through
    threadpoolctl. ``None`` or 0 leaves the frameworks' defaults. Returns what was set."""
    import sys

    if not threads:
        return {}
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    done = {"env": threads}
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
        done["torch"] = threads
    if "tensorflow" in sys.modules:  # else TensorFlow reads TF_NUM_INTRAOP_THREADS when it starts
        tf = sys.modules["tensorflow"]
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
            done["tensorflow"] = threads
        except RuntimeError:  # its runtime started already: too late to change
            pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads, user_api="blas")
        done["blas"] = threads
    except ImportError:
        pass
    return done


# --------------------------------------------------------------------------- the cases
def _layer_for(backend, x, layer):
    """The layer of activations and Grad-CAM; None when the model has no spatial layer (those
    two rows then say so)."""
    from .._layers import resolve_layer

    try:
        return resolve_layer(backend, x, layer, "bench")[0]
    except ValueError:
        if layer is not None:
            raise
        return None


def bench_backend(backend, x, *, source=None, methods=METHODS, layer=None, repeat=5, steps=16, window=None,
                  stride=None, per_eval=None, visualize_steps=4, threads=None, peers=True, peer_model=None,
                  peer_layer=None, memory=True, incremental=None) -> list:
    """Time ``methods`` on ``backend`` for images ``x`` (N, C, H, W): a :class:`BenchRow` each.

    ``source`` is what was loaded (an ONNX path or bytes: its bare session is the ONNX floor).
    ``layer`` is the layer of activations and Grad-CAM (default: the last spatial one);
    ``steps`` the integrated-gradients steps; occlusion uses ``window`` (default H / 4),
    ``stride`` (half the window) and ``per_eval`` occluded copies per call (default: all of
    them in one call, up to 64), and ``incremental`` (None: occlusion's default) is passed on
    to it. ``peer_model`` (a torch module with the same weights) gives Captum peers to a
    backend of another framework, with ``peer_layer`` its name for ``layer``.
    """
    from .bench_cases import cases_for
    from .bench_floors import floor_for
    from .bench_peers import captum_peers, keras_peers

    for m in methods:
        check_choice(m, METHODS, "methods", "bench")
    repeat = check_int(repeat, "repeat", "bench", low=1)
    x = np.ascontiguousarray(x, np.float32)
    if x.ndim != 4:
        raise param_error("x", "bench", "a 4-d array (N, C, H, W)", f"shape {x.shape}")
    out = backend.forward(x)
    target, k = out.argmax(axis=1).astype(np.int64), out.shape[1]
    layer = _layer_for(backend, x, layer)
    h, w = x.shape[2:]
    window = window or (max(1, h // 4), max(1, w // 4))
    stride = stride or (max(1, window[0] // 2), max(1, window[1] // 2))
    if per_eval is None:
        from ..attribution.occlusion import window_positions
        per_eval = min(64, len(window_positions((h, w), window, stride)))
    floor = floor_for(backend, source, threads)
    options = dict(layer=layer, steps=steps, window=window, stride=stride, per_eval=per_eval)
    cases = cases_for(backend, floor, x, target, k, visualize_steps=visualize_steps, incremental=incremental,
                      **options)
    peer_calls = {}
    if peers:
        torch_module = peer_model if peer_model is not None else getattr(backend, "module", None)
        if backend.name == "tensorflow":
            peer_calls = keras_peers(backend.model, floor.native(x), target, x_nchw=x, to_native=floor.native, **options)
        elif torch_module is not None:
            peer_calls = captum_peers(torch_module, x, target, **{**options, "layer": peer_layer or layer})
            if backend.name != "torch":
                peer_calls = {m: (f"{name} (torch twin)", fn) for m, (name, fn) in peer_calls.items()}
    return [_time_method(method, backend.name, cases[method], peer_calls.get(method), repeat=repeat, memory=memory,
                         per_call=visualize_steps if method == "visualize" else 1,
                         gradient=floor.grad_label if floor else "") for method in methods]


def _time_method(method, backend_name, case, peer, *, repeat, memory, per_call, gradient) -> BenchRow:
    """One row. Each contender runs once first (the warm-up): one that fails is left out of the
    row, and the row says why, so that one method a model cannot do leaves the others standing."""
    ours, floor_call, floor_name = case
    calls = {"ours": ours, "floor": floor_call or None, "peer": peer[1] if peer else None}
    calls = {role: fn for role, fn in calls.items() if fn is not None}
    notes = []
    for role in list(calls):
        try:
            calls[role]()
        except Exception as err:  # reported in the table, not raised: the other methods still run
            del calls[role]
            notes.append(f"{'convscope' if role == 'ours' else peer[0] if role == 'peer' else 'the floor'} failed: "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    if "ours" not in calls:
        return BenchRow(method, backend_name, None, note="; ".join(notes))
    got = best_of(calls, repeat=repeat, warmup=0, per_call=per_call)
    return BenchRow(method, backend_name, got["ours"], got.get("floor"), floor_name if "floor" in calls else "",
                    got.get("peer"), peer[0] if "peer" in calls else "",
                    peak_memory_mb(ours) if memory else None,
                    peak_memory_mb(calls["peer"]) if memory and "peer" in calls else None,
                    gradient, "; ".join(notes))


# --------------------------------------------------------------------------- the table
def _ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.1f}" if seconds < 10 else f"{seconds:.1f} s"


def _ratio(r):
    return "-" if r is None else f"{r:.2f}"


def _mb(v):
    return "-" if v is None else f"{v:.1f}" if v < 10 else f"{v:.0f}"


def format_rows(rows, *, notes: bool = True) -> str:
    """A Markdown table of :class:`BenchRow` (one per method and backend), then what each floor is."""
    lines = ["| method | backend | convscope ms | floor ms | x floor | peer | peer ms | x peer | peak MB convscope / peer |",
             "|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.method} | {r.backend} | {_ms(r.ours)} | {_ms(r.floor)} | {_ratio(r.x_floor)} | "
                     f"{r.peer_name or '-'} | {_ms(r.peer)} | {_ratio(r.x_peer)} | {_mb(r.ours_mb)} / {_mb(r.peer_mb)} |")
    failed = [f"{r.method} on {r.backend}: {r.note}" for r in rows if r.note]
    if failed:
        lines += ["", "Left out: " + "; ".join(failed) + "."]
    if notes:
        grads = {r.backend: r.gradient for r in rows if r.gradient}
        methods = {r.method: r.floor_name for r in rows if r.floor_name}
        if grads or methods:
            lines += ["", "Floors (the framework alone): "
                      + "; ".join(f"{m}: {f}" for m, f in methods.items()) + ". A gradient there is "
                      + "; ".join(f"{g} on {b}" for b, g in grads.items()) + "."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the command
def _input_shape(backend, model, size):
    """(C, H, W) of the benchmark images: ``size`` or the model's own size, else 224 x 224."""
    channels = getattr(backend, "channels", None) or 3
    if size:
        return (int(channels), int(size[0]), int(size[1]))
    for shape in (getattr(backend, "input_shape", None), getattr(model, "input_shape", None)):
        if isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(v, int) for v in shape):
            return shape
    fixed = getattr(backend, "fixed_size", None)
    return (int(channels), *(fixed or (224, 224)))


def _cmd_bench(args):
    from .. import load
    from .inputs import load_model

    threads = limit_threads(args.threads)
    model = load_model(args.model)
    onnx_file = isinstance(model, str) and model.lower().endswith(".onnx")
    options = {"threads": args.threads} if onnx_file and args.threads else {}
    backend = load(model, **options)
    shape = _input_shape(backend, model, args.size)
    x = np.random.default_rng(0).random((args.batch, *shape), dtype=np.float32)
    rows = bench_backend(backend, x, source=model if backend.name == "onnxruntime" else None,
                         methods=args.methods or METHODS, layer=args.layer, repeat=args.repeat, steps=args.steps,
                         visualize_steps=args.visualize_steps, threads=args.threads, peers=not args.no_peers)
    print(f"# convscope bench {args.model}: batch {args.batch} of {shape[0]}x{shape[1]}x{shape[2]}, best of "
          f"{args.repeat}, threads {threads.get('env', 'framework default')}")
    print(f"# {machine()}\n")
    print(format_rows(rows))


def plain(rst: str) -> str:
    """reStructuredText to plain text for ``--help``: roles, literals and emphasis unmarked."""
    import re
    return re.sub(r"\s+", " ", re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", rst).replace("``", "").replace("**", "")).strip()


def add_bench_command(subparsers):
    """Register ``convscope bench MODEL`` on the command's subparsers."""
    from .inputs import MODEL_FORMATS

    text = "time every method on MODEL against the framework's floor and a peer library"
    p = subparsers.add_parser("bench", help=text, description=text + ". " + plain(__doc__.split("\n\n")[2]))
    p.add_argument("model", metavar="MODEL", help=MODEL_FORMATS)
    p.add_argument("--batch", type=int, default=4, help="images per call (default 4)")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="image size (default: the model's, else 224)")
    p.add_argument("--repeat", type=int, default=5, help="timed calls of each contender; the best is kept (default 5)")
    p.add_argument("--steps", type=int, default=16, help="integrated-gradients steps (default 16)")
    p.add_argument("--visualize-steps", type=int, default=4, help="visualize steps timed per call (default 4)")
    p.add_argument("--layer", help="layer for activations and Grad-CAM (default: the last spatial one)")
    p.add_argument("--methods", nargs="+", choices=METHODS, help="methods to time (default: all)")
    p.add_argument("--threads", type=int, default=1, help="threads per framework (default 1; 0: the frameworks' own)")
    p.add_argument("--no-peers", action="store_true", help="skip the peer libraries")
    p.set_defaults(fn=_cmd_bench)
    return p
