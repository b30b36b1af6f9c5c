"""DeepDream (Mordvintsev, Olah and Tyka 2015): amplify what a layer sees in an image.

For each octave, from the smallest image to the full size::

    x = base_octave + detail
    repeat steps: x += step_size * g / mean|g|,  g = d objective / dx at a random roll of x
    clip x to the valid range; detail = x - base_octave

The objective is the layer's energy ``mean(a^2)`` (:class:`layer_l2`) or any Objective.
The rolled (jittered) image goes through one :meth:`Backend.gradient` call per step. On a
model with one fixed input size the smaller octaves are enlarged to that size for the pass
and the gradient is carried back through the adjoint of the enlargement.
"""
from __future__ import annotations

import numpy as np

from .._plugins import load
from .._targets import entry_images
from .._renamed import renamed
from .._validate import check_choice, check_int, check_number, param_error
from ..backend import RELU_RULES, INPUT, unchecked
from ..render import Renderable, grid, to_rgb
from .._imageops import resize_adjoint, resize_images
from .._progress import progress_bar
from ._common import backend_range, check_range, fixed_input_size, numpy_single_threaded, warn_zero_gradient
from .objectives import Objective, layer_l2

__all__ = ["deepdream", "Dream"]


class Dream(Renderable):
    """The result of :func:`deepdream`: ``image`` (N, C, H, W) and the ``original``; the
    picture shows them side by side. ``history`` is the objective at each step."""

    def __init__(self, image, original, objective, history, value_range):
        self.image = image
        self.original = original
        self.objective = objective
        self.history = np.asarray(history, np.float32)
        self.value_range = value_range

    def to_rgb(self):
        lo, hi = self.value_range
        tiles = []
        for a, b in zip(self.original, self.image):
            tiles += [to_rgb(np.clip((a - lo) / (hi - lo), 0, 1)), to_rgb(np.clip((b - lo) / (hi - lo), 0, 1))]
        return grid(tiles, ncols=2, pad=2)

    def __repr__(self):
        return f"Dream({self.objective!r}, {self.image.shape[-2]}x{self.image.shape[-1]})"


@renamed(image="x", relu="rule")
def deepdream(model, x, layer, *, octaves: int = 3, octave_scale: float = 1.4, steps: int = 10,
              step_size: float = 0.01, jitter: int = 4, value_range=None, rule: str = "standard",
              seed: int = 0, progress=None, callback=None) -> Dream:
    """Dream ``layer`` (a layer name, for ``layer_l2(layer)``, or an Objective) into the images ``x``.

    ``octaves`` image sizes, each ``octave_scale`` times the next smaller; ``steps`` per
    octave of size ``step_size`` (L1-normalised gradient: ``x += step_size g / mean|g|``);
    ``jitter`` the largest random roll in pixels. ``callback(step, images, values)``
    gets each step's full-size image.
    """
    owner = "deepdream"
    backend = load(model)
    objective = layer_l2(layer) if isinstance(layer, str) else layer
    if not isinstance(objective, Objective):
        raise param_error("layer", owner, "a layer name or an Objective", repr(layer), TypeError)
    objective.check(backend, owner)
    octaves = check_int(octaves, "octaves", owner, low=1)
    steps = check_int(steps, "steps", owner, low=1)
    jitter = check_int(jitter, "jitter", owner, low=0)
    seed = check_int(seed, "seed", owner, low=0)
    step_size = check_number(step_size, "step_size", owner, low=0, strict=True)
    octave_scale = check_number(octave_scale, "octave_scale", owner, low=1)
    lo, hi = value_range = check_range(backend_range(backend) if value_range is None else value_range, owner)
    fixed = fixed_input_size(backend)
    x0 = entry_images(backend, x, owner)
    check_choice(rule, RELU_RULES, "rule", owner)
    backend = unchecked(backend)  # the images are checked: each step's pass need not
    rng = np.random.default_rng(seed)
    h, w = x0.shape[2:]
    sizes = [(h, w)]
    for _ in range(octaves - 1):
        nh, nw = int(round(sizes[-1][0] / octave_scale)), int(round(sizes[-1][1] / octave_scale))
        if min(nh, nw) < 16:
            break
        sizes.append((nh, nw))
    tensors = tuple(objective.tensors)
    box, history = {}, []

    def seeds(acts):
        values, seed_map = objective(acts)
        box["values"] = values
        return seed_map

    bar = progress_bar(total=steps * len(sizes), desc=owner, progress=progress)
    detail = None
    step = 0
    blas = numpy_single_threaded()
    blas.__enter__()
    try:
        for size in reversed(sizes):
            base = resize_images(x0, size)
            detail = np.zeros_like(base) if detail is None else resize_images(detail, size)
            x = base + detail
            for _ in range(steps):
                dy, dx = (rng.integers(-jitter, jitter + 1, size=2) if jitter else (0, 0))
                shifted = np.roll(x, (int(dy), int(dx)), axis=(2, 3))
                probe = shifted if fixed is None or size == fixed else resize_images(shifted, fixed)
                g = backend.gradient(probe, seeds, wrt=(INPUT,), at=tensors, rule=rule).grads[INPUT]
                if probe is not shifted:
                    g = resize_adjoint(g, size)
                g = np.roll(g, (-int(dy), -int(dx)), axis=(2, 3))
                scale = np.abs(g).reshape(len(g), -1).mean(axis=1).reshape(-1, 1, 1, 1)
                if not scale.all():
                    warn_zero_gradient(owner, layer if isinstance(layer, str) else objective)
                scale = np.maximum(scale, np.finfo(np.float32).tiny)  # scale-free: 1e-18 gradients still move
                x = np.clip(x + step_size * (hi - lo) * g / scale, lo, hi).astype(np.float32)
                history.append(np.asarray(box["values"], np.float32))
                if callback is not None:
                    callback(step, resize_images(x, (h, w)), history[-1])
                bar.update(1)
                step += 1
            detail = x - base
    finally:
        blas.__exit__(None, None, None)
        bar.close()
    return Dream(x, x0, objective, history, value_range)
