"""The Backend protocol: what every framework adapter offers the NumPy core.

A backend wraps one model and speaks NumPy at its edge: float32, batch first, channels
first (NCHW) for images and activations. Tensors are named by strings: ``"input"`` is
the model input, ``"output"`` its scores (N, K), any other name a layer the backend
lists in :meth:`Backend.layers`.

:class:`BackendBase` is the concrete base of the built-in backends: it checks every argument
once and calls the framework's ``_forward``, ``_activations`` and ``_gradient``;
:func:`unchecked` is the trusted path to those for code that has checked its arguments.
A third party may implement the :class:`Backend` protocol without the base.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from typing import Callable, Protocol, Union, runtime_checkable

import numpy as np

from ._renamed import warn_once
from ._validate import as_images, check_choice, check_name, describe, param_error

__all__ = ["Backend", "BackendBase", "unchecked", "Layer", "LAYOUTS", "Gradients", "Seeds", "RELU_RULES", "INPUT", "OUTPUT"]

INPUT = "input"
OUTPUT = "output"
RELU_RULES = ("standard", "guided", "deconvnet")

#: Seeds for a vector-Jacobian product: arrays keyed by tensor name, each shaped like
#: that tensor, or a callable that receives the activations of the pass itself
#: ``{name: array}`` (for the names given as ``at``) and returns such a mapping.
Seeds = Union[Mapping[str, np.ndarray], Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]]


#: How a layer's output is laid out (without the batch axis), as :attr:`Layer.layout` says.
LAYOUTS = ("chw", "hwc", "tokens", "vector", "other")


@dataclass(frozen=True)
class Layer:
    """One layer (or tensor) a backend can report on.

    ``shape`` is the output shape without the batch axis as the backend hands it out (NCHW
    maps are (C, H, W)); ``None`` where the backend cannot know it. ``layout`` says what the
    axes are (:data:`LAYOUTS`): ``"chw"`` a channels-first map, ``"hwc"`` a channels-last map
    (a tensor permuted inside the model, as in ConvNeXt blocks), ``"tokens"`` a (T, D)
    sequence (a ViT), ``"vector"`` (D,), ``"other"``; empty when the backend does not say
    (then a 3-d shape is taken to be a channels-first map).

    Geometry, for receptive fields: ``kernel``, ``stride``, ``dilation`` are (h, w) and
    ``padding`` is (top, left, bottom, right), set for conv and pool layers; a padding layer
    reports kernel (1, 1), stride (1, 1) and its padding, a cropping layer the same with
    negative padding. ``kind == "deconv"`` (a transposed conv) reports the transposed op's
    kernel, stride, padding and dilation; ``kind == "upsample"`` reports the integer scale
    factors (out / in) as ``stride``. ``inputs`` names the layers whose outputs this layer's
    output is computed from (through operators that are not layers themselves), where the
    backend knows the data flow; an input whose map is (C, 1, 1) while this layer's is larger
    is a broadcast gate (squeeze-excitation) and does not widen the field.
    """

    name: str
    kind: str
    shape: tuple | None = None
    kernel: tuple | None = None
    stride: tuple | None = None
    padding: tuple | None = None
    dilation: tuple | None = None
    inputs: tuple = ()
    op: str = ""
    layout: str = ""

    @property
    def spatial(self) -> bool:
        """True when the output is a channels-first (C, H, W) map."""
        if self.shape is None or len(self.shape) != 3:
            return False
        return self.layout in ("", "chw")


@dataclass
class Gradients:
    """The result of one :meth:`Backend.gradient` call.

    ``grads`` maps each ``wrt`` name to its gradient (same shape as the tensor);
    ``activations`` holds the forward values of the seed and ``wrt`` layers;
    ``outputs`` the model scores of the same pass.
    """

    grads: dict
    activations: dict = field(default_factory=dict)
    outputs: np.ndarray | None = None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.grads[name]


@runtime_checkable
class Backend(Protocol):
    """What convscope needs from a model, in NumPy.

    Optional attributes: ``fixed_size``, the (H, W) a model requires, or None when it takes
    any size; ``value_range``, the (low, high) of its input values (default (0, 1)); methods
    that make images (synthesis) read them with ``getattr``.
    """

    name: str

    def layers(self) -> list[Layer]:
        """Layer records in execution order."""

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Model scores for a batch, shape (N, K)."""

    def activations(self, x: np.ndarray, layers: Sequence[str]) -> dict:
        """``{name: array}`` for the asked layers, from one forward pass."""

    def gradient(
        self,
        x: np.ndarray,
        seeds: Seeds,
        *,
        wrt: Sequence[str] = (INPUT,),
        at: Sequence[str] | None = None,
        rule: str = "standard",
    ) -> Gradients:
        """Vector-Jacobian products in one forward and one backward pass.

        ``seeds`` are placed at ``"output"`` or at named layers; gradients are returned
        for every name in ``wrt`` (``"input"`` and/or layers). ``at`` names the tensors
        that may be seeded (default: the seed names; ``["output"]`` for a callable); a
        callable receives their activations. ``rule`` picks the backward rule of every
        ReLU: ``"standard"``, ``"guided"`` (Springenberg) or ``"deconvnet"`` (Zeiler and
        Fergus). :class:`BackendBase` also takes ``relu=``, a deprecated alias of ``rule=``.
        """

    def weights(self, layer: str) -> dict:
        """Parameters of a layer as arrays, e.g. ``{"weight": (O, I, kh, kw), "bias": (O,)}``."""

    # Optional capability (the sanity checks of Adebayo et al. 2018 need it):
    #
    # ``with_weights(weights) -> Backend``: ``weights`` maps layer names to ``{parameter: array}``
    # named and shaped as :meth:`weights` gives them; returns a NEW backend over a copy of the
    # model with those parameters replaced (same layer names, options, preprocessing, output
    # cut). The user's model and this backend are left untouched. :class:`BackendBase` checks
    # the mapping and calls ``_with_weights``; a backend without it raises NotImplementedError.


def _as_list(names) -> list:
    """One name or a sequence of names, as a list without repeats."""
    return [names] if isinstance(names, str) else list(dict.fromkeys(names))


def _rule_of(rule, relu):
    """(rule, the parameter name to report) from ``rule=`` and its deprecated alias ``relu=``."""
    if relu is None:
        return rule, "rule"
    warn_once("gradient relu=", "gradient(..., relu=...) is deprecated; pass rule=... (the same values).")
    if rule != "standard" and rule != relu:
        raise TypeError(f"gradient() got rule={rule!r} and its deprecated alias relu={relu!r}; pass only rule=.")
    return relu, "relu"


class _CheckedSeeds:
    """A seeds callable whose result is checked, as a mapping of seeds is, before it is used."""

    __slots__ = ("backend", "fn", "at")

    def __init__(self, backend, fn, at):
        self.backend, self.fn, self.at = backend, fn, at

    def __call__(self, activations):
        shapes = {n: np.shape(a) for n, a in activations.items()}
        return self.backend._seed_map(self.fn(activations), self.at, shapes.get, returned=True)


class BackendBase:
    """A Backend that checks its arguments once and hands them to the framework.

    The public ``forward``, ``activations`` and ``gradient`` validate the images (a float
    batch (N, C, H, W), finite, ``channels`` on axis 1, ``fixed_size`` when set), the names
    (close matches listed), ``at`` (default: the seed names, or ``["output"]`` for a
    callable), the seeds and the rule, in the project's one error template, then call what a
    framework implements with checked arguments:

    * ``_forward(x)`` -> (N, K) float32;
    * ``_activations(x, names)`` -> ``{name: array}``; ``names`` is a list without repeats;
    * ``_gradient(x, seeds, wrt, at, rule)`` -> :class:`Gradients`; ``seeds`` is a dict of
      float32 arrays shaped like their tensors, every name in ``at``, or a callable that
      takes ``{name: array}`` for ``at`` and returns such a dict (already checked);
      ``wrt`` and ``at`` are lists of known names; ``rule`` is one of ``rules``;
    * ``_tensor_shape(name, chw)`` -> the shape of a tensor without the batch axis for
      images of size ``chw``, or None when unknown (its seeds are then not checked here).
      The base caches the answers per input size, so a call pays a dict look-up;
    * ``_layer_known(name)`` (fast membership; default: False) and ``_layer_names()``
      (every layer name, for the close-match hint; default: from :meth:`layers`);
    * ``_note_input(x)``: called with every checked batch (to size ``layers()``, say).

    ``x`` reaches them as C-contiguous float32. :func:`unchecked` calls them directly.
    """

    name = "base"
    #: (H, W) the model requires, or None; the images of every call are checked against it
    fixed_size = None
    #: channels the model takes, or None when not known
    channels = None
    #: backward rules ``gradient`` accepts
    rules = RELU_RULES
    #: rule-set classes ``gradient`` also accepts as ``rule`` (:mod:`convscope._relevance`:
    #: LRP's RelevanceRules, DeepLiftRules); empty when the backend has no such rules
    rule_sets = ()
    #: (low, high) of the model's input values: ``load(model, value_range=...)``; synthesis
    #: keeps the images it makes inside it
    value_range = (0.0, 1.0)
    #: attributes holding per-model caches (and their lock) that keep no strong reference to
    #: the model: :func:`convscope.load` shares them between the backends it makes for one
    #: in-memory model with the same options, so a new backend does not probe or trace again
    _shared = ("_shapes_seen",)

    def _share_state(self) -> dict:
        self._shape_cache  # noqa: B018 - made on first use
        return {name: self.__dict__[name] for name in self._shared if name in self.__dict__}

    def _adopt_state(self, state: dict) -> None:
        self.__dict__.update(state)

    # ----------------------------------------------------------------- the public, checked calls
    def forward(self, x) -> np.ndarray:
        return self._forward(self._images(x, "forward"))

    def activations(self, x, layers) -> dict:
        x = self._images(x, "activations")
        return self._activations(x, self._check_names(layers, "layers", "activations"))

    def gradient(self, x, seeds, *, wrt=(INPUT,), at=None, rule="standard", relu=None) -> Gradients:
        rule, rule_param = _rule_of(rule, relu)
        x = self._images(x, "gradient")
        self._check_rule(rule, rule_param, x)
        wrt = self._check_names(wrt, "wrt", "gradient")
        if isinstance(seeds, Mapping):
            at = self._check_names(list(seeds), "seeds", "gradient") if at is None else \
                self._check_names(at, "at", "gradient")
            chw, n = tuple(x.shape[1:]), len(x)
            seeds = self._seed_map(seeds, at, lambda name: self._shape_with_batch(name, n, chw))
        elif callable(seeds):
            at = [OUTPUT] if at is None else self._check_names(at, "at", "gradient")
            if not at:
                raise param_error("at", "gradient", "at least one tensor name when seeds is a callable", "[]")
            seeds = _CheckedSeeds(self, seeds, at)
        else:
            raise param_error("seeds", "gradient", "a mapping {name: array} or a callable returning one",
                              describe(seeds), TypeError)
        return self._gradient(x, seeds, wrt, at, rule)

    # ----------------------------------------------------------------- checks
    def _check_rule(self, rule, param, x):
        """A ReLU rule name of ``rules``, or a rule set of ``rule_sets`` (LRP, DeepLift)."""
        if isinstance(rule, str) or not self.rule_sets:
            check_choice(rule, self.rules, param, "gradient")
            return
        if not isinstance(rule, self.rule_sets):
            kinds = ", ".join(c.__name__ for c in self.rule_sets)
            raise param_error(param, "gradient", f"one of {list(self.rules)} or a rule set ({kinds})",
                              describe(rule), TypeError)
        baseline = getattr(rule, "baseline", None)
        if baseline is not None and np.shape(baseline) != x.shape:
            raise param_error("baseline", "gradient", f"one reference per image, shape {x.shape}",
                              f"shape {np.shape(baseline)}")

    def _images(self, x, owner):
        x = as_images(x, owner=owner, channels=self.channels, spatial=self.fixed_size)
        self._note_input(x)
        return x

    def _check_names(self, names, param, owner, allow=(INPUT, OUTPUT)) -> list:
        """Check tensor names (``"input"``, ``"output"`` or a layer); unknown ones list close matches."""
        if not isinstance(names, (str, Sequence, Set)) and not hasattr(names, "__iter__"):
            raise param_error(param, owner, "a name or a sequence of names", describe(names), TypeError)
        names = _as_list(names)
        for n in names:
            if n not in allow and not (isinstance(n, str) and self._layer_known(n)):
                check_name(n, self._name_hints(n, allow), param, owner)
        return names

    def _name_hints(self, name, allow=(INPUT, OUTPUT)) -> list:
        """Every name ``name`` may be (a name in this list passes), closest first in the error."""
        return [*allow, *self._layer_names()]

    def _shape_with_batch(self, name, n, chw):
        key = (chw, name)
        shape = self._shape_cache.get(key, _UNSET)
        if shape is _UNSET:
            shape = self._tensor_shape(name, chw)
            shape = None if shape is None else tuple(int(d) for d in shape)
            if len(self._shape_cache) >= _SHAPE_CACHE:
                self._shape_cache.clear()
            self._shape_cache[key] = shape
        return None if shape is None else (n, *shape)

    def _seed_map(self, seeds, at, shape_of, returned=False) -> dict:
        """Checked seeds: a non-empty mapping of known names in ``at`` to finite float32 arrays
        of their tensors' shapes. ``returned``: the mapping came from a seeds callable."""
        came = "a seeds callable returning " if returned else ""
        if not isinstance(seeds, Mapping):
            raise param_error("seeds", "gradient", "a mapping {name: array} or a callable returning one",
                              came + describe(seeds), TypeError)
        if not seeds:
            raise param_error("seeds", "gradient", "a mapping with at least one seed", came + "an empty mapping")
        checked = {}
        for name, s in seeds.items():
            if name not in at:  # ``at`` holds known names only
                if not returned:  # an unknown name: say which names exist
                    self._check_names([name], "seeds", "gradient")
                raise ValueError(f"The 'seeds' parameter of gradient names {name!r}, which is not in at={list(at)}.")
            try:
                s = np.ascontiguousarray(s, dtype=np.float32)
            except (TypeError, ValueError):
                raise param_error("seeds", "gradient", f"an array for {name!r}", came + describe(s), TypeError) from None
            want = shape_of(name)
            if want is not None and s.shape != tuple(want):
                raise param_error("seeds", "gradient", f"shaped like {name!r}, {tuple(want)}", f"shape {s.shape}")
            if not np.isfinite(s).all():
                bad = int(s.size - np.isfinite(s).sum())
                raise param_error("seeds", "gradient", "finite (no NaN or Inf)", f"{bad} non-finite values at {name!r}")
            checked[name] = s
        return checked

    # ----------------------------------------------------------------- what a framework implements
    @property
    def _shape_cache(self) -> dict:
        cache = self.__dict__.get("_shapes_seen")
        if cache is None:
            cache = self.__dict__.setdefault("_shapes_seen", {})
        return cache

    def _note_input(self, x) -> None:
        """Called with every checked batch; a backend may note its size."""

    def _layer_known(self, name: str) -> bool:
        return False

    def _layer_names(self) -> list:
        return [layer.name for layer in self.layers()]

    def _tensor_shape(self, name: str, chw: tuple):
        return None

    def _forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} does not implement _forward")

    def _activations(self, x, names):
        raise NotImplementedError(f"{type(self).__name__} does not implement _activations")

    def _gradient(self, x, seeds, wrt, at, rule):
        raise NotImplementedError(f"{type(self).__name__} does not implement _gradient")

    def layers(self) -> list:
        raise NotImplementedError(f"{type(self).__name__} does not implement layers")

    def weights(self, layer) -> dict:
        raise NotImplementedError(f"{type(self).__name__} does not implement weights")

    def with_weights(self, weights) -> "BackendBase":
        """A new backend over a copy of the model whose parameters ``weights``
        (``{layer: {parameter: array}}``, as :meth:`weights` names and shapes them) replace the
        model's; this backend and the model are left as they are. Each array is checked: a
        known layer and parameter, the same shape, a float (or the parameter's own) dtype,
        finite values."""
        if type(self)._with_weights is BackendBase._with_weights:
            raise NotImplementedError(f"The {self.name!r} backend ({type(self).__name__}) cannot run with "
                                      "replaced weights (it does not implement with_weights).")
        from ._weights import checked_weights

        new = self._with_weights(checked_weights(self, weights))
        if "value_range" in self.__dict__:
            new.value_range = self.value_range
        return new

    def _replaceable(self, layer) -> dict:
        """The parameters of ``layer`` that :meth:`with_weights` may replace (default: :meth:`weights`)."""
        return self.weights(layer)

    def _with_weights(self, weights):
        """The new backend for checked ``{layer: {parameter: array}}`` (a framework implements it)."""
        raise NotImplementedError


_UNSET = object()
_SHAPE_CACHE = 1024


from ._unchecked import unchecked  # noqa: E402  (the trusted path is built on BackendBase)
