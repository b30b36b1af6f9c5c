"""A backend that takes user images and runs its model on their preprocessed form.

``convscope.load(model, preprocess=...)`` returns one: every method then works in the user's
image space (float [0, 1], uint8, PIL), the model sees ``Preprocess.apply(x)``, and
gradients at ``"input"`` are carried back through the preprocessing (its adjoint).
"""
from __future__ import annotations

from ._relevance import DeepLiftRules, RelevanceRules
from .backend import INPUT, RELU_RULES, BackendBase, Gradients, unchecked
from .preprocess import user_images

__all__ = ["Preprocessed"]


class Preprocessed(BackendBase):
    """``inner`` (any Backend) behind the map ``preprocess`` (a :class:`~convscope.Preprocess`)."""

    def __init__(self, inner, preprocess, note=None):
        self.inner, self.preprocess = inner, preprocess
        self._run = unchecked(inner)
        self.name = inner.name
        self.channels = getattr(inner, "channels", None)
        self.rules = getattr(inner, "rules", RELU_RULES)
        self.rule_sets = tuple(getattr(inner, "rule_sets", ()))
        self.value_range = (0.0, 1.0)  # user images: what synthesis keeps its images in
        self.output = getattr(inner, "output", "scores")
        choices = dict(getattr(inner, "choices", None) or {})
        if note:
            choices["preprocess"] = note
        self.choices = choices
        if self.channels:
            preprocess.check_channels(self.channels)

    def __repr__(self):
        return f"Preprocessed({self.inner!r}, {self.preprocess.name or self.preprocess!r})"

    @property
    def fixed_size(self):
        return getattr(self.inner, "fixed_size", None)

    def memory_ceiling(self, height, width):
        """The inner backend's images per call on its device (None: no ceiling), :mod:`convscope._batching`."""
        ceiling = getattr(self.inner, "memory_ceiling", None)
        return ceiling(height, width) if callable(ceiling) else None

    # ----------------------------------------------------------------- shared per-model state
    def _share_state(self) -> dict:
        inner = self.inner._share_state() if isinstance(self.inner, BackendBase) else {}
        return {"inner": inner, "own": super()._share_state()}

    def _adopt_state(self, state: dict) -> None:
        if isinstance(self.inner, BackendBase):
            self.inner._adopt_state(state["inner"])
        super()._adopt_state(state["own"])

    # ----------------------------------------------------------------- checks on user images
    def _images(self, x, owner):
        return super()._images(user_images(x, self.preprocess.layout), owner)

    def _layer_known(self, name):
        inner = self.inner
        return inner._layer_known(name) if isinstance(inner, BackendBase) else False

    def _layer_names(self):
        inner = self.inner
        return inner._layer_names() if isinstance(inner, BackendBase) else [r.name for r in inner.layers()]

    def _tensor_shape(self, name, chw):
        if name == INPUT:
            return chw
        return self.inner._tensor_shape(name, chw) if isinstance(self.inner, BackendBase) else None

    # ----------------------------------------------------------------- the passes
    def layers(self):
        return self.inner.layers()

    def weights(self, layer):
        return self.inner.weights(layer)

    def _replaceable(self, layer):
        inner = self.inner
        return inner._replaceable(layer) if isinstance(inner, BackendBase) else inner.weights(layer)

    def _with_weights(self, weights):
        """The same preprocessing in front of the inner backend with ``weights`` replaced."""
        inner = self.inner
        new = inner._with_weights(weights) if isinstance(inner, BackendBase) else inner.with_weights(weights)
        return Preprocessed(new, self.preprocess, self.choices.get("preprocess"))

    def _forward(self, x):
        return self._run.forward(self.preprocess.apply(x))

    def _activations(self, x, names):
        inner = [n for n in names if n != INPUT]
        acts = dict(self._run.activations(self.preprocess.apply(x), inner)) if inner else {}
        acts[INPUT] = x
        return {n: acts[n] for n in names}

    def _gradient(self, x, seeds, wrt, at, rule):
        p = self.preprocess
        if callable(seeds):
            given = seeds

            def seeds(acts):  # the callable sees the user's image at "input"
                return _seeds_for_model(given({**acts, INPUT: x} if INPUT in acts else acts), p)
        else:
            seeds = _seeds_for_model(seeds, p)
        relevance = isinstance(rule, RelevanceRules)
        if isinstance(rule, DeepLiftRules):  # the reference is an image too: preprocessed like x
            rule = DeepLiftRules(baseline=p.apply(rule.baseline), eps=rule.eps)
        g = self._run.gradient(p.apply(x), seeds, wrt=wrt, at=at, rule=rule)
        grads = dict(g.grads)
        if INPUT in grads:  # relevance passes the normalisation unchanged (no chain-rule gain)
            grads[INPUT] = p._reorder(grads[INPUT]).copy() if relevance else p.adjoint(grads[INPUT])
        activations = dict(g.activations)
        if INPUT in activations:
            activations[INPUT] = x
        return Gradients(grads=grads, activations=activations, outputs=g.outputs)


def _seeds_for_model(seeds, p):
    """A seed at the user's image, moved to the model's input so that its adjoint returns it."""
    if INPUT not in seeds:
        return seeds
    s = seeds[INPUT]
    gain, _ = p._affine(s.shape[1])
    return {**seeds, INPUT: p._reorder(s) / gain}
