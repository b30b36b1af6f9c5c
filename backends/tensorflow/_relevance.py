"""LRP and DeepLift on the Keras backend: the rule sets of :mod:`convscope._relevance`.

:class:`RelevanceRun` is the backend's layer-by-layer pass (:class:`._run.LayerRun`) with every
leaf layer given its backward rule. The forward values are the layer's own; each output is
passed through an identity whose ``tf.custom_gradient`` is the rule (the plain path into it
is cut with ``stop_gradient``), so one call stays one forward and one modified backward pass
of the ordinary ``GradientTape``, traced once per rule set. What each layer gets:

* ``Conv1D/2D/3D``, ``Conv2DTranspose``, ``DepthwiseConv2D``, ``Dense``, ``SeparableConv2D``
  (as its parts, depthwise then pointwise with the bias, each with the layer's rule): its rule
  (the layer's own, else ``default``) on its linear part, run as the layer's own ``call`` with the weights
  replaced; a fused ``activation=`` is split off and passes. A ``BatchNormalization`` that is
  the only consumer of such a layer's output is merged into it when ``canonize``
  (W' = W gamma / sigma, b' = (b - mu) gamma / sigma + beta) and then passes; any other gets
  the epsilon rule with ``sum_stabilizer`` (as torch's), or a rule named for it, on its affine map;
* average pools, global or not: Zennit's Norm (``sum_stabilizer``); max pools: the gradient
  (winner takes all);
* ``Add`` layers and ``+`` nodes of two data tensors: R_i = x_i R / sum_j x_j (Norm);
* concatenation, flatten, reshape, permute, padding, cropping, upsampling, resizing, dropout:
  the plain gradient (relevance routed); a ``ZeroPadding2D`` right before a conv is taken as
  that conv's padding by the rules that put an input of their own (flat, wsquare, z^B: no ones
  or bounds on the padded zeros), so a torch conv with ``padding=1`` and its Keras port (padding
  layer and ``'valid'`` conv) get the same relevance;
* activations (ReLU and kin, sigmoid, ...), ``Rescaling``, ``Normalization`` and elementwise
  ops of one data tensor with constants: relevance passes;
* anything else raises ``ValueError`` naming the layer and its operator, when the backward
  pass reaches it (a final softmax left out of the scores is never reached).

DeepLift (:class:`DeepLiftRules`) runs the images and their baselines as one batch of 2N;
every elementwise activation takes the rescale multiplier and max pools Captum's rule
(:mod:`._lrp_rules`); linear layers keep their gradient. Seeds are put on both halves, as
Captum's ``DeepLift`` does, and the multipliers of the image half are returned.
"""
from __future__ import annotations

import weakref

import numpy as np

from convscope._relevance import DeepLiftRules, Rule
from convscope._validate import param_error
from convscope.backend import INPUT, OUTPUT

from ._lrp_rules import (bn_affine, bn_axis, conv_channels_last, linear_relevance, maxpool_multiplier, merged,
                         norm_relevance, rescale_multiplier, sum_of)
from ._model import pick_output
from ._run import LayerRun, _bare_twin, softmax_site

__all__ = ["RelevanceRun", "relevance_gradient"]

#: keras.ops nodes of a functional graph, by class name
_OP_ROUTES = {"Reshape", "Concatenate", "Transpose", "ExpandDims", "Squeeze", "GetItem", "Pad", "Flatten"}
_OP_ACTIVATIONS = {"Relu", "Relu6", "Sigmoid", "HardSigmoid", "Tanh", "Gelu", "Silu", "HardSilu", "Elu",
                   "LeakyRelu", "Softplus", "Selu", "Swish", "Mish"}
_OP_ELEMENTWISE = {"Add", "Subtract", "Multiply", "Divide", "TrueDivide"}
#: graph operators that may stand between two layers (Keras's own input handling)
_BENIGN = {"Identity", "Cast", "Placeholder", "IdentityN"}


def _types(keras):
    L = keras.layers
    return dict(
        linear=(L.Conv1D, L.Conv2D, L.Conv3D, L.Conv2DTranspose, L.DepthwiseConv2D, L.SeparableConv2D, L.Dense),
        avgpool=(L.AveragePooling1D, L.AveragePooling2D, L.AveragePooling3D, L.GlobalAveragePooling1D,
                 L.GlobalAveragePooling2D, L.GlobalAveragePooling3D),
        maxpool=(L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D,
                 L.GlobalMaxPooling3D),
        route=(L.Concatenate, L.Flatten, L.Reshape, L.Permute, L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
               L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
               L.Resizing, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.SpatialDropout3D,
               L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.Identity, L.InputLayer),
        activation=(L.ReLU, L.LeakyReLU, L.PReLU, L.ELU),
        affine=(L.Rescaling, L.Normalization),
    )


def _elementwise(fn, keras):
    """True for an activation function that acts on each value alone (not softmax)."""
    return fn is not None and not any(fn is f for f in (keras.activations.softmax, keras.activations.log_softmax))


class RelevanceRun(LayerRun):
    """A :class:`LayerRun` whose backward pass carries relevance (``RelevanceRules``) or
    DeepLift multipliers (``DeepLiftRules``) instead of gradients."""

    def __init__(self, tf, keras, rules, scores=False):
        super().__init__(tf, keras, "standard", scores=scores)
        self.rules, self.deeplift = rules, isinstance(rules, DeepLiftRules)
        self.kinds = _types(keras)
        self._prefix = None
        self._made = {}    # id -> tensor: what the walked layers produced (and the input)
        self._linear = {}  # id(linear output) -> its record, for BatchNorm merging
        self._padded = {}  # id(ZeroPadding output) -> its support (1 on data, 0 on padding)

    def run(self, model, x, input_name):
        self._made[id(x)] = x
        return super().run(model, x, input_name)

    def call(self, layer, prefix, args, kwargs):
        self._prefix = prefix
        return super().call(layer, prefix, args, kwargs)

    def _leaf_name(self, layer):
        if self._prefix is None:
            return layer.name
        base = self._prefix + layer.name
        count = self._calls.get(base, 1)
        return base if count == 1 else f"{base}#{count}"

    # ----------------------------------------------------------------- the leaves
    def _run_leaf(self, layer, args, kwargs):
        tf = self.tf
        name = self._leaf_name(layer)
        inputs = [t for t in self.keras.tree.flatten((args, kwargs)) if tf.is_tensor(t)]
        self._check_inputs(name, layer, inputs)
        out = self._leaf(name, layer, args, kwargs, inputs)
        for t in self.keras.tree.flatten(out):
            if tf.is_tensor(t):
                self._made[id(t)] = t
        return out

    def _check_inputs(self, name, layer, inputs):
        for t in inputs:
            record = self._linear.get(id(t))
            if record is not None:
                record["consumers"] += 1
            if id(t) in self._made or not hasattr(t, "op"):  # eager tensors do not say where they come from
                continue
            if t.op.type not in _BENIGN:
                raise ValueError(f"The input of layer {name!r} ({type(layer).__name__}) is made by the operator "
                                 f"{t.op.type!r} ({t.op.name}), which runs outside the layers convscope walks (a "
                                 "raw op in a subclassed model's call); it has no LRP or DeepLift rule.")

    def _leaf(self, name, layer, args, kwargs, inputs):
        K, kinds = self.keras, self.kinds
        call = lambda: layer(*args, **kwargs)  # noqa: E731 - the layer's own forward value
        if isinstance(layer, kinds["linear"]):
            return self._linear_layer(name, layer, inputs[0])
        if isinstance(layer, K.layers.BatchNormalization):
            return self._batchnorm(name, layer, inputs[0], call())
        if isinstance(layer, kinds["avgpool"]):
            return call() if self.deeplift else self._norm(layer, inputs, call(), lambda u: type(layer).call(layer, u))
        if isinstance(layer, kinds["maxpool"]):
            if not self.deeplift:
                return call()
            return self._multiplier(inputs[0], call(), lambda u: type(layer).call(layer, u), maxpool_multiplier)
        if isinstance(layer, K.layers.Add) or (type(layer).__name__ == "Add" and not isinstance(layer, K.layers.Layer)
                                               and len(inputs) > 1):
            return call() if self.deeplift else self._norm(layer, inputs, call(), sum_of)
        if isinstance(layer, (K.layers.ZeroPadding1D, K.layers.ZeroPadding2D, K.layers.ZeroPadding3D)):
            out = call()  # routed; a conv right after it sees its zeros as its own padding
            self._padded[id(out)] = lambda: type(layer).call(layer, self.tf.ones_like(inputs[0]))
            return out
        if isinstance(layer, kinds["route"]) or self._op_kind(layer) == "route":
            return call()
        fn = self._activation_of(layer)
        if fn is not None:
            if self.keep_scores and softmax_site(layer, K) == "layer":
                self._pending = inputs[0]
            return self._activation(name, layer, inputs[0], call(), fn)
        if isinstance(layer, kinds["affine"]) or (self._op_kind(layer) == "elementwise" and len(inputs) == 1):
            return call() if self.deeplift else self._pass(inputs[0], call())
        if self.keep_scores and softmax_site(layer, K) == "layer":
            self._pending = inputs[0]
        return self._unsupported(name, layer, inputs, call())

    def _op_kind(self, layer):
        if isinstance(layer, self.keras.layers.Layer) or not type(layer).__module__.startswith("keras."):
            return None
        kind = type(layer).__name__
        return ("route" if kind in _OP_ROUTES else "activation" if kind in _OP_ACTIVATIONS
                else "elementwise" if kind in _OP_ELEMENTWISE else None)

    def _activation_of(self, layer):
        """The elementwise function a layer applies (an activation layer or op), else None."""
        K = self.keras
        if isinstance(layer, self.kinds["activation"]) or self._op_kind(layer) == "activation":
            return lambda u: type(layer).call(layer, u)
        if isinstance(layer, K.layers.Activation) and _elementwise(layer.activation, K):
            return layer.activation
        return None

    # ----------------------------------------------------------------- rules
    def _tag(self, inputs, value, backward):
        """``value``, whose backward is ``backward(R) -> [relevance of each input]``."""
        tf = self.tf

        @tf.custom_gradient
        def tag(*args):
            def grad(R):
                return [*backward(R), None]
            return tf.identity(args[-1]), grad
        return tag(*inputs, tf.stop_gradient(value))

    def _pass(self, x, y):
        return self._tag([x], y, lambda R: [R])

    def _norm(self, layer, inputs, y, fn):
        tf, eps = self.tf, self.rules.sum_stabilizer
        return self._tag(inputs, y, lambda R: norm_relevance(tf, fn, inputs, R, y, eps))

    def _multiplier(self, u, y, fn, rule):
        tf, eps = self.tf, self.rules.eps
        return self._tag([u], y, lambda g: [rule(tf, fn, u, y, g, eps)])

    def _activation(self, name, layer, u, y, fn):
        if self.deeplift:
            return self._multiplier(u, y, fn, rescale_multiplier)
        return self._pass(u, y)

    def _unsupported(self, name, layer, inputs, y, op=None):
        op = op or type(layer).__name__
        if isinstance(layer, self.keras.layers.Activation):
            op = f"Activation({getattr(layer.activation, '__name__', layer.activation)!r})"

        def backward(R):
            method = "DeepLift" if self.deeplift else "LRP"
            raise ValueError(f"Layer {name!r} ({op}) is on the relevance path and has no {method} rule. Rules exist "
                             "for conv, dense, BatchNormalization, pooling, Add, Concatenate, reshapes, padding, "
                             "cropping, upsampling, dropout and elementwise activations.")
        return self._tag(inputs, y, backward) if inputs else y

    def _linear_layer(self, name, layer, x):
        K = self.keras
        if isinstance(layer, K.layers.SeparableConv2D):  # its parts: depthwise, then pointwise with the bias
            return self._separable(name, layer, x)
        key = "_kernel" if "_kernel" in vars(layer) else "kernel"
        W = K.ops.convert_to_tensor(vars(layer)[key])
        b = K.ops.convert_to_tensor(layer.bias) if getattr(layer, "use_bias", False) and layer.bias is not None else None

        def lin(a, w, bias):
            twin = _bare_twin(layer, {key: w, "bias": bias, "use_bias": bias is not None, "activation": None})
            return type(layer).call(twin, a)
        return self._activate(name, layer, self._ruled(name, layer, x, lin, W, b))

    def _separable(self, name, layer, x):
        ops = self.keras.ops
        first = layer.data_format == "channels_first"

        def depthwise(a, w, bias):
            return ops.depthwise_conv(a, w, strides=layer.strides, padding=layer.padding,
                                      data_format=layer.data_format, dilation_rate=layer.dilation_rate)

        def pointwise(h, w, bias):
            out = ops.conv(h, w, strides=1, padding="valid", data_format=layer.data_format)
            if bias is None:
                return out
            return out + ops.reshape(bias, (1, -1, 1, 1) if first else (1, 1, 1, -1))
        b = ops.convert_to_tensor(layer.bias) if layer.use_bias else None
        h = self._ruled(name, layer, x, depthwise, ops.convert_to_tensor(layer.depthwise_kernel), None, merge=False)
        return self._activate(name, layer, self._ruled(name, layer, h, pointwise,
                                                       ops.convert_to_tensor(layer.pointwise_kernel), b))

    def _ruled(self, name, layer, x, lin, W, b, merge=True):
        """``lin(x, W, b)`` whose backward is the layer's LRP rule (DeepLift: its plain gradient)."""
        tf = self.tf
        z = lin(x, W, b)
        if self.deeplift:
            return z
        last = getattr(layer, "data_format", "channels_last") != "channels_first"
        support = self._padded.get(id(x))
        record = {"layer": layer, "bn": None, "consumers": 0}

        def backward(R):
            rule = self.rules.rule_for(name)
            if rule is None:
                raise ValueError(f"No LRP rule for layer {name!r} ({type(layer).__name__}): the rule set has no "
                                 "rule for it and no default.")
            w, bias, known = W, b, z
            if record["bn"] is not None and record["consumers"] == 1:
                (w, bias), known = merged(tf, layer, W, b, *record["bn"], self.keras), None
            return [linear_relevance(tf, rule, lin, x, R, w, bias, z=known, channels_last=last,
                                     support=support and support())]
        z = self._tag([x], z, backward)
        activation = vars(layer).get("activation")
        if merge and (activation is None or activation is self.keras.activations.linear):
            self._linear[id(z)] = record
        return z

    def _activate(self, name, layer, z):
        """The layer's fused activation on its linear part ``z`` (split off: it passes)."""
        K = self.keras
        activation = vars(layer).get("activation")
        if activation is None or activation is K.activations.linear:
            return z
        if self.keep_scores and softmax_site(layer, K) == "fused":
            self._pending = z
            return activation(z)
        if not _elementwise(activation, K):
            op = f"{type(layer).__name__}(activation={getattr(activation, '__name__', activation)!r})"
            return self._unsupported(name, layer, [z], activation(z), op)
        return self._activation(name, layer, z, activation(z), activation)

    def _batchnorm(self, name, layer, x, y):
        if self.deeplift:
            return y
        tf = self.tf
        scale, shift = bn_affine(tf, layer, x)
        record = self._linear.get(id(x))
        channel_axis = -1 if conv_channels_last(layer, record) else 1
        mergeable = self.rules.canonize and record is not None and bn_axis(layer, x) == channel_axis % len(x.shape)
        if mergeable:
            record["bn"] = (scale, shift)

        def backward(R):
            if mergeable and record["consumers"] == 1:
                return [R]  # merged into the layer before it
            rule = dict(self.rules.layers).get(name) or Rule("epsilon", epsilon=self.rules.sum_stabilizer)
            shape = [1] * len(x.shape)
            shape[bn_axis(layer, x)] = -1
            s, t = tf.reshape(scale, shape), tf.reshape(shift, shape)
            return [linear_relevance(tf, rule, lambda a, w, bias: a * w + (0.0 if bias is None else bias),
                                     x, R, s, t, z=y)]
        return self._tag([x], y, backward)


# ----------------------------------------------------------------- the backend's entry
def _runner(backend, rules):
    """``run(x) -> {name: tensor}`` for ``rules``, holding the model weakly (as the backend's own)."""
    tf, keras, model = backend._tf, backend._keras, weakref.ref(backend.model)
    select, names, scores = backend.select, backend._output_names, backend.output == "scores"
    kept = rules if not isinstance(rules, DeepLiftRules) else DeepLiftRules(np.zeros(0, np.float32), rules.eps)

    def run(x):
        layer_run = RelevanceRun(tf, keras, kept, scores=scores)
        out = layer_run.run(model(), x, INPUT)
        layer_run.store[OUTPUT] = layer_run.scores(pick_output(out, select, names))[0]
        return layer_run.store
    return run


def _body(tf, run, seed_names, wrt, acts, deeplift):
    def missing(store, names):
        absent = [n for n in names if n not in store]
        if absent:
            raise ValueError(f"Layers {absent} did not run in the forward pass; they cannot be seeded or explained.")
        return [store[n] for n in names]

    def gradient(x, *inputs):
        seeds = list(inputs[1:] if deeplift else inputs)
        n = tf.shape(x)[0]
        if deeplift:
            x = tf.concat([x, inputs[0]], 0)
            seeds = [tf.concat([s, s], 0) for s in seeds]
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(x)
            store = run(x)
        targets, sources = missing(store, seed_names), missing(store, wrt)
        grads = tape.gradient(targets, sources, seeds, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        first = (lambda t: t[:n]) if deeplift else (lambda t: t)
        return first(store[OUTPUT]), [first(store[a]) for a in acts], [first(g) for g in grads]
    return gradient


def relevance_gradient(backend, x, seeds, wrt, at, rules):
    """The Keras backend's ``_gradient`` for a rule set: relevance (LRP) or multipliers (DeepLift)."""
    if callable(seeds):
        raise param_error("seeds", "gradient", f"a mapping {{name: array}} with rule={type(rules).__name__}",
                          "a callable", TypeError)
    deeplift = isinstance(rules, DeepLiftRules)
    acts = list(dict.fromkeys([*at, *wrt]))
    traced = [n for n in acts if n not in (INPUT, OUTPUT)]
    names = list(seeds)
    arrays = [np.ascontiguousarray(seeds[n], dtype=np.float32) for n in names]
    ranks = tuple(a.ndim for a in arrays)
    key = ("relevance", ("deeplift", rules.eps) if deeplift else rules, tuple(names), ranks, tuple(wrt), tuple(acts))
    with backend._locked():
        fn = backend._function(key, _body(backend._tf, _runner(backend, rules), names, wrt, traced, deeplift),
                               seed_ranks=((x.ndim,) if deeplift else ()) + ranks)
        args = [backend._to_model(x)]
        if deeplift:
            args.append(backend._to_model(np.ascontiguousarray(rules.baseline, dtype=np.float32)))
        args += [backend._to_model(a) for a in arrays]
        return backend._result(fn(*args), x, wrt, acts)
