"""Texture synthesis and style transfer with Gram matrices (Gatys, Ecker and Bethge 2015, 2016).

Texture: match the Gram matrices ``G_l = F_l F_l^T / M`` of an exemplar at several layers,

    L_style(x) = sum_l w_l |G_l(x) - G_l(e)|^2 / |G_l(e)|^2

Style transfer adds a content term at one layer and weighs the two:

    L(x) = content_weight |F_c(x) - F_c(content)|^2 / |F_c(content)|^2 + style_weight L_style(x)

Both are minimised from noise (texture) or from the content image (style transfer), one
forward and one backward pass per step, the Gram losses and their gradients in NumPy.
"""
from __future__ import annotations

import numpy as np

from .._plugins import load
from .._targets import entry_images
from .._validate import check_int, check_name, param_error
from ..render import Renderable, grid, to_rgb
from .._layers import check_layers, spatial_layers
from ._common import backend_range, check_range, check_size, check_weight
from .ascent import Priors, run_ascent
from .gram import gram, gram_adjoint
from .objectives import Objective
from .optim import make_optimizer
from .params import ImageParam
from .visualize import make_transforms

__all__ = ["texture", "style_transfer", "Texture", "StyleTransfer", "GramMatch", "style_loss"]


class GramMatch(Objective):
    """``-(content_weight * content term + style_weight * sum_l w_l Gram term)``, to be maximised.

    ``parts`` keeps the last pass's content and style losses (mean over the batch)."""

    def __init__(self, style_targets: dict, layer_weights: dict, style_weight=1.0, content_target=None,
                 content_layer=None, content_weight=0.0):
        self.style_targets = {k: gram(v)[0] for k, v in style_targets.items()}
        self.style_norms = {k: max(float(np.sum(g.astype(np.float64) ** 2)), 1e-12) for k, g in self.style_targets.items()}
        self.layer_weights = layer_weights
        self.style_weight = style_weight
        self.content_layer = content_layer
        self.content_target = content_target
        self.content_weight = content_weight
        self.content_norm = (max(float(np.sum(content_target.astype(np.float64) ** 2)), 1e-12)
                             if content_target is not None else 1.0)
        names = list(style_targets) + ([content_layer] if content_layer else [])
        self.tensors = tuple(dict.fromkeys(names))
        self.layer = names[0]
        self.parts = {}

    def compute(self, acts):
        n = len(acts[self.tensors[0]])
        seeds = {name: np.zeros_like(acts[name]) for name in self.tensors}
        style = np.zeros(n, np.float64)
        for name, target in self.style_targets.items():
            a = acts[name]
            diff = gram(a) - target
            w = self.style_weight * self.layer_weights[name] / self.style_norms[name]
            style += self.layer_weights[name] / self.style_norms[name] * (diff.astype(np.float64) ** 2).reshape(n, -1).sum(1)
            seeds[name] -= gram_adjoint(a, 2.0 * w * diff)
        content = np.zeros(n, np.float64)
        if self.content_layer is not None:
            diff = acts[self.content_layer] - self.content_target
            content = (diff.astype(np.float64) ** 2).reshape(n, -1).sum(1) / self.content_norm
            seeds[self.content_layer] -= (2.0 * self.content_weight / self.content_norm) * diff
        self.parts = dict(style=style, content=content)
        return (-(self.style_weight * style + self.content_weight * content)).astype(np.float32), seeds


def style_loss(model, images, exemplar, layers, layer_weights=None) -> np.ndarray:
    """The Gram loss ``sum_l w_l |G_l(x) - G_l(e)|^2 / |G_l(e)|^2`` of ``images`` (N,), by one forward pass each."""
    backend = load(model)
    layers = check_layers(layers, backend, "style_loss")
    weights = _layer_weights(layers, layer_weights, "style_loss")
    target = backend.activations(entry_images(backend, exemplar, "style_loss", "exemplar"), layers)
    match = GramMatch({k: v[:1] for k, v in target.items()}, weights)
    return -match(backend.activations(entry_images(backend, images, "style_loss", "images"), layers))[0]


def _layer_weights(layers, layer_weights, owner):
    if layer_weights is None:
        return {name: 1.0 / len(layers) for name in layers}
    if isinstance(layer_weights, dict):
        values = [layer_weights.get(name, 0.0) for name in layers]
    else:
        values = list(layer_weights)
    if len(values) != len(layers):
        raise param_error("layer_weights", owner, f"one weight per layer ({len(layers)})", f"{len(values)} weights")
    return {name: check_weight(v, "layer_weights", owner) for name, v in zip(layers, values)}


def _pic(x, value_range):
    lo, hi = value_range
    return to_rgb(np.clip((x - lo) / (hi - lo), 0, 1))


class Texture(Renderable):
    """The result of :func:`texture`: ``image`` (1, C, H, W) synthesised from ``exemplar``;
    ``history`` the Gram loss per step (``initial_loss``, ``loss`` first and last).
    The picture: the exemplar, then the texture."""

    def __init__(self, image, exemplar, layers, history, value_range):
        self.image, self.exemplar, self.layers = image, exemplar, layers
        self.history = np.asarray(history, np.float64)
        self.initial_loss, self.loss = float(self.history[0]), float(self.history[-1])
        self.value_range = value_range

    def to_rgb(self):
        return grid([_pic(self.exemplar[0], self.value_range), *(_pic(x, self.value_range) for x in self.image)], pad=2,
                    ncols=1 + len(self.image))

    def __repr__(self):
        return f"Texture({self.layers}, Gram loss {self.initial_loss:.3g} -> {self.loss:.3g})"


class StyleTransfer(Renderable):
    """The result of :func:`style_transfer`: ``image``, with ``content_history`` and
    ``style_history`` (the two losses per step). The picture: content, style, result."""

    def __init__(self, image, content, style, content_history, style_history, value_range):
        self.image, self.content, self.style = image, content, style
        self.content_history = np.asarray(content_history, np.float64)
        self.style_history = np.asarray(style_history, np.float64)
        self.value_range = value_range

    def to_rgb(self):
        return grid([_pic(self.content[0], self.value_range), _pic(self.style[0], self.value_range),
                     _pic(self.image[0], self.value_range)], ncols=3, pad=2)

    def __repr__(self):
        return (f"StyleTransfer(content loss {self.content_history[-1]:.3g}, "
                f"style loss {self.style_history[0]:.3g} -> {self.style_history[-1]:.3g})")


def _run(backend, match, shape, start, *, steps, lr, tv, param, colour, optimizer, value_range, seed, progress,
         callback, owner):
    rng = np.random.default_rng(seed)
    image_param = ImageParam(shape, spatial=param, colour=colour, squash="sigmoid", value_range=value_range,
                             owner=owner)
    if start is None:
        lo, hi = value_range
        t = image_param.encode(lo + (hi - lo) * rng.uniform(0.3, 0.7, size=shape).astype(np.float32))
    else:
        t = image_param.encode(start)
    records = []

    def record(step, images, values):
        records.append(dict(match.parts))
        if callback is not None:
            callback(step, images, values)

    t, _ = run_ascent(backend, match, image_param, t, steps=steps, optimizer=make_optimizer(optimizer, lr, owner),
                      transforms=make_transforms("none", owner), priors=Priors(tv=tv), rng=rng,
                      value_range=value_range, callback=record, progress=progress, desc=owner)
    return image_param.image(t), records


def _margin(backend, h, w) -> int:
    """Pixels added around a style transfer's canvas and cut off at the end: the zero padding of
    the model's convs otherwise draws a frame of style along the border (the content loss keeps
    the content where it was, so the frame shows). None for a fixed-size model. A texture keeps
    its whole canvas: its Gram statistics are those of the image it returns."""
    return 0 if getattr(backend, "fixed_size", None) is not None else max(2, min(h, w) // 8)


def _crop(images, m):
    return images if not m else np.ascontiguousarray(images[..., m:-m, m:-m])


def texture(model, exemplar, layers=None, *, size=None, steps: int = 200, lr: float = 0.05, layer_weights=None,
            tv: float = 0.0, param: str = "pixel", colour: str = "rgb", optimizer="adam", value_range=None,
            seed: int = 0, progress=None, callback=None) -> Texture:
    """Synthesise a texture whose Gram matrices at ``layers`` match the ``exemplar``'s.

    ``layers`` default to every ReLU layer with a spatial output; ``layer_weights`` (a list
    or {layer: weight}) default to equal weights summing to 1. ``size`` (H, W) of the new
    texture defaults to the exemplar's (Gram matrices do not depend on size, so a
    size-free model may make a larger texture).
    """
    owner = "texture"
    backend = load(model)
    e = entry_images(backend, exemplar, owner, "exemplar")[:1]
    layers = check_layers(layers if layers is not None else spatial_layers(backend), backend, owner)
    weights = _layer_weights(layers, layer_weights, owner)
    steps = check_int(steps, "steps", owner, low=1)
    seed = check_int(seed, "seed", owner, low=0)
    tv = check_weight(tv, "tv", owner)
    value_range = check_range(backend_range(backend) if value_range is None else value_range, owner)
    h, w = check_size(size, backend, owner, default=e.shape[2]) if size is not None else e.shape[2:]
    match = GramMatch(backend.activations(e, layers), weights)
    image, records = _run(backend, match, (1, e.shape[1], h, w), None, steps=steps, lr=lr, tv=tv, param=param,
                          colour=colour, optimizer=optimizer, value_range=value_range, seed=seed, progress=progress,
                          callback=callback, owner=owner)
    return Texture(image, e, layers, [float(r["style"].mean()) for r in records], value_range)


def style_transfer(model, content, style, *, content_layer=None, style_layers=None, content_weight: float = 1.0,
                   style_weight: float = 10.0, layer_weights=None, steps: int = 200, lr: float = 0.02,
                   tv: float = 0.0, start="content", param: str = "pixel", colour: str = "rgb", optimizer="adam",
                   value_range=None, seed: int = 0, progress=None, callback=None) -> StyleTransfer:
    """Render ``content`` in the style of ``style`` (Gatys et al. 2016).

    ``content_layer`` defaults to the deepest but one spatial ReLU layer, ``style_layers``
    to all of them; the loss weighs ``content_weight`` against ``style_weight`` (both >= 0;
    their ratio is what matters). ``start`` is "content" (the content image) or "noise".
    """
    owner = "style_transfer"
    backend = load(model)
    c = entry_images(backend, content, owner, "content")[:1]
    s = entry_images(backend, style, owner, "style")[:1]
    relus = spatial_layers(backend)
    style_layers = check_layers(style_layers if style_layers is not None else relus, backend, owner, "style_layers")
    if content_layer is None:
        content_layer = relus[-2] if len(relus) > 1 else relus[-1]
    check_name(content_layer, [layer.name for layer in backend.layers()], "content_layer", owner)
    content_weight = check_weight(content_weight, "content_weight", owner)
    style_weight = check_weight(style_weight, "style_weight", owner)
    weights = _layer_weights(style_layers, layer_weights, owner)
    steps = check_int(steps, "steps", owner, low=1)
    seed = check_int(seed, "seed", owner, low=0)
    tv = check_weight(tv, "tv", owner)
    value_range = check_range(backend_range(backend) if value_range is None else value_range, owner)
    if start not in ("content", "noise"):
        raise param_error("start", owner, "'content' or 'noise'", repr(start))
    m = _margin(backend, *c.shape[2:])
    canvas = np.pad(c, ((0, 0), (0, 0), (m, m), (m, m)), mode="reflect") if m else c
    content_target = backend.activations(canvas, [content_layer])[content_layer]
    match = GramMatch(backend.activations(s, style_layers), weights, style_weight, content_target, content_layer,
                      content_weight)
    image, records = _run(backend, match, canvas.shape, canvas if start == "content" else None, steps=steps, lr=lr,
                          tv=tv, param=param, colour=colour, optimizer=optimizer, value_range=value_range, seed=seed,
                          progress=progress, callback=callback, owner=owner)
    return StyleTransfer(_crop(image, m), c, s, [float(r["content"].mean()) for r in records],
                         [float(r["style"].mean()) for r in records], value_range)
