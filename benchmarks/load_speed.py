"""What a method costs when given a model file instead of the loaded backend.

``convscope.load`` memoises a file by (path, modification time, size, options), so
``saliency("model.onnx", x)`` pays a ``stat`` and a dictionary look-up over
``saliency(backend, x)``. Target: at most 1.05x, on the demo model's ONNX and Keras files.

    python -m benchmarks.load_speed
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

TARGET = 1.05


def path_vs_backend(framework: str, *, batch: int = 1, repeat: int = 40) -> tuple[float, float]:
    """Median seconds of ``saliency(path, x)`` and ``saliency(backend, x)``, interleaved."""
    import convscope
    from convscope.data import demo_path, shapes

    from ._timing import measure

    path = str(demo_path(framework))
    x = shapes(batch, seed=0).images
    backend = convscope.load(path)
    times = measure({"path": lambda: convscope.saliency(path, x), "backend": lambda: convscope.saliency(backend, x)},
                    repeat=repeat, warmup=3)
    return times["path"], times["backend"]


def rows(repeat: int = 40) -> list[str]:
    """Markdown table rows (case, convscope ms, bare ms, ratio) for the frameworks installed."""
    import importlib.util

    out = []
    for framework, module in (("onnx", "onnxruntime"), ("keras", "tensorflow")):
        if importlib.util.find_spec(module) is None:
            continue
        ours, bare = path_vs_backend(framework, repeat=repeat)
        out.append(f"| saliency given the {framework.upper() if framework == 'onnx' else 'Keras'} file path vs given "
                   f"the loaded backend, demo model, batch 1 (target <= {TARGET:.2f}) | {ours * 1e3:.2f} | "
                   f"{bare * 1e3:.2f} | {ours / bare:.2f} |")
    return out


def main():
    from convscope.app.bench import limit_threads

    limit_threads(1)
    print("| case | convscope ms | bare ms | ratio |\n|---|---:|---:|---:|")
    print("\n".join(rows()))


if __name__ == "__main__":
    main()
