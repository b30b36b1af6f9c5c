"""The floor of each framework for :mod:`convscope.app.bench`: the fastest way the framework itself
offers to compute what a method needs, written as a user would, without convscope.

- torch: the module called under ``inference_mode``, a forward hook that stops the pass once
  the asked layer has run, ``torch.autograd.grad`` for gradients at the input or a layer;
- TensorFlow/Keras: ``tf.function``-compiled calls (``GradientTape`` for gradients) with a
  ``None`` batch dimension in the input signature, on images in the model's own layout
  (NHWC), and sub-models ``keras.Model(model.inputs, layer.output)`` for layers;
- ONNX Runtime: a bare ``InferenceSession`` on the same file (one with the layer added to the
  graph outputs for activations). ONNX Runtime has no autograd: the gradient floor is the
  backend's own adjoint graph with constant seeds, one session call, which is the cheapest
  gradient ONNX Runtime can give.

Every floor returns NumPy arrays, as convscope does. Frameworks are imported inside the
classes only.
"""
from __future__ import annotations

import numpy as np

__all__ = ["floor_for", "TorchFloor", "KerasFloor", "OnnxFloor", "packed"]


def packed(model):
    """``f(x)`` that hands ``x`` to a Keras model in the structure of its inputs (a list of one
    for a model built on ``[Input]``), as Keras wants it without a warning."""
    struct = getattr(model, "_inputs_struct", None)
    return (lambda x: [x]) if isinstance(struct, (list, tuple)) and len(struct) == 1 else (lambda x: x)


class _Stop(Exception):
    """Raised by a floor's hook once the asked layer has run."""


class TorchFloor:
    """Raw torch calls on the user's module."""

    name = "torch"
    grad_label = "torch.autograd.grad"

    def __init__(self, module, threads=None):
        import torch

        self.torch, self.module = torch, module
        self.named = dict(module.named_modules())
        if threads:
            torch.set_num_threads(int(threads))

    def native(self, x):
        return self.torch.from_numpy(np.ascontiguousarray(x))

    def supports(self, name):
        """True when the floor can reach layer ``name`` (a module path)."""
        return name in self.named

    def forward(self, xt):
        with self.torch.inference_mode():
            return self.module(xt).numpy()

    def _hooked(self, name, store, stop):
        def hook(module, inputs, out):
            store["a"] = out
            if stop:
                raise _Stop
        return self.named[name].register_forward_hook(hook)

    def layer(self, xt, name):
        store = {}
        handle = self._hooked(name, store, stop=True)
        try:
            with self.torch.inference_mode():
                self.module(xt)
        except _Stop:
            pass
        finally:
            handle.remove()
        return store["a"].numpy()

    def input_grad(self, xt, seeds):
        torch = self.torch
        xg = xt.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self.module(xg)
            (g,) = torch.autograd.grad(out, xg, torch.from_numpy(seeds))
        return g.numpy()

    def layer_grad(self, xt, name, seeds):
        torch = self.torch
        store = {}
        handle = self._hooked(name, store, stop=False)
        try:
            with torch.enable_grad():
                out = self.module(xt)
                (g,) = torch.autograd.grad(out, store["a"], torch.from_numpy(seeds))
        finally:
            handle.remove()
        return store["a"].detach().numpy(), g.numpy()


class KerasFloor:
    """``tf.function``-compiled Keras calls, NHWC in, NumPy out."""

    name = "tensorflow"
    grad_label = "tf.function GradientTape"

    def __init__(self, model, threads=None):
        import keras
        import tensorflow as tf

        from ..backends.tensorflow._model import channels_last

        self.tf, self.keras, self.model = tf, keras, model
        self.last = channels_last(model, keras)
        shape = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else (None, None, None, None)
        self.spec = tf.TensorSpec((None, *shape[1:]), tf.float32)
        k = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
        self.seed_spec = tf.TensorSpec((None, k), tf.float32)
        self.pack = pack = packed(model)
        self._forward = tf.function(lambda x: model(pack(x), training=False), input_signature=[self.spec],
                                    autograph=False)

        def tape(x, s):
            with tf.GradientTape(watch_accessed_variables=False) as t:
                t.watch(x)
                y = model(pack(x), training=False)
            return t.gradient(y, x, s)

        self._grad = tf.function(tape, input_signature=[self.spec, self.seed_spec], autograph=False)
        self._layers, self._layer_grads, self._subs = {}, {}, {}

    def native(self, x):
        return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if self.last else np.ascontiguousarray(x)

    def supports(self, name):
        """True when a sub-model can end at layer ``name`` (a functional model's own layer)."""
        return self._sub(name) is not None

    def to_nchw(self, a):
        return a.transpose(0, 3, 1, 2) if self.last and a.ndim == 4 else a

    def forward(self, x):
        return self._forward(x).numpy()

    def _sub(self, name):
        """A sub-model (layer output, model output) of a functional model, or None; built once."""
        if name not in self._subs:
            try:
                layer = self.model.get_layer(name)
                self._subs[name] = self.keras.Model(self.model.inputs, [layer.output, self.model.outputs[0]])
            except (ValueError, AttributeError, TypeError):
                self._subs[name] = None
        return self._subs[name]

    def layer(self, x, name):
        if name not in self._layers:
            sub = self._sub(name)
            self._layers[name] = None if sub is None else self.tf.function(
                lambda x: sub(packed(sub)(x), training=False)[0], input_signature=[self.spec], autograph=False)
        fn = self._layers[name]
        return None if fn is None else fn(x).numpy()

    def input_grad(self, x, seeds):
        return self._grad(x, seeds).numpy()

    def layer_grad(self, x, name, seeds):
        tf = self.tf
        if name not in self._layer_grads:
            sub = self._sub(name)

            def tape(x, s):
                with tf.GradientTape(watch_accessed_variables=False) as t:
                    t.watch(x)  # records the pass, so that the layer's output is on the tape
                    acts, y = sub(packed(sub)(x), training=False)
                return acts, t.gradient(y, acts, s)

            self._layer_grads[name] = None if sub is None else tf.function(
                tape, input_signature=[self.spec, self.seed_spec], autograph=False)
        fn = self._layer_grads[name]
        if fn is None:
            return None
        acts, g = fn(x, seeds)
        return acts.numpy(), g.numpy()


class OnnxFloor:
    """Bare ONNX Runtime sessions on the model file; gradients through the backend's adjoint graph."""

    name = "onnxruntime"
    grad_label = "convscope's adjoint graph with constant seeds in one session call (ONNX Runtime has no autograd)"

    def __init__(self, source, backend, threads=None):
        import onnx
        import onnxruntime as ort

        self.onnx, self.ort, self.backend = onnx, ort, backend
        if isinstance(source, onnx.ModelProto):
            source = source.SerializeToString()
        self.proto = onnx.load_model_from_string(bytes(source)) if isinstance(source, (bytes, bytearray)) \
            else onnx.load(str(source))
        self.options = ort.SessionOptions()
        if threads:
            self.options.intra_op_num_threads = int(threads)
        self.session = self._session(self.proto)
        self.input = self.session.get_inputs()[0].name
        self._layers = {}

    def _session(self, proto):
        return self.ort.InferenceSession(proto.SerializeToString(), self.options, providers=["CPUExecutionProvider"])

    def native(self, x):
        return np.ascontiguousarray(x)

    def supports(self, name):
        """Every layer is a graph tensor, which a session can return."""
        return True

    def forward(self, x):
        return self.session.run(None, {self.input: x})[0]

    def layer(self, x, name):
        if name not in self._layers:
            onnx = self.onnx
            proto = onnx.ModelProto()
            proto.CopyFrom(self.proto)
            inferred = onnx.shape_inference.infer_shapes(proto)
            info = next((v for v in inferred.graph.value_info if v.name == name), None)
            del proto.graph.output[:]
            proto.graph.output.append(info if info is not None else onnx.helper.make_tensor_value_info(
                name, onnx.TensorProto.FLOAT, None))
            self._layers[name] = self._session(proto)
        return self._layers[name].run([name], {self.input: x})[0]

    def input_grad(self, x, seeds):
        return self.backend.gradient(x, {"output": seeds})["input"]

    def layer_grad(self, x, name, seeds):
        g = self.backend.gradient(x, {"output": seeds}, wrt=[name])
        return g.activations[name], g[name]


def floor_for(backend, source=None, threads=None):
    """The floor of ``backend``'s framework (``source``: what was loaded, for ONNX), or None."""
    kind = getattr(backend, "name", "")
    if kind == "torch":
        return TorchFloor(backend.module, threads)
    if kind == "tensorflow":
        return KerasFloor(backend.model, threads)
    if kind == "onnxruntime" and source is not None:
        return OnnxFloor(source, backend, threads)
    return None
