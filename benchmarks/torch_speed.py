"""Torch backend input gradient vs raw ``torch.autograd.grad`` on the same model and input.

    python -m benchmarks.torch_speed
"""
from __future__ import annotations

import numpy as np

from ._timing import machine, measure, report


def case(model, x_np, target, repeat):
    import torch

    import convscope

    backend = convscope.load(model)
    seeds = np.zeros(backend.forward(x_np).shape, np.float32)
    seeds[:, target] = 1

    def raw():
        x = torch.from_numpy(x_np).requires_grad_(True)
        with torch.enable_grad():
            out = model(x)
            (g,) = torch.autograd.grad(out, x, torch.from_numpy(seeds))
        return g.numpy()

    def ours():
        return backend.gradient(x_np, {"output": seeds})["input"]

    np.testing.assert_allclose(ours(), raw(), rtol=1e-4, atol=1e-6)
    t = measure({"ours": ours, "raw": raw}, repeat=repeat)
    return t["ours"], t["raw"]


def main():
    import torch

    from convscope.data import demo_model

    from .models import resnet18

    rng = np.random.default_rng(0)
    rows = []
    ours, raw = case(resnet18(), rng.random((1, 3, 224, 224), dtype=np.float32), 3, repeat=15)
    rows.append(("ResNet-18, 224x224, batch 1", ours, raw, 1.10))
    ours, raw = case(demo_model("torch"), rng.random((16, 3, 64, 64), dtype=np.float32), 1, repeat=40)
    rows.append(("demo model, 64x64, batch 16", ours, raw, 1.10))
    print(report("torch backend input gradient vs torch.autograd.grad", rows))
    print(f"\n{machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
