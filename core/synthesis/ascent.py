"""The optimisation loop every synthesis method shares.

One step, for parameters ``t`` of a :class:`~convscope.synthesis.params.ImageParam` ``P``::

    x  = P.image(t)                       images in the valid range
    x' = A x                              a random transform (jitter, scale, rotation)
    g' = backend.gradient(x', objective)  ONE forward + backward; the objective is NumPy
    g  = A^T g' - sum_k w_k grad R_k(x)   back through the transform, minus the priors
    t  = optimiser.step(t, P.backward(g)) ascent
    x  = operators(P.image(t)); t = P.encode(x)   only when an operator is on

so each step costs exactly one pass of the model, whatever the framework.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..backend import INPUT, unchecked
from . import regularizers as R
from .._progress import progress_bar
from ._common import numpy_single_threaded, warn_zero_gradient
from .params import ImageParam
from .transforms import Transforms

__all__ = ["Priors", "AscentTrace", "run_ascent"]


@dataclass
class Priors:
    """Penalty weights and image operators (see :mod:`convscope.synthesis.regularizers`).

    ``l2`` and ``tv`` weigh ``mean((x - c)^2)`` and ``TV_beta``; ``blur_every`` > 0 blurs
    with ``blur_sigma`` every that many steps; ``clip_norm`` and ``clip_contribution`` are
    percentiles (0 = off); ``clip`` keeps pixels in the valid range.
    """

    l2: float = 0.0
    tv: float = 0.0
    tv_beta: float = 2.0
    blur_every: int = 0
    blur_sigma: float = 0.5
    clip_norm: float = 0.0
    clip_contribution: float = 0.0
    clip: bool = True

    def needs_operators(self, squash: str) -> bool:
        return bool(self.blur_every or self.clip_norm or self.clip_contribution or (self.clip and squash == "none"))


@dataclass
class AscentTrace:
    """What a run recorded: the objective per step and image (from each step's own pass),
    the penalties, and the model outputs of the last pass."""

    values: list = field(default_factory=list)
    penalties: list = field(default_factory=list)
    outputs: np.ndarray | None = None
    passes: int = 0


def run_ascent(backend, objective, param: ImageParam, t: np.ndarray, *, steps: int, optimizer, transforms: Transforms,
               priors: Priors, rng: np.random.Generator, value_range, rule="standard", callback=None, progress=None,
               desc="synthesis", stop=None):
    """Maximise ``objective - penalties`` over the parameters ``t``; returns (t, trace).

    ``stop(step, values, outputs)``, when given, ends the run early when it returns True.
    """
    backend = unchecked(backend)  # the images are made here, finite float32: no per-step check
    lo, hi = value_range
    center = (lo + hi) / 2.0
    size = param.shape[2:]
    tensors = tuple(objective.tensors)
    trace = AscentTrace()
    bar = progress_bar(total=steps, desc=desc, progress=progress)
    box = {}

    def seeds(acts):
        values, seed_map = objective(acts)
        box["values"] = values
        if objective.linear:
            box["constant"] = seed_map
        return seed_map

    with numpy_single_threaded():
        try:
            for step in range(steps):
                x = param.image(t)
                sampling = transforms.sample(rng, size)
                if "constant" in box:  # a linear objective: the same seeds, without a callable
                    result = backend.gradient(sampling.apply(x), box["constant"], wrt=(INPUT,), rule=rule)
                    box["values"] = objective(result.activations)[0]
                else:
                    result = backend.gradient(sampling.apply(x), seeds, wrt=(INPUT,), at=tensors, rule=rule)
                trace.passes += 1
                g_obj = sampling.adjoint(result.grads[INPUT])
                if step == 0 and not np.abs(g_obj).reshape(len(g_obj), -1).max(axis=1).all():
                    warn_zero_gradient(desc, objective)
                g = g_obj
                penalty = np.zeros(len(x), np.float32)
                if priors.l2:
                    v, pg = R.l2_penalty(x, center)
                    penalty += priors.l2 * v
                    g = g - priors.l2 * pg
                if priors.tv:
                    v, pg = R.total_variation((x - lo) / (hi - lo), priors.tv_beta)
                    penalty += priors.tv * v
                    g = g - (priors.tv / (hi - lo)) * pg
                trace.values.append(np.asarray(box["values"], np.float32))
                trace.penalties.append(penalty)
                trace.outputs = result.outputs
                if not np.isfinite(g).all():
                    raise FloatingPointError(f"{desc}: the gradient became non-finite at step {step}; "
                                             "lower the learning rate or the weights.")
                t = optimizer.step(t, param.backward(g))
                if priors.needs_operators(param.squash):
                    t = param.encode(_operate(param.image(t), g_obj, step, priors, lo, hi, center))
                if callback is not None:
                    callback(step, param.image(t), trace.values[-1])
                bar.update(1)
                bar.set_postfix(objective=f"{float(np.mean(trace.values[-1])):.4g}", refresh=False)
                if stop is not None and stop(step, trace.values[-1], result.outputs):
                    break
        finally:
            bar.close()
    return t, trace


def _operate(x, grad, step, priors, lo, hi, center):
    if priors.blur_every and (step + 1) % priors.blur_every == 0:
        x = R.gaussian_blur(x, priors.blur_sigma)
    if priors.clip_norm:
        x = R.clip_small_norm(x, priors.clip_norm, center)
    if priors.clip_contribution:
        x = R.clip_small_contribution(x, grad, priors.clip_contribution, center)
    if priors.clip:
        x = R.clip_range(x, lo, hi)
    return x
