"""Adversarial examples and fooling images (Goodfellow et al. 2015; Madry et al. 2018;
Nguyen et al. 2015).

Targeted, the attack raises ``log p_t(x)`` (its gradient at the logits is the seed
``e_t - p``); untargeted (``target=None``) it lowers ``log p_y`` of the class the model
first predicted. Steps are signed gradient steps projected back onto the L-infinity ball
of radius ``epsilon`` around the image and onto the valid range::

    x <- clip_[lo, hi]( clip_[x0 - eps, x0 + eps]( x + alpha sign(g) ) )

FGSM is one such step with ``alpha = epsilon``; PGD repeats it (``steps`` times at most)
and an image stops moving once the model predicts the target with probability at least
``confidence`` (untargeted: once the prediction changed). ``epsilon=None`` lifts the
bound: started from noise this makes fooling images, unrecognisable images classified with
high confidence. The model's output must be logits.
"""
from __future__ import annotations

import numpy as np

from .._plugins import load
from .._renamed import renamed
from .._validate import check_choice, check_int, check_number, param_error
from ..backend import INPUT, OUTPUT, unchecked
from ..render import Renderable, grid, normalize, to_rgb
from .._progress import progress_bar
from .._targets import entry_images, softmax
from ._common import backend_range, check_range

__all__ = ["fool", "Fooling"]


class Fooling(Renderable):
    """The result of :func:`fool`.

    ``adversarial`` images, ``perturbation = adversarial - original``, its norms ``linf``
    and ``l2`` per image, the final ``probabilities`` and ``predictions``, ``success`` per
    image and ``steps_taken`` (gradient passes until success or the budget). The picture,
    per image: original, perturbation (mid-grey is zero, scaled to its largest value),
    adversarial image.
    """

    def __init__(self, original, adversarial, target, probabilities, success, steps_taken, epsilon, value_range):
        self.original, self.adversarial = original, adversarial
        self.perturbation = adversarial - original
        flat = self.perturbation.reshape(len(original), -1).astype(np.float64)
        self.linf = np.abs(flat).max(axis=1)
        self.l2 = np.sqrt((flat ** 2).sum(axis=1))
        self.target = target
        self.probabilities = probabilities
        self.predictions = probabilities.argmax(axis=1)
        self.success = success
        self.steps_taken = steps_taken
        self.epsilon = epsilon
        self.value_range = value_range

    def to_rgb(self):
        lo, hi = self.value_range
        delta = normalize(self.perturbation, "symmetric-batch")
        tiles = []
        for a, d, b in zip(self.original, delta, self.adversarial):
            tiles += [to_rgb(np.clip((a - lo) / (hi - lo), 0, 1)), to_rgb(d), to_rgb(np.clip((b - lo) / (hi - lo), 0, 1))]
        return grid(tiles, ncols=3, pad=2)

    def __repr__(self):
        return (f"Fooling(success {int(self.success.sum())}/{len(self.success)}, "
                f"L-inf {self.linf.max():.4g}, L2 {self.l2.max():.4g}, steps {self.steps_taken.tolist()})")


@renamed(image="x")
def fool(model, x, target=None, *, method: str = "pgd", epsilon=8 / 255, steps: int = 40, step_size=None,
         confidence: float = 0.9, random_start: bool = False, value_range=None, seed: int = 0, progress=None,
         callback=None) -> Fooling:
    """Perturb ``x`` (N, C, H, W) within ``epsilon`` (L-infinity) until the model
    predicts ``target`` (an int or one per image; None: any class but the current one).

    ``method`` is "fgsm" (one step of size epsilon) or "pgd" (up to ``steps`` steps of
    ``step_size``, default ``2.5 epsilon / steps``, optionally from a ``random_start`` in
    the ball). Each step costs one forward and one backward pass.
    """
    owner = "fool"
    backend = load(model)
    x0 = entry_images(backend, x, owner)
    backend = unchecked(backend)  # the images are checked: each step's pass need not
    n = len(x0)
    check_choice(method, ("fgsm", "pgd"), "method", owner)
    lo, hi = value_range = check_range(backend_range(backend) if value_range is None else value_range, owner)
    if epsilon is not None:
        epsilon = check_number(epsilon, "epsilon", owner, low=0, strict=True)
    steps = 1 if method == "fgsm" else check_int(steps, "steps", owner, low=1)
    confidence = check_number(confidence, "confidence", owner, low=0)
    if confidence > 1:
        raise param_error("confidence", owner, "a probability in [0, 1]", str(confidence))
    if method == "fgsm":
        if epsilon is None:
            raise param_error("epsilon", owner, "a number for FGSM (one step of size epsilon)", "None")
        alpha = epsilon
    elif step_size is None:
        alpha = 2.5 * epsilon / steps if epsilon is not None else 0.01 * (hi - lo)
    else:
        alpha = check_number(step_size, "step_size", owner, low=0, strict=True)
    seed = check_int(seed, "seed", owner, low=0)
    rng = np.random.default_rng(seed)

    if target is not None and np.ndim(target) > 1 or np.ndim(target) == 1 and len(target) not in (1, n):
        raise param_error("target", owner, f"a class index or one per image ({n})", repr(target))
    targets = None if target is None else np.broadcast_to(np.asarray(target), (n,)).copy()
    if targets is not None and targets.dtype.kind not in "iu":
        raise param_error("target", owner, "a class index (int) or one per image", repr(target), TypeError)
    if targets is not None and (targets < 0).any():
        raise param_error("target", owner, "a class index >= 0", str(targets.min()))
    x = x0.copy()
    if random_start and epsilon is not None:
        x = np.clip(x0 + rng.uniform(-epsilon, epsilon, size=x0.shape).astype(np.float32), lo, hi)
    done = np.zeros(n, bool)
    taken = np.zeros(n, int)
    box = {}

    def seeds(acts):
        z = acts[OUTPUT]
        if targets is not None and targets.max() >= z.shape[1]:
            raise param_error("target", owner, f"a class index < {z.shape[1]} (the model has {z.shape[1]} classes)",
                              str(targets.max()))
        p = softmax(z)
        box["p"] = p
        onehot = np.zeros_like(p)
        if targets is not None:
            onehot[np.arange(n), targets] = 1
            return {OUTPUT: (onehot - p).astype(np.float32)}  # d log p_t / dz
        cls = box.setdefault("original", p.argmax(axis=1))
        onehot[np.arange(n), cls] = 1
        return {OUTPUT: (p - onehot).astype(np.float32)}  # d (-log p_y) / dz

    def succeeded(p):
        if targets is not None:
            return (p.argmax(axis=1) == targets) & (p[np.arange(n), targets] >= confidence)
        return p.argmax(axis=1) != box["original"]

    bar = progress_bar(total=steps, desc=owner, progress=progress)
    moved = False
    try:
        for step in range(steps):
            g = backend.gradient(x, seeds, wrt=(INPUT,), at=(OUTPUT,)).grads[INPUT]
            done |= succeeded(box["p"])
            moved = False
            if done.all():
                break
            active = ~done
            taken[active] += 1
            x_new = x + alpha * np.sign(g)
            if epsilon is not None:
                x_new = np.clip(x_new, x0 - epsilon, x0 + epsilon)
            x_new = np.clip(x_new, lo, hi).astype(np.float32)
            x[active] = x_new[active]
            moved = True
            if callback is not None:
                callback(step, x.copy(), box["p"][np.arange(n), targets] if targets is not None else box["p"].max(1))
            bar.update(1)
    finally:
        bar.close()
    p = softmax(backend.forward(x)) if moved else box["p"]
    done = succeeded(p)
    return Fooling(x0, x, targets if targets is not None else box.get("original"), p.astype(np.float32), done, taken,
                   epsilon, value_range)
