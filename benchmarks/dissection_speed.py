"""Dissection throughput vs the backend's raw activation throughput over the same images.

    python -m benchmarks.dissection_speed [N] [--framework torch|onnx|keras ...] [--layer relu4]

Both sides read the same generated concept images batch by batch (rendering included);
the raw side only runs ``backend.activations`` for the layer, dissection adds the cache,
the exact thresholds and the IoU counts. Without ``--framework`` the three demo models
(same weights) are measured one after the other in one run; a framework whose demo model
or runtime is missing is reported as skipped.
"""
from __future__ import annotations

import argparse
import time

from ._timing import machine, peak_rss_mb

FRAMEWORKS = ("torch", "onnx", "keras")


def throughput(n: int = 4000, layer: str = "relu4", batch_size: int = 128, framework: str = "torch") -> dict:
    """Images per second of the raw activations and of ``dissect`` over the same ``n`` images,
    each timed twice, alternately; the second pair is kept."""
    import convscope
    from convscope.data import demo_model, shapes
    from convscope.dissection import dissect

    backend = convscope.load(demo_model(framework))
    data = shapes(n, seed=3)
    rows = []
    for attempt in range(2):  # twice, interleaved: the second pair is reported
        start = time.perf_counter()
        for batch in data.batches(batch_size):
            backend.activations(batch.images, [layer])
        raw = time.perf_counter() - start
        start = time.perf_counter()
        result = dissect(backend, layer, data, batch_size=batch_size, progress=False)
        ours = time.perf_counter() - start
        rows.append((raw, ours))
    raw, ours = rows[-1]
    return {"n": n, "layer": layer, "framework": framework, "raw img/s": n / raw, "dissect img/s": n / ours,
            "ratio": raw / ours, "detectors": len(result.detectors())}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dissection_speed", description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=4000, help="images (default 4000)")
    parser.add_argument("--framework", action="append", choices=FRAMEWORKS,
                        help="demo model to measure (repeatable; default: all three)")
    parser.add_argument("--layer", default="relu4")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    print(f"## Network Dissection of {args.layer}, demo model, {args.n} generated images of 64x64\n")
    print("| backend | raw activations (+ image generation) img/s | dissect img/s | dissect / raw (target >= 0.80) |")
    print("|---|---:|---:|---:|")
    detectors = set()
    for framework in args.framework or FRAMEWORKS:
        try:
            row = throughput(args.n, args.layer, args.batch_size, framework)
        except (ImportError, FileNotFoundError) as error:  # runtime or demo file missing
            print(f"| {framework} | skipped: {error} | | |")
            continue
        detectors.add(row["detectors"])
        print(f"| {framework} | {row['raw img/s']:.0f} | {row['dissect img/s']:.0f} | {row['ratio']:.2f} |")
    print(f"\ndetectors: {', '.join(map(str, sorted(detectors)))}; peak RSS {peak_rss_mb():.0f} MB; {machine()}")


if __name__ == "__main__":
    main()
