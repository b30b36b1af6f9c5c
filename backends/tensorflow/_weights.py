"""A clone of a Keras model with some weights replaced, for :meth:`KerasBackend.with_weights`.

``keras.models.clone_model`` builds new layers (new variables) from the model's config, the
user's weights are copied in with ``set_weights``, and the replaced variables are assigned
in Keras's own layout (the inverse of :func:`._layers.layer_weights`, which hands weights
out in torch's). The user's model is only read. A model that cannot be cloned (subclassed
without ``get_config``, custom layers Keras cannot rebuild) cannot run with other weights:
NotImplementedError, with what failed (assigning the user's own variables instead would
change the model under every other thread using it).
"""
from __future__ import annotations

import numpy as np

__all__ = ["clone_with_weights", "to_keras_layout"]

_RENAMES = {"kernel": "weight", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
            "moving_variance": "running_var", "depthwise_kernel": "weight"}


def _key(layer, name, keras):
    if isinstance(layer, keras.layers.SeparableConv2D) and name in ("depthwise_kernel", "pointwise_kernel"):
        return name.replace("_kernel", "_weight")
    return _RENAMES.get(name, name)


def to_keras_layout(layer, name, value, shape, keras):
    """``value`` in torch's layout (as layer_weights gives it) back in the variable's ``shape``."""
    if len(shape) == 4 and name == "depthwise_kernel":
        kh, kw, c, m = shape
        return value.reshape(c, m, kh, kw).transpose(2, 3, 0, 1)
    if len(shape) == 4 and name in ("kernel", "pointwise_kernel"):
        return value.transpose(2, 3, 1, 0)
    if len(shape) == 2 and name == "kernel" and isinstance(layer, keras.layers.Dense):
        return value.T
    return value


def clone_with_weights(keras, model):
    """A clone of ``model`` holding the same weights (new variables)."""
    try:
        twin = keras.models.clone_model(model)
        twin.set_weights(model.get_weights())
    except Exception as err:  # noqa: BLE001 - Keras raises many kinds here; say which
        raise NotImplementedError(f"with_weights could not clone the Keras model {model.name!r} "
                         f"({type(model).__name__}): keras.models.clone_model or set_weights failed with "
                         f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. A subclassed model "
                         "needs get_config/from_config, custom layers need to be registered "
                         "(keras.saving.register_keras_serializable).") from None
    return twin


def assign_weights(layers, weights, keras):
    """Assign ``weights`` ``{layer name: {key: array}}`` to the clone's ``layers`` ``{name: layer}``."""
    for name, params in weights.items():
        layer = layers[name]
        own = [*getattr(layer, "_trainable_variables", ()), *getattr(layer, "_non_trainable_variables", ())]
        for v in own:
            key = _key(layer, v.name, keras)
            if key in params:
                value = to_keras_layout(layer, v.name, np.asarray(params[key]), tuple(v.shape), keras)
                v.assign(np.asarray(value, dtype=v.dtype))
