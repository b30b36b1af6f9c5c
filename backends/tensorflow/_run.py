"""One pass through a Keras 3 model, layer by layer, without modifying the model.

:class:`LayerRun` calls each layer itself, so that it can

* record every layer's output under a path-like name (``"base/block1_conv1"`` for a layer
  of the nested model ``base``; ``"name#2"`` for the second call of a shared layer);
* replace the backward rule of every ReLU for the guided and deconvnet rules: ``ReLU``
  layers (ReLU6 = ``max_value=6``), ``Activation("relu")``, ``keras.ops.relu`` nodes and
  ``activation="relu"`` fused in ``Conv2D``/``Dense`` and any layer with an ``activation``.

How each kind of model is walked:

* functional models and built ``Sequential`` ones: through the model's own node graph
  (``Function._run_through_graph`` with an ``operation_fn`` of ours), recursively for
  nested models;
* subclassed models and layers (a ``call`` written outside Keras, with sub-layers): their
  class's ``call`` runs on a *twin*, a bare instance sharing the model's ``__dict__`` except
  that sub-layers are replaced by proxies that route through this run;
* a layer with a fused ReLU runs its class's ``call`` on a twin whose ``activation`` is the
  rule's ReLU; the weights are the user's (shared, not copied).

With ``scores=True`` the run also keeps, for each output of a final softmax (``activation=
"softmax"`` fused in a layer, an ``Activation("softmax")``, a ``Softmax`` layer, ``keras.ops.softmax``;
log-softmax too), the tensor before it: :meth:`LayerRun.scores` hands that out in place of the
model's output, as tf-keras-vis's ``ReplaceToLinear`` does but without touching the model. A
fused layer runs its class's ``call`` on a twin whose ``activation`` is linear, and its
output is the user's activation of that; in a traced graph the softmax left unused costs nothing.

Twins are never registered anywhere and the user's objects are only read, so nothing
(activation, trainable flag, weights, losses) changes, even when a pass raises.
"""
from __future__ import annotations

import functools

__all__ = ["LayerRun", "relu_site", "softmax_site", "rule_relu", "RULE_SCOPE"]

#: Name scope of the ReLU ops this module creates; a ReLU op outside it was not reached.
RULE_SCOPE = "convscope_relu_rule"


def rule_relu(tf, z, rule: str, upper: float | None):
    """``clip(z, 0, upper)`` whose backward is the guided or deconvnet rule.

    guided: dz = max(g, 0) * [0 < z < upper]; deconvnet: dz = max(g, 0) (no mask).
    """
    with tf.name_scope(RULE_SCOPE):
        @tf.custom_gradient
        def relu(z):
            if upper is None:
                y = tf.nn.relu(z)
            elif upper == 6:
                y = tf.nn.relu6(z)
            else:
                y = tf.clip_by_value(z, tf.zeros((), z.dtype), tf.cast(upper, z.dtype))

            def grad(g):
                with tf.name_scope(RULE_SCOPE):  # built later, with the backward: name it too
                    g = tf.nn.relu(g)
                    if rule == "guided":
                        inside = z > 0 if upper is None else tf.logical_and(z > 0, z < tf.cast(upper, z.dtype))
                        g = tf.where(inside, g, tf.zeros_like(g))
                    return g

            return y, grad

        return relu(z)


def _relu_functions(tf, keras):
    plain = (keras.activations.relu, keras.ops.relu, tf.nn.relu)
    six = (keras.activations.relu6, keras.ops.relu6, tf.nn.relu6)
    return plain, six


def _activation_upper(fn, tf, keras):
    """(True, upper) when ``fn`` is a ReLU activation function, else (False, None)."""
    plain, six = _relu_functions(tf, keras)
    if any(fn is f for f in plain):
        return True, None
    if any(fn is f for f in six):
        return True, 6.0
    return False, None


def relu_site(layer, tf, keras):
    """How a layer holds a ReLU: ``("relu", upper)`` when the layer is one (apply the rule to
    its input), ``("fused", upper)`` when it has a ReLU ``activation`` attribute, else None."""
    if isinstance(layer, keras.layers.ReLU):
        if layer.negative_slope == 0 and layer.threshold == 0:
            return "relu", None if layer.max_value is None else float(layer.max_value)
        return None
    if isinstance(layer, keras.layers.Activation):
        is_relu, upper = _activation_upper(layer.activation, tf, keras)
        return ("relu", upper) if is_relu else None
    kind = type(layer).__name__
    if kind in ("Relu", "Relu6") and type(layer).__module__.startswith("keras.") and not isinstance(layer, keras.layers.Layer):
        return "relu", (6.0 if kind == "Relu6" else None)  # keras.ops.relu in a functional graph
    activation = vars(layer).get("activation")
    if activation is not None:
        is_relu, upper = _activation_upper(activation, tf, keras)
        if is_relu:
            return "fused", upper
    return None


def softmax_site(layer, keras):
    """How a layer ends in a softmax over its last axis: ``"fused"`` (its ``activation``
    attribute), ``"layer"`` (the layer is one: its input is the scores), else None."""
    softmaxes = (keras.activations.softmax, keras.activations.log_softmax)
    if isinstance(layer, keras.layers.Softmax):
        return "layer" if layer.axis in (-1, [-1], (-1,)) else None
    if isinstance(layer, keras.layers.Activation):
        return "layer" if any(layer.activation is f for f in softmaxes) else None
    if type(layer).__name__ in ("Softmax", "LogSoftmax") and type(layer).__module__.startswith("keras."):
        axis = getattr(layer, "axis", -1)  # keras.ops.softmax in a functional graph
        return "layer" if axis in (-1, None, (-1,)) and not isinstance(layer, keras.layers.Layer) else None
    activation = vars(layer).get("activation")
    if activation is not None and any(activation is f for f in softmaxes) and _applies_activation_last(layer, keras):
        return "fused"
    return None


def _applies_activation_last(layer, keras):
    """Keras's own Dense and conv layers, whose ``call`` ends in ``self.activation``."""
    L = keras.layers
    known = (L.Dense, L.EinsumDense, L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose, L.Conv2DTranspose,
             L.Conv3DTranspose, L.DepthwiseConv1D, L.DepthwiseConv2D, L.SeparableConv1D, L.SeparableConv2D)
    return isinstance(layer, known) and type(layer).call.__module__.startswith("keras.")


def functional_graph(layer, keras):
    """The node graph that runs ``layer`` (a functional model or built Sequential), else None."""
    if isinstance(layer, keras.Sequential):
        return getattr(layer, "_functional", None)
    if hasattr(layer, "_run_through_graph") and hasattr(layer, "_nodes_by_depth"):
        return layer
    return None


def is_user_composite(layer, keras):
    """True for a subclassed model or layer: its own ``call`` and at least one sub-layer."""
    if not isinstance(layer, keras.layers.Layer) or not getattr(layer, "_layers", None):
        return False
    return not type(layer).call.__module__.startswith("keras.")


def _bare_twin(layer, replace: dict):
    """A new instance of ``type(layer)`` sharing its ``__dict__`` except the ``replace`` entries.

    ``__init__`` and ``__setattr__`` are bypassed, so Keras's tracking never sees the twin.
    """
    twin = object.__new__(type(layer))
    state = dict(vars(layer))
    state.update(replace)
    for key, fresh in (("_losses", list), ("_loss_ids", set)):  # add_loss must not reach the user's layer
        if key in state:
            state[key] = fresh()
    object.__setattr__(twin, "__dict__", state)
    return twin


class _LayerProxy:
    """Stands for a sub-layer inside a twin: calls go through the run, the rest to the layer."""

    __slots__ = ("_run", "_layer", "_prefix")

    def __init__(self, run, layer, prefix):
        object.__setattr__(self, "_run", run)
        object.__setattr__(self, "_layer", layer)
        object.__setattr__(self, "_prefix", prefix)

    def __call__(self, *args, **kwargs):
        return self._run.call(self._layer, self._prefix, args, kwargs)

    def __getattr__(self, name):
        return getattr(self._layer, name)

    @property
    def __class__(self):  # isinstance(proxy, Conv2D) holds, as for the layer
        return type(self._layer)


class LayerRun:
    """Run a Keras model once, recording layer outputs and applying a ReLU ``rule``.

    ``store`` maps names to output tensors (every layer with a single tensor output);
    with ``probe=True``, ``records`` lists ``(name, layer, in_shape, out_shape, inputs)``
    in execution order, shapes as the framework has them (without the batch axis).
    """

    def __init__(self, tf, keras, rule: str = "standard", probe: bool = False, scores: bool = False):
        self.tf, self.keras, self.rule, self.keep_scores = tf, keras, rule, scores
        self.store = {}
        self.records = [] if probe else None
        self._calls = {}
        self._producer = {}
        self._before_softmax = {}  # id(softmax output) -> (output, scores, layer name)
        self._pending = None

    def scores(self, out):
        """(the scores before ``out``'s softmax, the softmax layer's name) when ``out`` is the
        output of a softmax this run saw, else (``out``, None)."""
        entry = self._before_softmax.get(id(out)) if self.tf.is_tensor(out) else None
        if entry is None or entry[0] is not out:
            return out, None
        return entry[1], entry[2]

    def run(self, model, x, input_name: str):
        """Call ``model`` on ``x``; ``x`` is recorded as ``input_name``."""
        self.store[input_name] = x
        self._producer[id(x)] = input_name
        return self.call(model, None, (x,), {})

    # ----------------------------------------------------------------- dispatch
    def call(self, layer, prefix, args, kwargs):
        """Call one layer (``prefix`` None for the top model) and record its output."""
        name = None
        if prefix is not None:
            base = prefix + layer.name
            count = self._calls[base] = self._calls.get(base, 0) + 1
            name = base if count == 1 else f"{base}#{count}"
        inner = "" if name is None else name + "/"
        if getattr(layer, "_call_has_training_arg", False) and kwargs.get("training") is None:
            kwargs = {**kwargs, "training": False}
        graph = functional_graph(layer, self.keras)
        if graph is not None:
            out = self._run_graph(graph, args, kwargs, inner)
        elif isinstance(layer, self.keras.Sequential):  # unbuilt Sequential: a chain of layers
            out = args[0] if args else kwargs["inputs"]
            for sub in layer.layers:
                out = self.call(sub, inner, (out,), {})
        elif is_user_composite(layer, self.keras):
            out = self._run_twin(layer, args, kwargs, inner)
        else:
            out = self._run_leaf(layer, args, kwargs)
            if self._pending is not None:
                if self.tf.is_tensor(out):
                    self._before_softmax[id(out)] = (out, self._pending, name or layer.name)
                self._pending = None
        if name is not None:
            self._record(name, layer, args, kwargs, out)
        return out

    def _run_graph(self, graph, args, kwargs, prefix):
        inputs = args[0] if args else kwargs["inputs"]
        if hasattr(graph, "_standardize_inputs"):
            inputs = graph._standardize_inputs(inputs)
        operation_fn = lambda op: functools.partial(self._call_node, op, prefix)  # noqa: E731
        out = graph._run_through_graph(inputs, operation_fn=operation_fn)
        if isinstance(out, (list, tuple)) and len(out) == 1:  # as Functional.call: unpack_singleton
            out = out[0]
        return out

    def _call_node(self, op, prefix, *args, **kwargs):
        return self.call(op, prefix, args, kwargs)

    def _proxied(self, value, prefix):
        if isinstance(value, self.keras.Operation):
            return _LayerProxy(self, value, prefix)
        if isinstance(value, (list, tuple)):
            items = [self._proxied(v, prefix) for v in value]
            return tuple(items) if isinstance(value, tuple) else items
        if isinstance(value, dict):
            return {k: self._proxied(v, prefix) for k, v in value.items()}
        return value

    def _run_twin(self, layer, args, kwargs, prefix):
        replace = {k: self._proxied(v, prefix) for k, v in vars(layer).items()
                   if isinstance(v, (self.keras.Operation, list, tuple, dict))}
        site = relu_site(layer, self.tf, self.keras) if self.rule != "standard" else None
        if site is not None and site[0] == "fused":
            replace["activation"] = self._rule_fn(site[1])
        return type(layer).call(_bare_twin(layer, replace), *args, **kwargs)

    def _rule_fn(self, upper):
        return lambda z: rule_relu(self.tf, z, self.rule, upper)

    def _run_leaf(self, layer, args, kwargs):
        if self.rule != "standard":
            site = relu_site(layer, self.tf, self.keras)
            if site is not None and site[0] == "relu":
                return self._rule_fn(site[1])(args[0] if args else kwargs["inputs"])
            if site is not None:  # fused: the layer's own call with the rule's ReLU as activation
                twin = _bare_twin(layer, {"activation": self._rule_fn(site[1])})
                return type(layer).call(twin, *args, **kwargs)
        if self.keep_scores:
            site = softmax_site(layer, self.keras)
            if site == "fused":  # the layer's own call without the softmax, then the softmax
                z = type(layer).call(_bare_twin(layer, {"activation": self.keras.activations.linear}), *args, **kwargs)
                self._pending = z
                return layer.activation(z)
            if site == "layer":
                self._pending = args[0] if args else kwargs["inputs"]
        return layer(*args, **kwargs)

    # ----------------------------------------------------------------- recording
    def _record(self, name, layer, args, kwargs, out):
        if self.tf.is_tensor(out):
            self.store[name] = out
        if self.records is not None:
            flat = [t for t in self.keras.tree.flatten((args, kwargs)) if self.tf.is_tensor(t)]
            inputs = tuple(dict.fromkeys(self._producer[id(t)] for t in flat if id(t) in self._producer))
            in_shape = tuple(flat[0].shape[1:]) if flat else None
            out_shape = tuple(out.shape[1:]) if self.tf.is_tensor(out) else None
            self.records.append((name, layer, in_shape, out_shape, inputs))
        if self.tf.is_tensor(out):  # only stored tensors: their ids cannot be reused meanwhile
            self._producer[id(out)] = name
