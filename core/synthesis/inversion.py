"""Feature inversion (Mahendran and Vedaldi 2015): which images does a layer take for this one?

For each layer ``l`` with target features ``F0 = F_l(image)``, find

    x* = argmin_x  |F_l(x) - F0|^2 / |F0|^2  +  tv * TV_beta(x)  +  l2 * mean((x - c)^2)

starting from noise. Every layer's reconstruction is one image of the same batch, and the
objective seeds each batch row at its own layer, so one step inverts all layers in one
forward and one backward pass. Early layers keep almost everything (the reconstruction is
close to the image); deeper ones keep what the network needs and let the pixels drift.
"""
from __future__ import annotations

import numpy as np

from .._plugins import load
from .._targets import entry_images
from .._renamed import renamed
from .._validate import as_images, check_int, check_number, param_error
from ..render import Renderable, grid, to_rgb
from .._layers import check_layers
from ._common import backend_range, check_range, check_weight
from .ascent import Priors, run_ascent
from .objectives import Objective
from .optim import make_optimizer
from .params import ImageParam
from .visualize import make_transforms

__all__ = ["invert", "Inversion", "FeatureMatch", "psnr"]


def psnr(a: np.ndarray, b: np.ndarray, value_range=(0.0, 1.0)) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10((hi - lo)^2 / mean((a - b)^2))``."""
    value_range = check_range(value_range, "psnr")
    if np.shape(a) != np.shape(b):
        raise param_error("b", "psnr", f"an array shaped like 'a', {np.shape(a)}", f"shape {np.shape(b)}")
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    peak = (value_range[1] - value_range[0]) ** 2
    return float("inf") if mse == 0 else 10.0 * np.log10(peak / mse)


class FeatureMatch(Objective):
    """``-|F_{l_i}(x_i) - F0_i|^2 / |F0_i|^2`` for batch row i and its layer ``l_i``:
    the (negated) relative feature error, to be maximised."""

    def __init__(self, targets: dict, rows: list):
        self.targets = targets  # layer -> (1, ...) target features
        self.rows = rows  # row i inverts layer rows[i]
        self.tensors = tuple(dict.fromkeys(rows))
        self.layer = rows[0]
        self.norms = {name: max(float(np.sum(np.square(t, dtype=np.float64))), 1e-12) for name, t in targets.items()}

    def compute(self, acts):
        n = len(self.rows)
        values = np.zeros(n, np.float32)
        seeds = {name: np.zeros_like(acts[name]) for name in self.tensors}
        for i, name in enumerate(self.rows):
            diff = acts[name][i] - self.targets[name][0]
            values[i] = -float(np.sum(np.square(diff, dtype=np.float64))) / self.norms[name]
            seeds[name][i] = (-2.0 / self.norms[name]) * diff
        return values, seeds

    def __repr__(self):
        return f"FeatureMatch({list(self.rows)})"


class Inversion(Renderable):
    """The result of :func:`invert`.

    ``reconstructions`` (L, C, H, W), one per layer in ``layers``; ``feature_error`` the
    relative feature error ``|F(x) - F0|^2 / |F0|^2`` of each at the last step; ``psnr``
    each reconstruction against the original in dB. The picture: the original, then the
    reconstructions from the first layer to the last.
    """

    def __init__(self, original, layers, reconstructions, history, value_range):
        self.original = original
        self.layers = list(layers)
        self.reconstructions = reconstructions
        self.history = np.asarray(history, np.float32)
        self.feature_error = -self.history[-1]
        self.value_range = value_range
        self.psnr = [psnr(r, original[0], value_range) for r in reconstructions]

    def to_rgb(self):
        lo, hi = self.value_range
        tiles = [self.original[0], *self.reconstructions]
        return grid([to_rgb(np.clip((t - lo) / (hi - lo), 0, 1)) for t in tiles], ncols=len(tiles), pad=2)

    def __repr__(self):
        parts = ", ".join(f"{l}: {p:.1f} dB" for l, p in zip(self.layers, self.psnr))
        return f"Inversion({parts})"


@renamed(image="x")
def invert(model, x, layers, *, steps: int = 200, lr: float = 0.05, tv: float = 0.5, tv_beta: float = 2.0,
           l2: float = 0.0, param: str = "pixel", colour: str = "rgb", squash: str = "sigmoid", start="noise",
           optimizer="adam", transforms="none", value_range=None, seed: int = 0, progress=None,
           callback=None) -> Inversion:
    """Reconstruct ``x`` (one image, (1, C, H, W)) from its features at each of ``layers``.

    ``tv`` and ``tv_beta`` weigh the total-variation prior (a natural-image prior: without
    it deep layers give noise that matches the features), ``l2`` the pixel decay; ``param``,
    ``colour``, ``squash`` the parameterisation (plain pixels by default, as the paper).
    One optimisation step inverts every layer at once: one forward and one backward pass.
    """
    owner = "invert"
    backend = load(model)
    layers = check_layers(layers, backend, owner)
    steps = check_int(steps, "steps", owner, low=1)
    seed = check_int(seed, "seed", owner, low=0)
    tv, l2 = check_weight(tv, "tv", owner), check_weight(l2, "l2", owner)
    tv_beta = check_number(tv_beta, "tv_beta", owner, low=0, strict=True)
    value_range = check_range(backend_range(backend) if value_range is None else value_range, owner)
    x0 = entry_images(backend, x, owner)
    if len(x0) != 1:
        raise param_error("x", owner, "one image (1, C, H, W)", f"shape {x0.shape}")
    targets = backend.activations(x0, list(dict.fromkeys(layers)))
    objective = FeatureMatch(targets, layers)
    shape = (len(layers), *x0.shape[1:])
    rng = np.random.default_rng(seed)
    image_param = ImageParam(shape, spatial=param, colour=colour, squash=squash, value_range=value_range, owner=owner)
    if isinstance(start, str) and start == "noise":
        lo, hi = value_range
        t = image_param.encode(lo + (hi - lo) * rng.uniform(0.4, 0.6, size=shape).astype(np.float32))
    else:
        s = as_images(start, param="start", owner=owner, channels=shape[1], spatial=shape[2:])
        t = image_param.encode(np.broadcast_to(s[:1], shape))
    priors = Priors(l2=l2, tv=tv, tv_beta=tv_beta)
    t, trace = run_ascent(backend, objective, image_param, t, steps=steps, optimizer=make_optimizer(optimizer, lr, owner),
                          transforms=make_transforms(transforms, owner), priors=priors, rng=rng,
                          value_range=value_range, callback=callback, progress=progress, desc=owner)
    return Inversion(x0, layers, image_param.image(t), trace.values, value_range)
