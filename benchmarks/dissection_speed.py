"""Dissection throughput vs the backend's raw activation throughput over the same images.

    python -m benchmarks.dissection_speed [N]

Both sides read the same generated concept images batch by batch (rendering included);
the raw side only runs ``backend.activations`` for the layer, dissection adds the cache,
the exact thresholds and the IoU counts.
"""
from __future__ import annotations

import sys
import time

from ._timing import machine, peak_rss_mb


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
    return {"n": n, "layer": layer, "raw img/s": n / raw, "dissect img/s": n / ours, "ratio": raw / ours,
            "detectors": len(result.detectors())}


def main(n: int = 4000, layer: str = "relu4", batch_size: int = 128):
    row = throughput(n, layer, batch_size)
    print(f"## Network Dissection of {layer}, demo model, {n} generated images of 64x64\n")
    print("| | images/s | ratio to raw |\n|---|---|---|")
    print(f"| raw activations (+ image generation) | {row['raw img/s']:.0f} | 1.00 |")
    print(f"| dissect (one model pass, exact thresholds, IoU) | {row['dissect img/s']:.0f} | {row['ratio']:.2f} "
          "(target >= 0.80) |")
    print(f"\n{row['detectors']} detectors; peak RSS {peak_rss_mb():.0f} MB; {machine()}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
