"""Train the demo model on generated shapes and write its weights into the package.

    python -m convscope.data._build.train_demo            # full run, writes demo_weights.npz
    python -m convscope.data._build.train_demo --quick    # reduced size, writes nothing

Fixed seeds: the data are a pure function of their seed and torch is seeded, so a rerun
on the same torch build gives the same weights.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..demo import build_torch_demo
from ..shapes import shapes

HERE = Path(__file__).parent.parent  # core/data, where the demo files live
TRAIN_SEED, TEST_SEED = 1, 2


def train(n_train=12000, n_test=2000, epochs=10, batch_size=64, lr=3e-3, seed=0, log=print):
    """Train from scratch; return (model, held-out accuracy)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = build_torch_demo()
    data = shapes(n_train, seed=TRAIN_SEED)
    images = torch.from_numpy(data.images)
    labels = torch.from_numpy(data.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((n_train + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(n_train, generator=gen)
        total = 0.0
        for i in range(0, n_train, batch_size):
            idx = order[i:i + batch_size]
            x = images[idx]
            if torch.rand(1, generator=gen).item() < 0.5:  # flips keep the shape's class
                x = x.flip(3)
            loss = loss_fn(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        log(f"epoch {epoch + 1}/{epochs}: loss {total / n_train:.4f}")
    return model.eval(), evaluate(model, n_test)


def evaluate(model, n_test=2000):
    """Accuracy on held-out generated images (a seed never used in training)."""
    import torch

    test = shapes(n_test, seed=TEST_SEED)
    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(b.images)).argmax(1) for b in test.batches(256)])
    return float((pred.numpy() == test.labels).mean())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced size; write nothing")
    parser.add_argument("--out", type=Path, default=HERE / "demo_weights.npz")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.perf_counter()
    model, acc = train(n_train=3000, n_test=256, epochs=4) if args.quick else train()
    print(f"held-out accuracy {acc:.4f} in {time.perf_counter() - start:.0f} s")
    if not args.quick:
        np.savez(args.out, **{k: v.numpy() for k, v in model.state_dict().items()})
        (args.out.parent / "demo_metadata.json").write_text(json.dumps(
            {"held_out_accuracy": acc, "n_test": 2000, "train_seed": TRAIN_SEED, "test_seed": TEST_SEED,
             "torch": torch.__version__}, indent=2) + "\n")
    return acc


if __name__ == "__main__":
    main()
