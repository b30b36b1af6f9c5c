"""Objectives for activation maximisation, computed in NumPy from one pass's activations.

An objective names the tensors it reads (``tensors``) and, called with
``{name: activation}`` from a :meth:`Backend.gradient` pass, returns ``(values, seeds)``:
``values`` is (N,), one score per image to be *maximised*, and ``seeds`` is
``{name: d sum(values) / d activation}``, the vector that the backend propagates back to
the input. So one optimisation step is one forward and one backward pass, on any backend.

Objectives compose: ``a + b``, ``a - b``, ``2.0 * a``, ``-a`` and :func:`weighted` build a
:class:`Sum`, whose value is ``sum_k w_k value_k`` and whose seeds are summed per tensor.
"""
from __future__ import annotations

import numpy as np

from .._validate import check_int, check_name, check_number, describe, param_error
from ..backend import OUTPUT

__all__ = ["Objective", "Sum", "neuron", "channel", "layer_l2", "class_logit", "class_probability", "direction",
           "weighted", "as_objective"]


class Objective:
    """Base class: subclasses set ``tensors`` and define :meth:`compute`."""

    tensors: tuple = ()
    #: The layer a diversity term defaults to (None for class objectives).
    layer: str | None = None
    #: True when the objective is linear in the activations, so that its seeds do not
    #: depend on them: an optimiser may then pass them as constants after the first pass
    #: (a backend may run a constant seed faster than a callable one).
    linear: bool = False

    def compute(self, acts: dict) -> tuple:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, acts: dict) -> tuple:
        return self.compute(acts)

    def check(self, backend, owner: str) -> "Objective":
        """Check the layer names against ``backend.layers()``; channel and class indices
        are checked against the activations of the first pass."""
        names = None
        for t in self.tensors:
            if t == OUTPUT:
                continue
            if names is None:
                names = [layer.name for layer in backend.layers()]
            check_name(t, names, "layer", owner)
        return self

    # composition ---------------------------------------------------------------
    def __add__(self, other):
        return Sum([(1.0, self), (1.0, as_objective(other, owner="Objective.__add__", param="other"))])

    def __radd__(self, other):
        if isinstance(other, (int, float)) and other == 0:  # sum([...]) starts at 0
            return self
        return Sum([(1.0, as_objective(other, owner="Objective.__radd__", param="other")), (1.0, self)])

    def __sub__(self, other):
        return Sum([(1.0, self), (-1.0, as_objective(other, owner="Objective.__sub__", param="other"))])

    def __mul__(self, weight):
        w = check_number(weight, "weight", "Objective.__mul__")
        return Sum([(w, self)])

    __rmul__ = __mul__

    def __neg__(self):
        return Sum([(-1.0, self)])


def as_objective(value, *, owner: str = "as_objective", param: str = "value") -> Objective:
    """``value`` when it is an Objective; else a TypeError naming ``param`` of ``owner``."""
    if not isinstance(value, Objective):
        raise param_error(param, owner, "an Objective (neuron, channel, layer_l2, class_logit, "
                          "class_probability, direction or a combination)", describe(value), TypeError)
    return value


class Sum(Objective):
    """``sum_k w_k objective_k``; seeds of the same tensor add up."""

    def __init__(self, terms):
        flat = []
        for w, obj in terms:
            if isinstance(obj, Sum):
                flat += [(w * w2, o2) for w2, o2 in obj.terms]
            else:
                flat.append((float(w), as_objective(obj, owner="Sum", param="terms")))
        self.terms = flat
        self.tensors = tuple(dict.fromkeys(t for _, o in flat for t in o.tensors))
        self.linear = all(o.linear for _, o in flat)
        self.layer = next((o.layer for _, o in flat if o.layer is not None), None)

    def check(self, backend, owner):
        for _, o in self.terms:
            o.check(backend, owner)
        return self

    def compute(self, acts):
        total, seeds = None, {}
        for w, obj in self.terms:
            v, s = obj.compute(acts)
            total = w * v if total is None else total + w * v
            for name, g in s.items():
                seeds[name] = w * g if name not in seeds else seeds[name] + w * g
        return total, seeds

    def __repr__(self):
        return " + ".join(f"{w:g} * {o!r}" for w, o in self.terms)


def weighted(objectives, weights) -> Sum:
    """``sum_k weights[k] * objectives[k]``."""
    objectives, weights = list(objectives), list(weights)
    if len(objectives) != len(weights) or not objectives:
        raise param_error("weights", "weighted", f"one weight per objective ({len(objectives)})",
                          f"{len(weights)} weights")
    return Sum([(check_number(w, "weights", "weighted"), as_objective(o, owner="weighted", param="objectives"))
                for w, o in zip(weights, objectives)])


def _channel_axis(a, index, owner, param="channel"):
    if index >= a.shape[1]:
        raise param_error(param, owner, f"< {a.shape[1]} (the layer has {a.shape[1]} channels)", str(index))


class _LayerObjective(Objective):
    def __init__(self, layer):
        if not isinstance(layer, str):
            raise param_error("layer", type(self).__name__.lower(), "a layer name (str)", describe(layer), TypeError)
        self.layer = layer
        self.tensors = (layer,)


class neuron(_LayerObjective):
    """One unit: ``a[n, channel, y, x]`` (the centre position by default)."""

    linear = True

    def __init__(self, layer, channel, y=None, x=None):
        super().__init__(layer)
        self.channel = check_int(channel, "channel", "neuron", low=0)
        self.y = None if y is None else check_int(y, "y", "neuron", low=0)
        self.x = None if x is None else check_int(x, "x", "neuron", low=0)

    def compute(self, acts):
        a = acts[self.layer]
        _channel_axis(a, self.channel, "neuron")
        seeds = np.zeros_like(a)
        if a.ndim == 2:
            values = a[:, self.channel].copy()
            seeds[:, self.channel] = 1
            return values, {self.layer: seeds}
        h, w = a.shape[2], a.shape[3]
        y = h // 2 if self.y is None else self.y
        x = w // 2 if self.x is None else self.x
        if y >= h or x >= w:
            raise param_error("y, x", "neuron", f"inside the {h} x {w} map of {self.layer!r}", f"({y}, {x})")
        seeds[:, self.channel, y, x] = 1
        return a[:, self.channel, y, x].copy(), {self.layer: seeds}

    def __repr__(self):
        return f"neuron({self.layer!r}, {self.channel}, y={self.y}, x={self.x})"


class channel(_LayerObjective):
    """Mean activation of one channel over all positions: ``mean_{y,x} a[n, c, y, x]``."""

    linear = True

    def __init__(self, layer, channel):
        super().__init__(layer)
        self.channel = check_int(channel, "channel", "channel", low=0)

    def compute(self, acts):
        a = acts[self.layer]
        _channel_axis(a, self.channel, "channel")
        per = a[:, self.channel].reshape(len(a), -1)
        seeds = np.zeros_like(a)
        seeds[:, self.channel] = 1.0 / per.shape[1]
        return per.mean(axis=1), {self.layer: seeds}

    def __repr__(self):
        return f"channel({self.layer!r}, {self.channel})"


class layer_l2(_LayerObjective):
    """The whole layer's energy, as DeepDream: ``mean(a[n] ** 2)``; seed ``2 a / size``."""

    def compute(self, acts):
        a = acts[self.layer]
        size = a[0].size
        return (a.reshape(len(a), -1) ** 2).mean(axis=1), {self.layer: 2.0 * a / size}

    def __repr__(self):
        return f"layer_l2({self.layer!r})"


class class_logit(Objective):
    """The pre-softmax score of one class, ``z[n, c]``."""

    tensors = (OUTPUT,)
    linear = True

    def __init__(self, cls):
        self.cls = check_int(cls, "cls", type(self).__name__, low=0)

    def _scores(self, acts):
        z = acts[OUTPUT]
        if self.cls >= z.shape[1]:
            raise param_error("cls", type(self).__name__, f"a class index < {z.shape[1]} (the model has "
                              f"{z.shape[1]} classes)", str(self.cls))
        return z

    def compute(self, acts):
        z = self._scores(acts)
        seeds = np.zeros_like(z)
        seeds[:, self.cls] = 1
        return z[:, self.cls].copy(), {OUTPUT: seeds}

    def __repr__(self):
        return f"{type(self).__name__}({self.cls})"


class class_probability(class_logit):
    """The softmax probability of one class, ``p_c = exp(z_c) / sum_k exp(z_k)``, with
    seed ``p_c (e_c - p)``.

    Weakness (Simonyan et al. 2014): p_c rises as much by *lowering the other classes'
    scores* as by raising z_c, so the optimiser often finds images that suppress
    everything else rather than images that show class c; and once p_c is close to 1 the
    gradient vanishes (``p_c (1 - p_c)``). Prefer :class:`class_logit`. The output must be
    the model's logits (not probabilities already).
    """

    linear = False

    def compute(self, acts):
        z = self._scores(acts).astype(np.float64)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        pc = p[:, self.cls]
        onehot = np.zeros_like(p)
        onehot[:, self.cls] = 1
        seeds = pc[:, None] * (onehot - p)
        return pc.astype(np.float32), {OUTPUT: seeds.astype(np.float32)}


class direction(_LayerObjective):
    """A direction ``v`` in a layer's channel space: ``mean_{y,x} <v, a[n, :, y, x]> / |v|``
    (for a flat layer, ``<v, a[n]> / |v|``)."""

    linear = True

    def __init__(self, layer, vector):
        super().__init__(layer)
        v = np.asarray(vector, np.float32)
        if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all() or not np.any(v):
            raise param_error("vector", "direction", "a finite, non-zero 1-d array (one entry per channel)",
                              describe(vector))
        self.vector = v / np.linalg.norm(v)

    def compute(self, acts):
        a = acts[self.layer]
        if a.shape[1] != self.vector.size:
            raise param_error("vector", "direction", f"of length {a.shape[1]} (the channels of {self.layer!r})",
                              f"length {self.vector.size}")
        shape = (1, -1) + (1,) * (a.ndim - 2)
        v = self.vector.reshape(shape)
        positions = int(np.prod(a.shape[2:])) if a.ndim > 2 else 1
        values = (a * v).reshape(len(a), -1).sum(axis=1) / positions
        seeds = np.broadcast_to(v / positions, a.shape).astype(np.float32)
        return values, {self.layer: np.ascontiguousarray(seeds)}

    def __repr__(self):
        return f"direction({self.layer!r}, <{self.vector.size}>)"
