"""The benchmark suite: every ratio measured in one run, written to benchmarks/RESULTS.md.

    python -m benchmarks                      # about 15 minutes on 2 cores (ResNet-18 at issue 21's settings: 4)
    python -m benchmarks --quick              # about 3 minutes: demo model only, fewer repeats
    python -m benchmarks --threads 2          # frameworks' thread count (default 1; 0: their own)
    python -m benchmarks --extra-path DIR     # a private folder holding tf-keras-vis (pip install --target DIR)

Sections:

1. method x backend on the demo model (the same weights in torch, ONNX and Keras): convscope
   against each framework's floor and a peer, with peak memory (:func:`convscope.app.bench.bench_backend`);
2. larger models (not with ``--quick``): ResNet-18 at 224 on torch and ONNX Runtime against Captum
   as issue 21 measures it (:data:`LARGE`: integrated gradients in 32 steps, plain occlusion with
   32-pixel windows at stride 16, 32 images a call), ResNet50 on Keras;
3. backend overheads: the torch gradient against ``torch.autograd.grad``
   (:mod:`benchmarks.torch_speed`), the ONNX input gradient against torch autograd and its forward
   against a bare session at one and at two threads (:func:`benchmarks.onnx_speed.rows`), a method
   given a model file against the loaded backend (:mod:`benchmarks.load_speed`); each row says its
   thread count;
4. features: the top-patches scan against bare activations, the t-SNE adapter against
   openTSNE, openTSNE against scikit-learn (:mod:`benchmarks.features_speed`);
5. dissection throughput against bare activations (:mod:`benchmarks.dissection_speed`);
6. the cross-framework table (:mod:`benchmarks.crossframework`);
7. the scripts of :data:`SCRIPTS` (metrics against Quantus, LRP/DeepLift against Captum, the
   sampling family, the GPU table of :mod:`benchmarks.gpu_speed`), each run as it is and its
   table copied in.

A section that fails is reported in the file and the others still run.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

RESULTS = Path(__file__).with_name("RESULTS.md")


def _versions() -> str:
    from importlib import metadata

    found = []
    for dist in ("numpy", "torch", "tensorflow-cpu", "keras", "onnx", "onnxruntime", "captum", "tf-keras-vis",
                 "openTSNE", "scikit-learn"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            try:
                module = __import__(dist.replace("-", "_"))
                found.append(f"{dist} {module.__version__}")
            except (ImportError, AttributeError):
                pass
    return ", ".join(found)


def demo_table(quick: bool, threads: int) -> str:
    import convscope
    from convscope.app.bench import bench_backend, format_rows
    from convscope.data import demo_model, shapes

    n = 8
    x = shapes(n, seed=0).images
    twin = demo_model("torch")
    rows = []
    for fw in ("torch", "onnx", "keras"):
        source = demo_model(fw)
        backend = convscope.load(source, **({"threads": threads or None} if fw == "onnx" else {}))
        rows += bench_backend(backend, x, source=source if fw == "onnx" else None, repeat=3 if quick else 7,
                              steps=16, threads=threads, peer_model=twin if fw == "onnx" else None)
    return (f"Demo model (64 x 64), batch {n}; integrated gradients 16 steps in one call; occlusion window 16, "
            "stride 8, all 49 windows in one call; Grad-CAM and activations at 'relu4'; visualize: class_logit, "
            f"64 x 64, per step. Best of {3 if quick else 7} interleaved calls.\n\n" + format_rows(rows))


#: ResNet-18 at 224 as issue 21 measures it: integrated gradients in 32 steps; occlusion with
#: 32-pixel windows at stride 16 (169 windows), 32 occluded images per call
LARGE = dict(layer="layer4", steps=32, window=(32, 32), stride=(16, 16), per_eval=32, repeat=3)


def large_models(threads: int) -> str:
    import convscope
    from convscope.app.bench import bench_backend, format_rows

    from .models import resnet18
    from .onnx_speed import _export

    import numpy as np

    net = resnet18()
    x = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)
    options = dict(methods=("saliency", "guided_backprop", "integrated_gradients", "occlusion", "grad_cam"),
                   threads=threads, incremental=False, **LARGE)
    rows = bench_backend(convscope.load(net), x, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = _export(net)
    onnx_backend = convscope.load(data, threads=threads or None)
    layer = next(r.name for r in reversed(onnx_backend.layers()) if r.kind == "relu" and r.spatial)
    rows += bench_backend(onnx_backend, x, source=data, peer_model=net, peer_layer="layer4",
                          **{**options, "layer": layer})
    windows = ((224 - LARGE["window"][0]) // LARGE["stride"][0] + 1) ** 2
    text = (f"ResNet-18 (random weights), 224 x 224, batch 1, {threads or 'default'} thread(s) per framework; "
            f"integrated gradients {LARGE['steps']} steps; occlusion window {LARGE['window'][0]}, stride "
            f"{LARGE['stride'][0]} ({windows} windows), {LARGE['per_eval']} occluded images per call, the plain path "
            "(`incremental=False`: every occluded image through the whole network, as Captum does; incremental "
            f"occlusion has its own section); Grad-CAM at layer4 (ONNX: its last ReLU, {layer!r}). Best of "
            f"{LARGE['repeat']} interleaved calls.\n\n" + format_rows(rows))
    try:
        import keras
    except ImportError:
        return text + "\n\n(Keras ResNet50 skipped: TensorFlow is not installed.)"
    keras.utils.set_random_seed(0)
    resnet50 = keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3), classifier_activation=None)
    rows = bench_backend(convscope.load(resnet50), x, methods=("saliency", "grad_cam"), layer="conv5_block3_out",
                         repeat=3, threads=threads)
    return text + ("\n\nKeras ResNet50 (weights=None, logits), 224 x 224, batch 1; Grad-CAM at conv5_block3_out.\n\n"
                   + format_rows(rows))


def overheads(quick: bool, threads: int) -> str:
    import numpy as np

    from . import load_speed, onnx_speed, torch_speed
    from .models import resnet18

    rng = np.random.default_rng(0)
    from convscope.data import demo_model

    lines = ["| case | threads | convscope ms | bare ms | ratio |", "|---|---:|---:|---:|---:|"]
    each = f"{threads or 'default'}"
    ours, raw = torch_speed.case(demo_model("torch"), rng.random((16, 3, 64, 64), dtype=np.float32), 1,
                                 repeat=15 if quick else 40)
    lines.append(f"| torch backend gradient vs torch.autograd.grad, demo model, batch 16 | {each} | "
                 f"{ours * 1e3:.1f} | {raw * 1e3:.1f} | {ours / raw:.2f} |")
    if not quick:
        ours, raw = torch_speed.case(resnet18(), rng.random((1, 3, 224, 224), dtype=np.float32), 3, repeat=9)
        lines.append(f"| torch backend gradient vs torch.autograd.grad, ResNet-18, batch 1 | {each} | "
                     f"{ours * 1e3:.1f} | {raw * 1e3:.1f} | {ours / raw:.2f} |")
        lines += onnx_speed.rows(threads, repeats=9)  # at these threads, and at one and two
    lines += [row.replace(" | ", f" | {each} | ", 1) for row in load_speed.rows(repeat=15 if quick else 40)]
    return "\n".join(lines)


def feature_tools(quick: bool) -> str:
    from . import features_speed as fs

    lines = ["| case | convscope | reference | ratio (time) | by CPU time |", "|---|---:|---:|---:|---:|"]
    scan = fs.scan_throughput(n=512 if quick else 1024, repeats=3 if quick else 5)
    lines.append(f"| top_patches scan vs bare activations, {scan['what']} (images/s; ratio = bare time / scan time) | "
                 f"{scan['scan img/s']:.0f} img/s | {scan['raw img/s']:.0f} img/s | {scan['wall ratio']:.2f} | "
                 f"{scan['cpu ratio']:.2f} |")
    tsne = fs.tsne_adapter(n=500 if quick else 1000, repeats=2 if quick else 3)
    lines.append(f"| t-SNE: convscope.features.TSNE vs openTSNE called directly, {tsne['what']} | "
                 f"{tsne['adapter s']:.2f} s | {tsne['openTSNE s']:.2f} s | {tsne['wall ratio']:.2f} | "
                 f"{tsne['cpu ratio']:.2f} |")
    n, d = (1000, 64) if quick else (5000, 512)
    peers = fs.tsne_peers(n=n, d=d)
    lines.append(f"| t-SNE: openTSNE (convscope's engine) vs scikit-learn TSNE, {peers['what']}, 1000 iterations | "
                 f"{peers['openTSNE s']:.1f} s | {peers['scikit-learn s']:.1f} s | {peers['wall ratio']:.2f} | "
                 f"{peers['cpu ratio']:.2f} |")
    return "\n".join(lines)


def dissection(quick: bool) -> str:
    from .dissection_speed import throughput

    lines = ["| backend | images | raw activations img/s | dissect img/s | dissect / raw throughput |",
             "|---|---:|---:|---:|---:|"]
    for fw in ("torch",) if quick else ("torch", "onnx", "keras"):
        row = throughput(n=1000 if quick else 2000, layer="relu4", batch_size=128, framework=fw)
        lines.append(f"| {fw} | {row['n']} | {row['raw img/s']:.0f} | {row['dissect img/s']:.0f} | {row['ratio']:.2f} |")
    return ("Network Dissection of relu4 (64 units, 14 concepts), generated 64 x 64 images; both sides generate the "
            "images; dissect adds the activation cache, exact radix-select thresholds and IoU counts.\n\n"
            + "\n".join(lines))


def cross_framework(quick: bool) -> str:
    from . import crossframework

    return crossframework.__doc__.split("\n\n", 2)[2].strip() + "\n\n" + crossframework.table(
        crossframework.compare(quick))


#: benchmark scripts that print their own tables, run as one section each (in a fresh process,
#: so one framework's threads or memory do not colour the next)
SCRIPTS = {
    "metrics": ("Metrics against Quantus (and Captum), the comparison table",
                ["metrics_speed", "faithfulness_speed", "robustness_speed", "sanity_speed", "compare_speed"]),
    "rules": ("LRP and the DeepLift family against Captum, on every backend",
              ["lrp_speed", "lrp_onnx_speed", "lrp_keras_speed"]),
    "sampling": ("Noise tunnels, perturbation and sampling methods, more CAMs, TCAV",
                 ["perturbation_speed", "cam_variants_speed"]),
    "serve": ("convscope serve: an image page's time to first byte and its maps, cold and cached", ["serve_speed"]),
    "occlusion": ("Incremental occlusion (Krypton) on torch: against the raw floor, Captum, approximate mode",
                  ["incremental_speed"]),
    "windows": ("Incremental inference beyond occlusion: feature ablation over windows, deletion's early steps",
                ["incremental_windows_speed"]),
    "gpu": ("GPU: torch on CUDA and ONNX Runtime's CUDA provider side by side, against Captum on the same GPU "
            "(unmeasured where no GPU is present)", ["gpu_speed"]),
}


def scripts(key: str, threads: int) -> str:
    import subprocess

    env = {**os.environ, "OMP_NUM_THREADS": str(threads or os.cpu_count())}
    parts = []
    for name in SCRIPTS[key][1]:
        if not Path(__file__).with_name(f"{name}.py").exists():
            continue
        done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], capture_output=True, text=True, env=env,
                              cwd=Path(__file__).parent.parent)
        out = done.stdout.strip() if done.returncode == 0 else f"(failed: {done.stderr.strip()[-800:]})"
        parts.append(f"### `python -m benchmarks.{name}`\n\n{out}")
    return "\n\n".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo model only, fewer repeats (about 3 minutes)")
    parser.add_argument("--threads", type=int, default=1, help="threads per framework (default 1; 0: their own)")
    parser.add_argument("--extra-path", action="append", default=[],
                        help="a folder put first on sys.path (e.g. a private --target install of tf-keras-vis)")
    parser.add_argument("--out", default=str(RESULTS), help=f"where to write the results (default {RESULTS})")
    parser.add_argument("--only", action="append", help="run only these sections (repeatable)",
                        choices=("demo", "large", "overheads", "features", "dissection", "cross", *SCRIPTS))
    args = parser.parse_args(argv)
    for path in reversed(args.extra_path):
        sys.path.insert(0, os.path.abspath(path))
    from convscope.app.bench import limit_threads, machine

    limit_threads(args.threads)  # before any framework is imported
    warnings.filterwarnings("ignore", category=UserWarning)
    started = time.perf_counter()
    sections = [("demo", "Method x backend, demo model", lambda: demo_table(args.quick, args.threads)),
                ("large", "Larger models", lambda: large_models(args.threads)),
                ("overheads", "Backend overheads", lambda: overheads(args.quick, args.threads)),
                ("features", "Feature tools and t-SNE", lambda: feature_tools(args.quick)),
                ("dissection", "Dissection throughput", lambda: dissection(args.quick)),
                ("cross", "Cross-framework agreement: the demo model's weights in torch, ONNX and Keras",
                 lambda: cross_framework(args.quick))]
    sections += [(key, title, lambda key=key: scripts(key, args.threads)) for key, (title, _) in SCRIPTS.items()]
    if args.quick:
        sections = [s for s in sections if s[0] != "large"]
    if args.only:
        sections = [s for s in sections if s[0] in args.only]
    body = []
    for key, title, run in sections:
        start = time.perf_counter()
        print(f"[{time.perf_counter() - started:5.0f} s] {title} ...", file=sys.stderr, flush=True)
        try:
            text = run()
        except Exception as err:  # report and go on: one broken section must not hide the others
            text = f"(failed: {type(err).__name__}: {err})"
            traceback.print_exc()
        body.append(f"## {title}\n\n{text}\n\n_{time.perf_counter() - start:.0f} s_\n")
    total = time.perf_counter() - started
    threads = f"{args.threads} per framework" if args.threads else "the frameworks' defaults"
    command = " ".join(["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])])
    head = [
        "# convscope benchmark results", "",
        f"Written by `{command}` on {datetime.date.today().isoformat()} in {total / 60:.1f} minutes.", "",
        f"- Machine: {machine()}",
        f"- Threads: {threads} (torch, TensorFlow, ONNX Runtime and NumPy's BLAS); one thread gives steady ratios on "
        "a shared machine, `--threads N` uses more.",
        f"- Versions: {_versions()}",
        "- Every ratio is convscope's time over the other's, measured in this one run; below 1 convscope is faster. "
        "Times are the best of interleaved calls (the least disturbed estimate on a shared machine).",
        "- The floor is the fastest way the framework itself offers to compute what the method needs (no "
        "convscope); the peer is the library a user would otherwise use: Captum on torch, tf-keras-vis (or a bare "
        "eager GradientTape where it has no such method) on TensorFlow. ONNX rows compare with Captum on the torch "
        "model of the same weights (the torch twin). tf-keras-vis is not a convscope dependency: install it aside "
        "(`pip install --no-deps --target DIR tf-keras-vis==0.8.7 deprecated`) and pass `--extra-path DIR`; its "
        "GuidedBackpropagation modifier only replaces `activation=` attributes, not ReLU layers, so it would return "
        "the plain gradient on these models and is not used as a guided-backprop peer.",
        "- Peak memory: the rise of the process's resident memory over one call after warm-up (Linux high-water "
        "mark); allocators that keep memory (ONNX Runtime's arena, torch's) show 0 once warm.", ""]
    text = "\n".join(head + body)
    from convscope.render.image import atomic_write

    atomic_write(args.out, text)
    print(text)
    print(f"wrote {args.out} in {total:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
