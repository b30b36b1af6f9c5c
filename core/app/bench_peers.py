"""Peer implementations for :mod:`convscope.app.bench`: what a user would run without convscope.

- torch: Captum (``Saliency``, ``GuidedBackprop``, ``IntegratedGradients``, ``Occlusion``,
  ``LayerGradCam`` + ``LayerAttribution.interpolate``) on a copy of the module whose ReLUs are
  made out-of-place (Captum's ReLU hooks need that; the user's module is not touched).
- TensorFlow: tf-keras-vis when it imports (``Saliency``, ``Gradcam``); where it has no such
  method, or is missing, a bare eager ``tf.GradientTape`` implementation as one writes it by
  hand. tf-keras-vis's ``GuidedBackpropagation`` modifier only replaces ``activation=``
  attributes, not ReLU layers, so on a model with ReLU layers it would silently return the
  plain gradient: the guided row gets no TensorFlow peer.

Each peer returns NumPy arrays, as convscope does. Peers are built outside the timed calls
(model copies, sub-models); each entry is ``method -> (peer name, zero-argument callable)``.
"""
from __future__ import annotations

import numpy as np

__all__ = ["captum_peers", "captum_ready", "keras_peers", "occluded_batches"]


def occluded_batches(x, window, stride, per_eval):
    """The images occlusion evaluates, in backend calls of ``len(x) * per_eval`` images, the
    clean images riding in the first call: the floor's input for occlusion."""
    from .._imageops import fill_images
    from ..attribution.occlusion import window_positions

    n, _, h, w = x.shape
    filled = fill_images(x, "mean", "bench", sigma=1.0)
    images = []
    for y, c in window_positions((h, w), window, stride):
        for i in range(n):
            img = x[i].copy()
            img[:, y:y + window[0], c:c + window[1]] = filled[i, :, y:y + window[0], c:c + window[1]]
            images.append(img)
    images = np.stack(images)
    per_call = n * per_eval
    batches = [images[s:s + per_call] for s in range(0, len(images), per_call)]
    batches[0] = np.concatenate([batches[0], x])
    return batches


def captum_ready(module):
    """A copy of ``module`` in eval mode whose ReLUs are out-of-place, as Captum's ReLU hooks
    need (the weights are the same; ``module`` is not touched)."""
    import copy

    import torch

    model = copy.deepcopy(module).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    return model


def captum_peers(module, x, target, *, layer, steps, window, stride, per_eval) -> dict:
    """Captum's version of each method on a copy of ``module``; {} when Captum is missing."""
    try:
        import captum
        from captum import attr
    except ImportError:
        return {}
    import torch

    model = captum_ready(module)
    xt, tt = torch.from_numpy(x), torch.as_tensor(np.asarray(target))
    c, size = x.shape[1], tuple(x.shape[2:])
    name = f"Captum {captum.__version__}"
    peers = {
        "saliency": lambda: attr.Saliency(model).attribute(xt.clone().requires_grad_(), target=tt).numpy(),
        "guided_backprop": lambda: attr.GuidedBackprop(model).attribute(
            xt.clone().requires_grad_(), target=tt).detach().numpy(),
        # with the convergence delta, which convscope always reports (one forward of the end points)
        "integrated_gradients": lambda: attr.IntegratedGradients(model).attribute(
            xt, target=tt, n_steps=steps, method="riemann_middle", internal_batch_size=len(x) * steps,
            return_convergence_delta=True)[0].detach().numpy(),
        "occlusion": lambda: attr.Occlusion(model).attribute(
            xt, sliding_window_shapes=(c, *window), strides=(c, *stride), baselines=xt.mean(dim=(2, 3), keepdim=True),
            target=tt, perturbations_per_eval=per_eval).numpy(),
    }
    named = dict(model.named_modules())
    if layer in named:
        peers["grad_cam"] = lambda: attr.LayerAttribution.interpolate(
            attr.LayerGradCam(model, named[layer]).attribute(xt, target=tt, relu_attributions=True),
            size, "bilinear").detach().numpy()
    return {method: (name, _quiet(fn)) for method, fn in peers.items()}


def _quiet(fn):
    """``fn`` with warnings silenced (Captum warns on every call that sets ReLU hooks)."""
    import warnings

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    return call


def _tape_peers(tf, model, x, target, *, layer, steps, window, stride, per_eval, x_nchw, to_native):
    """Bare eager GradientTape code, as written by hand."""
    from .bench_floors import packed

    pack = packed(model)
    onehot = tf.one_hot(np.asarray(target), int(model.outputs[0].shape[-1]))

    def tape_gradient(images):
        images = tf.convert_to_tensor(images)
        with tf.GradientTape() as tape:
            tape.watch(images)
            score = tf.reduce_sum(model(pack(images), training=False) * tf.tile(onehot, [len(images) // len(x), 1]))
        return tape.gradient(score, images)

    def integrated_gradients():
        alphas = (np.arange(steps, dtype=np.float32) + 0.5) / steps
        path = np.concatenate([a * x for a in alphas])  # black baseline, sample-minor
        g = tape_gradient(path).numpy().reshape(steps, *x.shape).mean(axis=0)
        model(pack(np.concatenate([x, np.zeros_like(x)])), training=False)  # the end points, for the delta
        return x * g

    batches = [to_native(b) for b in occluded_batches(x_nchw, window, stride, per_eval)]

    def occlusion():  # the scores of every occluded image; the bookkeeping is left out
        return [model(pack(b), training=False).numpy() for b in batches]

    peers = {"saliency": lambda: np.abs(tape_gradient(x).numpy()).max(axis=-1),
             "integrated_gradients": integrated_gradients, "occlusion": occlusion}
    try:
        import keras

        sub = keras.Model(model.inputs, [model.get_layer(layer).output, model.outputs[0]])
    except (ValueError, AttributeError, TypeError):
        sub = None
    if sub is not None:
        def grad_cam():
            with tf.GradientTape() as tape:
                acts, out = sub(packed(sub)(x), training=False)
                score = tf.reduce_sum(out * onehot)
            g = tape.gradient(score, acts)
            cam = tf.nn.relu(tf.reduce_sum(acts * tf.reduce_mean(g, axis=(1, 2), keepdims=True), axis=-1))
            return tf.image.resize(cam[..., None], x.shape[1:3]).numpy()
        peers["grad_cam"] = grad_cam
    return {method: ("eager GradientTape", fn) for method, fn in peers.items()}


def keras_peers(model, x, target, *, layer, steps, window, stride, per_eval, x_nchw, to_native) -> dict:
    """tf-keras-vis where it has the method, else bare eager GradientTape code. ``x`` is in the
    model's layout (NHWC), ``x_nchw`` the same images for building occluded copies."""
    import tensorflow as tf

    peers = _tape_peers(tf, model, x, target, layer=layer, steps=steps, window=window, stride=stride,
                        per_eval=per_eval, x_nchw=x_nchw, to_native=to_native)
    try:
        import tf_keras_vis
        from tf_keras_vis.gradcam import Gradcam
        from tf_keras_vis.saliency import Saliency
        from tf_keras_vis.utils.scores import CategoricalScore
    except ImportError:
        return peers
    name = f"tf-keras-vis {tf_keras_vis.__version__}"
    score = CategoricalScore([int(t) for t in np.asarray(target)])
    saliency, gradcam = Saliency(model, clone=False), Gradcam(model, clone=False)
    peers["saliency"] = (name, lambda: saliency(score, x, normalize_map=False))
    peers["grad_cam"] = (name, lambda: gradcam(score, x, penultimate_layer=layer, seek_penultimate_conv_layer=False,
                                               normalize_cam=False))
    return peers
