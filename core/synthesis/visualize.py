"""Activation maximisation: images that make an objective large (Erhan et al. 2009,
Simonyan et al. 2014, Yosinski et al. 2015, Olah et al. 2017)."""
from __future__ import annotations

import numpy as np

from .._plugins import load
from .._targets import entry_images
from .._validate import as_images, check_choice, check_int, check_number, param_error
from ..backend import RELU_RULES
from ..render import Renderable, grid, to_rgb
from .._renamed import renamed
from ._common import backend_range, check_range, check_size, check_weight, input_channels
from .ascent import Priors, run_ascent
from .gram import diversity as diversity_term
from .objectives import as_objective
from .optim import make_optimizer
from .params import ImageParam
from .transforms import NONE, STANDARD, Transforms

__all__ = ["visualize", "evaluate", "Visualization", "make_transforms"]


class Visualization(Renderable):
    """The result of :func:`visualize`.

    ``images`` (N, C, H, W) in ``value_range``; ``history`` (steps, N) the objective of
    each step's pass (on the transformed image), ``penalties`` likewise; ``values`` the
    last step's objective; ``outputs`` the model scores of the last pass.
    """

    def __init__(self, images, *, objective, history, penalties, outputs, value_range, passes):
        self.images = images
        self.objective = objective
        self.history = np.asarray(history, np.float32)
        self.penalties = np.asarray(penalties, np.float32)
        self.values = self.history[-1] if len(self.history) else np.zeros(len(images), np.float32)
        self.outputs = outputs
        self.value_range = value_range
        self.passes = passes

    def pictures(self) -> list:
        lo, hi = self.value_range
        return [to_rgb(np.clip((im - lo) / (hi - lo), 0, 1)) for im in self.images]

    def to_rgb(self):
        return grid(self.pictures(), ncols=min(len(self.images), 8), pad=2)

    def __repr__(self):
        return (f"Visualization({self.objective!r}, {len(self.images)} images, "
                f"objective {float(np.mean(self.values)):.4g} after {self.passes} steps)")


def make_transforms(transforms, owner="visualize") -> Transforms:
    """``"standard"`` (Lucid's jitter 8, scale 0.9-1.1, rotation +-10 degrees), ``"none"``,
    a dict of :class:`Transforms` arguments, or a :class:`Transforms`."""
    if isinstance(transforms, Transforms):
        return transforms
    if isinstance(transforms, str):
        check_choice(transforms, ("standard", "none"), "transforms", owner)
        return Transforms(**(STANDARD if transforms == "standard" else NONE), owner=owner)
    if isinstance(transforms, dict):
        return Transforms(**transforms, owner=owner)
    raise param_error("transforms", owner, "'standard', 'none', a dict(jitter=, scales=, angles=) or a Transforms",
                      repr(transforms), TypeError)


def evaluate(model, objective, images) -> np.ndarray:
    """The objective's value (N,) for ``images``, from one forward pass."""
    backend = load(model)
    objective = as_objective(objective, owner="evaluate", param="objective").check(backend, "evaluate")
    x = entry_images(backend, images, "evaluate", "images")
    acts = backend.activations(x, list(objective.tensors))
    return np.asarray(objective(acts)[0], np.float32)


@renamed(relu="rule")
def visualize(model, objective, *, steps: int = 256, batch: int = 1, size=None, start="noise",
              param: str = "fft", colour: str = "decorrelated", squash: str = "sigmoid", decay_power: float = 1.0,
              optimizer="adam", lr: float = 0.05, transforms="standard", l2: float = 0.0, tv: float = 0.0,
              tv_beta: float = 2.0, blur_every: int = 0, blur_sigma: float = 0.5, clip_norm: float = 0.0,
              clip_contribution: float = 0.0, clip: bool = True, diversity: float = 0.0, diversity_layer=None,
              value_range=None, rule: str = "standard", seed: int = 0, progress=None,
              callback=None) -> Visualization:
    """Synthesise ``batch`` images that maximise ``objective`` on ``model``.

    Each step is one :meth:`Backend.gradient` call (one forward, one backward) with the
    objective computed in NumPy, so this works alike on torch, Keras and ONNX models.
    Maximises ``objective(T(x)) - l2 * mean((x - c)^2) - tv * TV_beta(x) + diversity * D(x)``
    over the parameters of ``x`` (``param``/``colour``/``squash``, see
    :mod:`~convscope.synthesis.params`), with ``T`` a random transform per step.

    Parameters
    ----------
    objective : Objective
        ``neuron``, ``channel``, ``layer_l2``, ``class_logit``, ``class_probability``,
        ``direction`` or a weighted combination of them.
    steps, batch, size : int
        Optimisation steps, images, and their size (H, W) (default: the model's fixed
        size, else 128).
    start : "noise", "zeros" or array
        "noise" is small random parameters (a grey image with faint noise), "zeros" a flat
        grey image, an array (1 or N, C, H, W) starts from those images.
    optimizer, lr : "adam" or "sgd" (or an object with ``step``), learning rate.
    transforms : "standard", "none", dict or Transforms
        Random jitter, scale and rotation per step (transformation robustness).
    l2, tv, tv_beta, blur_every, blur_sigma, clip_norm, clip_contribution, clip
        Priors and operators, see :class:`~convscope.synthesis.ascent.Priors`.
    diversity, diversity_layer : float, str
        Weight of the Gram-matrix diversity term over the batch and its layer (default:
        the objective's layer).
    value_range : (low, high)
        The model's valid input range.
    seed : int
        Seeds the start and the transforms; equal seeds give equal images.
    progress : bool or None
        A tqdm bar (None: when tqdm is installed and stderr is a terminal).
    callback : callable(step, images, values)
        Called after each step, e.g. a :class:`~convscope.synthesis.FrameRecorder`.
    """
    owner = "visualize"
    backend = load(model)
    objective = as_objective(objective, owner="visualize", param="objective")
    steps = check_int(steps, "steps", owner, low=1)
    batch = check_int(batch, "batch", owner, low=1)
    seed = check_int(seed, "seed", owner, low=0)
    value_range = check_range(backend_range(backend) if value_range is None else value_range, owner)
    weights = {name: check_weight(v, name, owner) for name, v in
               dict(l2=l2, tv=tv, diversity=diversity, blur_sigma=blur_sigma, clip_norm=clip_norm,
                    clip_contribution=clip_contribution).items()}
    for name in ("clip_norm", "clip_contribution"):
        if weights[name] >= 100:
            raise param_error(name, owner, "a percentile in [0, 100)", str(weights[name]))
    tv_beta = check_number(tv_beta, "tv_beta", owner, low=0, strict=True)
    check_choice(rule, RELU_RULES, "rule", owner)
    blur_every = check_int(blur_every, "blur_every", owner, low=0)
    h, w = check_size(size, backend, owner)
    shape = (batch, input_channels(backend), h, w)
    if weights["diversity"]:
        layer = diversity_layer or objective.layer
        if layer is None:
            raise param_error("diversity_layer", owner, "a layer name when the objective has no layer",
                              repr(diversity_layer))
        if batch < 2:
            raise param_error("batch", owner, ">= 2 when diversity > 0", str(batch))
        objective = objective + weights["diversity"] * diversity_term(layer)
    objective.check(backend, owner)
    rng = np.random.default_rng(seed)
    image_param = ImageParam(shape, spatial=param, colour=colour, squash=squash, value_range=value_range,
                             decay_power=decay_power, owner=owner)
    if isinstance(start, str) and start == "noise":
        t = image_param.random(rng)
    elif isinstance(start, str) and start in ("zeros", "grey", "gray"):
        t = image_param.encode(np.full(shape, sum(value_range) / 2, np.float32))
    elif isinstance(start, str):
        raise param_error("start", owner, "'noise', 'zeros' or an image array (N, C, H, W)", repr(start))
    else:
        x0 = as_images(start, param="start", owner=owner, channels=shape[1], spatial=(h, w))
        if len(x0) not in (1, batch):
            raise param_error("start", owner, f"one image or a batch of {batch}", f"shape {x0.shape}")
        t = image_param.encode(np.broadcast_to(np.clip(x0, *value_range), shape))
    priors = Priors(l2=weights["l2"], tv=weights["tv"], tv_beta=tv_beta, blur_every=blur_every,
                    blur_sigma=weights["blur_sigma"], clip_norm=weights["clip_norm"],
                    clip_contribution=weights["clip_contribution"], clip=bool(clip))
    t, trace = run_ascent(backend, objective, image_param, t, steps=steps, optimizer=make_optimizer(optimizer, lr, owner),
                          transforms=make_transforms(transforms, owner), priors=priors, rng=rng,
                          value_range=value_range, rule=rule, callback=callback, progress=progress, desc=owner)
    return Visualization(image_param.image(t), objective=objective, history=trace.values, penalties=trace.penalties,
                         outputs=trace.outputs, value_range=value_range, passes=trace.passes)
