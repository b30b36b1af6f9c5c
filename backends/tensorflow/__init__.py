"""TensorFlow/Keras backend: Keras 3 models (Sequential, functional, subclassed, nested).

NHWC inside, NCHW at the edge: the input, activations, seeds and gradients of 4-d tensors
are transposed in NumPy around the traced function (cheaper than transposes in the graph),
and layer records give channels-first shapes.
Layers are named by their Keras names; a layer of a nested model by its path,
``"base/block1_conv1"``; the second call of a shared layer by ``name#2``.

Every pass runs the model layer by layer (:mod:`._run`), so any layer's output can be
recorded, seeded or differentiated, and the guided and deconvnet rules reach every ReLU,
fused ones included, through ``tf.custom_gradient`` ops placed where the ReLUs are. The
model object is only read: no activation is swapped on it, no flag or weight changes.
Why this way: swapping activations on the model, even in try/finally, is visible to other
threads using it; ``gradient_override_map`` is ignored by ``GradientTape``; a full clone
costs memory and stops following the user's weights. Walking the graph ourselves costs
nothing at run time (it happens once, while tracing) and shares the user's variables. A
ReLU that runs as a raw op inside a layer's own code cannot be reached; a RuntimeWarning
names such ops when a rule is asked for.

What is explained: ``"output"`` is the scores before a final softmax (fused in the last
Dense or conv, or an ``Activation``/``Softmax`` layer), computed in the pass, not by
changing the model; ``output="probabilities"`` keeps the softmax. ``choices`` says what was
chosen for the user.

Speed: forward, activations and gradients run as concrete ``tf.function`` graphs traced once
per (seed names, wrt, rule) key with a ``None`` batch dimension in the input signature,
kept in a small LRU cache, so calls never retrace; ``compile=False`` runs the same code
eagerly (for debugging). Layer records come from one eager probe pass per input shape.
"""
from __future__ import annotations

import functools
import os
import sys
import threading
import warnings
import weakref
from collections import OrderedDict
from contextlib import contextmanager, nullcontext

import numpy as np

from convscope._relevance import DeepLiftRules, RelevanceRules
from convscope._validate import check_finite, describe, param_error
from convscope.backend import INPUT, OUTPUT, BackendBase, Gradients
from convscope.hookspecs import hookimpl

from ._compiled import SeedCall, activations_body, callable_gradient_body, forward_body, gradient_body
from ._layers import layer_record, layer_weights, to_channels_first
from ._relevance import relevance_gradient
from ._model import channels_last, check_input_shape, declared_input_shape, output_options, pick_output
from ._run import RULE_SCOPE, LayerRun, relu_site
from ._device import placed, tf_device
from ._weights import assign_weights, clone_with_weights

__all__ = ["KerasBackend"]

_CACHE_SIZE = 16


@hookimpl
def convscope_make_backend(model, options):
    if isinstance(model, (str, os.PathLike)):
        path = os.fsdecode(os.fspath(model))
        if not path.lower().endswith((".keras", ".h5")):
            return None
        if not os.path.exists(path):
            raise FileNotFoundError(f"convscope.load: no Keras model file at {path!r}.")
        try:
            import keras
        except ImportError as err:
            raise ImportError(f"Loading {path!r} needs TensorFlow: pip install 'convscope[tensorflow]'") from err

        from ._files import load_keras_file  # refuses Lambda layers unless safe_mode=False

        options = dict(options)
        return KerasBackend(load_keras_file(path, keras, options.pop("safe_mode", True)), **options)
    if sys.modules.get("keras") is None and sys.modules.get("tensorflow") is None:
        return None  # no Keras model can exist (a blocked module is None in sys.modules)
    try:
        import keras
    except ImportError:
        return None

    return KerasBackend(model, **options) if isinstance(model, keras.Model) else None


def _traced(names):
    """The activations a traced gradient returns: the input and the scores are known anyway."""
    return [n for n in names if n not in (INPUT, OUTPUT)]


def _to_edge(channels_last, a):
    """A result in the model's layout -> float32 NumPy, NCHW for a 4-d map."""
    a = np.asarray(a, dtype=np.float32)
    if channels_last and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    return a


def _to_model(channels_last, a):
    """NCHW (edge) -> the model's layout, for inputs and seeds."""
    if channels_last and a.ndim == 4:
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1))
    return a


def _weak_run(tf, keras, model, select, output_names, scores):
    """The pass ``run(x, rule)`` -> ``{name: tensor}`` (``x`` as ``input``, the picked output as
    ``output``: before its softmax when ``scores``). It holds the model weakly: traced functions
    keep it, and they are shared by every backend ``convscope.load`` makes for the model, which
    must be free to go."""
    model = weakref.ref(model)

    def run(x, rule):
        layer_run = LayerRun(tf, keras, rule, scores=scores)
        out = layer_run.run(model(), x, INPUT)
        layer_run.store[OUTPUT] = layer_run.scores(pick_output(out, select, output_names))[0]
        return layer_run.store
    return run


class KerasBackend(BackendBase):
    """Backend for a Keras 3 model on TensorFlow; :class:`~convscope.backend.BackendBase` checks the arguments.

    ``input_shape`` (C, H, W) sets the probe used by :meth:`layers` (default: the model's
    declared input, else the last batch seen). ``output``: ``"scores"`` (default) explains the
    scores before a final softmax, ``"probabilities"`` keeps it. ``select`` (index or name)
    picks one output of a multi-output model (``output=<index or name>`` still does, deprecated).
    ``compile=False`` runs eagerly instead of through ``tf.function``.

    Devices: by default TensorFlow places the work (on its first GPU when it sees one).
    ``device`` ("/GPU:0", "/CPU:0", or "cpu", "gpu", "cuda", "cuda:1" for short) runs every
    pass under ``tf.device``; a device TensorFlow does not list raises, naming those it has.
    """

    name = "tensorflow"
    #: LRP and DeepLift (:mod:`._relevance`)
    rule_sets = (RelevanceRules, DeepLiftRules)
    #: traced functions, probes and the lock: shared by the backends of one model (no reference to it)
    _shared = ("_shapes_seen", "_functions", "_probes", "_latest", "_lock", "_seed_call")

    def __init__(self, model, *, input_shape=None, output="scores", select=None, compile=True, device=None):
        import keras
        import tensorflow as tf

        if not isinstance(model, keras.Model):
            raise param_error("model", "KerasBackend", "a keras.Model", describe(model), TypeError)
        output, select = output_options(output, select, list(getattr(model, "output_names", None) or []))
        self._tf, self._keras, self.model, self.output, self.select = tf, keras, model, output, select
        self._compile = bool(compile)
        #: the TensorFlow device every pass runs on ("/device:GPU:0"), None: TensorFlow's own placement
        self.device = tf_device(tf, device)
        self._lock = threading.RLock()
        self._functions, self._probes, self._latest = OrderedDict(), OrderedDict(), [None]
        self._traces = 0  # how many functions were traced: once per cache key, never per call
        self._channels_last = channels_last(model, keras)
        self._to_edge = functools.partial(_to_edge, self._channels_last)
        self._to_model = functools.partial(_to_model, self._channels_last)
        self._seed_call = SeedCall(self._to_edge, self._to_model)
        declared = to_channels_first(declared_input_shape(model), self._channels_last)
        input_shape = check_input_shape(input_shape)
        self._input_shape = input_shape
        self._declared = declared if declared is not None and None not in declared else None
        self._spatial = tuple(declared[1:]) if declared is not None and None not in declared[1:] else None
        self.channels = (input_shape or declared or (None,))[0]
        self._last_shape = None
        self._output_names = list(getattr(model, "output_names", None) or [])
        self._run = _weak_run(tf, keras, model, select, self._output_names, output == "scores")
        if hasattr(model, "_outputs_struct"):  # functional: check the output choice now
            struct = model._outputs_struct
            self._pick(struct[0] if isinstance(struct, (list, tuple)) and len(struct) == 1 else struct)

    @property
    def fixed_size(self):
        """(H, W) when the model takes only one image size, else None."""
        return self._spatial

    @property
    def choices(self):
        """What convscope chose for the user, ``{option: why}``: ``"output"`` when a final softmax
        is left out (its layer named; read from a probe pass, as :meth:`layers`)."""
        if self.output != "scores":
            return {}
        with self._locked():
            dropped = self._probe(self._probe_shape())[3]
        if dropped is None:
            return {}
        return {"output": f"the softmax of the final layer {dropped!r} is left out: methods explain the scores "
                          "before it; load(model, output='probabilities') keeps it"}

    @property
    def input_shape(self):
        """(C, H, W) from the ``input_shape`` option or the model's declared input, else None."""
        return self._input_shape or self._declared

    # ----------------------------------------------------------------- helpers
    @contextmanager
    def _locked(self):
        if self._seed_call.thread == threading.get_ident():
            raise RuntimeError("A seeds callable cannot call the backend whose gradient it is seeding.")
        with self._lock, (self._tf.device(self.device) if self.device else nullcontext()):
            yield

    def _pick(self, out):
        return pick_output(out, self.select, self._output_names)

    def _function(self, key, body, seed_ranks=()):
        """The concrete function for ``key``, traced once and kept in an LRU cache.

        Calling the concrete function skips ``tf.function``'s signature dispatch (about half
        of its per-call overhead) and can never retrace."""
        fn = self._functions.get(key)
        if fn is not None:
            self._functions.move_to_end(key)
            return fn
        if self.device:  # placed in the traced graph itself, not only around its call
            body = placed(self._tf, self.device, body)
        if self._compile:
            tf = self._tf
            shape = (None, self.channels, *(self._spatial or (None, None)))
            shape = (shape[0], *shape[2:], shape[1]) if self._channels_last else shape
            signature = [tf.TensorSpec(shape, tf.float32)] + [tf.TensorSpec([None] * r, tf.float32) for r in seed_ranks]
            fn = tf.function(body, input_signature=signature, autograph=False).get_concrete_function()
            self._traces += 1
            rule = key[1] if key[0].startswith("gradient") else "standard"
            if rule != "standard":
                self._warn_unreached(fn, rule)
        else:
            fn = lambda *args: body(*[self._tf.constant(a) for a in args])  # noqa: E731
        self._functions[key] = fn
        while len(self._functions) > _CACHE_SIZE:
            self._functions.popitem(last=False)
        return fn

    def _warn_unreached(self, concrete, rule):
        missed = [op.name for op in concrete.graph.get_operations()
                  if op.type in ("Relu", "Relu6") and RULE_SCOPE not in op.name]
        if missed:
            warnings.warn(f"{len(missed)} ReLU operations run outside the layers convscope walks (raw ops in a "
                          f"subclassed model's call, or inside a custom layer): {', '.join(missed[:3])}. The {rule} "
                          "rule does not reach them; their gradient follows the standard rule.", RuntimeWarning,
                          stacklevel=4)

    def _note_input(self, x):
        if self._input_shape is None:
            self._last_shape = x.shape[1:]
        if not self.model.built:  # a subclassed model never called: build it as Keras's first call would
            with self._locked():
                self.model(self._to_model(np.zeros((1, *x.shape[1:]), np.float32)), training=False)
                self.channels = x.shape[1]

    # ----------------------------------------------------------------- layer records and names
    def _probe(self, shape):
        """(records, {name: NCHW shape without batch}, {name: layer}, the layer whose softmax the
        scores leave out or None) for inputs of ``shape``."""
        if shape in self._probes:
            self._probes.move_to_end(shape)
            self._latest[0] = self._probes[shape][1]
            return self._probes[shape]
        tf, keras = self._tf, self._keras
        run = LayerRun(tf, keras, "standard", probe=True, scores=self.output == "scores")
        try:
            out = self._pick(run.run(self.model, tf.constant(self._to_model(np.zeros((1, *shape), np.float32))), INPUT))
            out, dropped = run.scores(out)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as err:
            raise ValueError(f"Could not run the model on a probe of shape {shape} to list its layers ({err}). "
                             "Pass input_shape=(C, H, W) to convscope.load, or run a batch first.") from None
        records = [layer_record(name, layer, i, o, inputs, relu_site(layer, tf, keras), self._channels_last, keras)
                   for name, layer, i, o, inputs in run.records]
        shapes = {r.name: r.shape for r in records}
        shapes[INPUT], shapes[OUTPUT] = tuple(shape), self._to_edge(out).shape[1:]
        self._probes[shape] = (records, shapes, {name: layer for name, layer, *_ in run.records}, dropped)
        self._latest[0] = shapes
        while len(self._probes) > 8:
            self._probes.popitem(last=False)
        return self._probes[shape]

    def _probe_shape(self):
        shape = self._input_shape or self._last_shape or self._declared or (self.channels, 224, 224)
        if shape[0] is None:
            raise ValueError("The model has not been built, so its input shape is unknown. Pass input_shape=(C, H, W) "
                             "to convscope.load, or run a batch first.")
        return tuple(int(v) for v in shape)

    def layers(self):
        """Records in execution order, shapes for ``input_shape``, the model's input or the last batch."""
        with self._locked():
            return list(self._probe(self._probe_shape())[0])

    def _layer_known(self, name):
        latest = self._latest[0]  # the names of the latest probe (read without the lock: a seeds
        if latest is None:        # callable may be checking what it returned)
            self.layers()
            latest = self._latest[0]
        return name in latest and name not in (INPUT, OUTPUT)

    def _layer_names(self):
        self._layer_known(INPUT)
        return [n for n in self._latest[0] if n not in (INPUT, OUTPUT)]

    def _name_hints(self, name, allow=(INPUT, OUTPUT)):
        known = self._layer_names()
        parent = name.rpartition("/")[0] if isinstance(name, str) else ""
        inside = [k for k in known if k.startswith(parent + "/")] if parent else []
        return inside or [*allow, *known]

    def _tensor_shape(self, name, chw):
        with self._locked():
            return self._probe(tuple(chw))[1].get(name)

    # ----------------------------------------------------------------- the protocol
    def _forward(self, x):
        with self._locked():
            fn = self._function(("forward",), forward_body(self._run))
            return check_finite(self._to_edge(fn(self._to_model(x))), "the output", "forward")

    def _activations(self, x, names):
        with self._locked():
            fn = self._function(("activations", tuple(names)), activations_body(self._run, names))
            return {n: check_finite(self._to_edge(a), repr(n), "activations")
                    for n, a in zip(names, fn(self._to_model(x)))}

    def _gradient(self, x, seeds, wrt, at, relu):
        if not isinstance(relu, str):
            return relevance_gradient(self, x, seeds, wrt, at, relu)
        with self._locked():
            acts = list(dict.fromkeys([*at, *wrt]))
            if callable(seeds):
                return self._callable_gradient(x, seeds, wrt, at, acts, relu)
            names = list(seeds)
            arrays = [np.ascontiguousarray(seeds[n], dtype=np.float32) for n in names]
            key = ("gradient", relu, tuple(names), tuple(a.ndim for a in arrays), tuple(wrt), tuple(acts))
            body = gradient_body(self._tf, self._run, relu, names, wrt, _traced(acts))
            fn = self._function(key, body, seed_ranks=key[3])
            return self._result(fn(self._to_model(x), *[self._to_model(a) for a in arrays]), x, wrt, acts)

    def _callable_gradient(self, x, seeds, wrt, at, acts, relu):
        key = ("gradient_callable", relu, tuple(at), tuple(wrt), tuple(acts))
        body = callable_gradient_body(self._tf, self._run, relu, at, wrt, _traced(acts), self._seed_call)
        fn = self._function(key, body)
        self._seed_call.arm(seeds, at)
        failure = None
        try:
            return self._result(fn(self._to_model(x)), x, wrt, acts)
        except Exception as err:
            failure = err
            raise
        finally:
            self._seed_call.disarm(failure)

    def _result(self, result, x, wrt, acts):
        """The traced function's tensors as NumPy. NaN or Inf the model produced in an asked
        tensor (``at``, ``wrt``) or gradient is reported (FloatingPointError), not handed on to
        be drawn as a blank picture; as on torch, the scores are checked when they are asked."""
        out, act_values, grad_values = result
        out = self._to_edge(out)
        traced = dict(zip(_traced(acts), act_values))
        activations = {n: x if n == INPUT else self._to_edge(out if n == OUTPUT else traced[n]) for n in acts}
        for n in acts:
            check_finite(activations[n], repr(n), "gradient")
        return Gradients(grads={n: check_finite(self._to_edge(g), f"the gradient at {n!r}", "gradient")
                                for n, g in zip(wrt, grad_values)}, activations=activations, outputs=out)

    def weights(self, layer):
        with self._locked():
            self._check_names([layer], "layer", "weights", allow=())
            objects = next(reversed(self._probes.values()))[2]
            return layer_weights(objects[layer], self._keras)

    def _with_weights(self, weights):
        """A backend over a clone of the model (new variables) with ``weights`` assigned (:mod:`._weights`)."""
        with self._locked():
            shape = self._probe_shape()
            twin = clone_with_weights(self._keras, self.model)
        new = KerasBackend(twin, input_shape=self._input_shape, output=self.output, select=self.select,
                           compile=self._compile, device=self.device)
        with new._locked():
            assign_weights(new._probe(shape)[2], weights, self._keras)
        return new
