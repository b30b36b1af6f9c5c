"""Speed of the feature tools, as ratios measured in one run.

1. Scan throughput: ``top_patches`` over N images vs the backend's bare ``activations``
   over the same batches (images per second, higher is better; target >= 0.85).
2. The t-SNE adapter vs calling openTSNE directly with the same parameters (time ratio;
   target <= 1.05).
3. openTSNE vs scikit-learn's TSNE on 5,000 x 512 features (time ratio, reported).

Each ratio is given twice: by wall-clock time and by this process's CPU time (the
minimum over alternating repeats of each). On a shared machine the CPU-time ratio is the
steadier one: other processes stretch wall time but not the work done here.

Run: ``python -m benchmarks.features_speed [--quick]`` (``--quick`` skips 3, ~1 minute).
"""
from __future__ import annotations

import argparse
import time

import numpy as np


def timed(fn) -> tuple:
    """(wall seconds, process CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def compare(ours, reference, repeats: int) -> dict:
    """Alternate the two, keep each one's fastest wall and CPU time, and their ratios."""
    t_ours, t_ref = [], []
    for _ in range(repeats):
        t_ref.append(timed(reference))
        t_ours.append(timed(ours))
    w_ours, c_ours = min(t[0] for t in t_ours), min(t[1] for t in t_ours)
    w_ref, c_ref = min(t[0] for t in t_ref), min(t[1] for t in t_ref)
    return {"ours wall": w_ours, "ref wall": w_ref, "ours cpu": c_ours, "ref cpu": c_ref,
            "wall ratio": w_ours / w_ref, "cpu ratio": c_ours / c_ref}


def scan_throughput(n: int = 1024, layer: str = "relu3", batch_size: int = 64, repeats: int = 7) -> dict:
    from convscope.backends.torch import TorchBackend
    from convscope.data import demo_model, shapes
    from convscope.features import top_patches

    backend = TorchBackend(demo_model())
    images = shapes(n, seed=1).images

    def raw():
        for i in range(0, n, batch_size):
            backend.activations(images[i:i + batch_size], [layer])

    def scanned():
        top_patches(backend, images, layer, k=9, batch_size=batch_size, progress=False)

    raw(), scanned()  # warm up
    row = compare(scanned, raw, repeats)
    # throughput ratio = time of the bare activations / time of the scan
    return {"what": f"{n} images, layer {layer}", "raw img/s": n / row["ref wall"], "scan img/s": n / row["ours wall"],
            "wall ratio": 1 / row["wall ratio"], "cpu ratio": 1 / row["cpu ratio"]}


def tsne_adapter(n: int = 1000, d: int = 50, repeats: int = 5) -> dict:
    import openTSNE

    from convscope.features import TSNE

    x = blobs(n, d)
    ours = lambda: TSNE(perplexity=30, max_iter=500, random_state=0).fit_transform(x)  # noqa: E731
    direct = lambda: np.asarray(openTSNE.TSNE(perplexity=30, n_iter=250, early_exaggeration_iter=250,  # noqa: E731
                                              early_exaggeration=12, random_state=0).fit(x))
    row = compare(ours, direct, repeats)
    return {"what": f"{n} x {d}", "adapter s": row["ours wall"], "openTSNE s": row["ref wall"],
            "wall ratio": row["wall ratio"], "cpu ratio": row["cpu ratio"]}


def tsne_peers(n: int = 5000, d: int = 512) -> dict:
    from sklearn.manifold import TSNE as SklearnTSNE

    from convscope.features import TSNE

    x = blobs(n, d)
    row = compare(lambda: TSNE(max_iter=1000, random_state=0).fit_transform(x),
                  lambda: SklearnTSNE(max_iter=1000, random_state=0, init="pca").fit_transform(x), 1)
    return {"what": f"{n} x {d}", "openTSNE s": row["ours wall"], "scikit-learn s": row["ref wall"],
            "wall ratio": row["wall ratio"], "cpu ratio": row["cpu ratio"]}


def blobs(n: int, d: int, classes: int = 10, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (classes, d))
    return (centres[rng.integers(classes, size=n)] + rng.normal(0, 1, (n, d))).astype(np.float32)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip openTSNE vs scikit-learn (about a minute)")
    args = parser.parse_args(argv)
    rows = [("top_patches scan vs bare activations (throughput, >= 0.85)", scan_throughput()),
            ("TSNE adapter vs openTSNE (time, <= 1.05)", tsne_adapter())]
    if not args.quick:
        rows.append(("openTSNE vs scikit-learn TSNE (time)", tsne_peers()))
    for title, row in rows:
        detail = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                           if "ratio" not in k)
        print(f"{title}: {row['cpu ratio']:.3f} by CPU time, {row['wall ratio']:.3f} by wall time  ({detail})",
              flush=True)


if __name__ == "__main__":
    main()
