"""Keras ports of the torch LRP test nets (tests/lrp_nets.py), with the torch weights copied in.

:func:`port` builds the Keras functional model of a net and copies a torch module's weights
into it (NCHW torch layout -> NHWC Keras layers, as the demo model's port in
``convscope.data._build.export_keras`` does):

* conv weight (O, I, kh, kw) -> kernel (kh, kw, I, O); a torch conv with stride 2 and padding 1
  is a ``ZeroPadding2D(1)`` and a ``'valid'`` conv (TensorFlow's 'same' pads (0, 1) there);
* BatchNorm weight, bias, running_mean, running_var -> gamma, beta, moving_mean,
  moving_variance, epsilon 1e-5 as torch's;
* linear weight (K, C) -> kernel (C, K); the VGG-style net's first linear layer follows
  torch's flatten of (C, H, W), so its rows are reordered to Keras's (H, W, C) flatten.

Keras layer names are the torch module names with "." written "_" (``features.0`` ->
``features_0``), so per-layer rules carry over with :func:`keras_name`.
"""
import numpy as np

__all__ = ["port", "keras_name", "build_keras"]

EPS = 1e-5


def keras_name(torch_name):
    return torch_name.replace(".", "_")


def _vgg(keras, size):
    L = keras.layers
    x = inp = keras.Input((size, size, 3))
    x = L.Conv2D(8, 3, padding="same", name="features_0")(x)
    x = L.ReLU(name="features_1")(x)
    x = L.Conv2D(8, 3, padding="same", name="features_2")(x)
    x = L.ReLU(name="features_3")(x)
    x = L.MaxPooling2D(2, name="features_4")(x)
    x = L.Conv2D(16, 3, padding="same", name="features_5")(x)
    x = L.ReLU(name="features_6")(x)
    x = L.AveragePooling2D(2, name="features_7")(x)
    x = L.Conv2D(16, 3, padding="same", name="features_8")(x)
    x = L.ReLU(name="features_9")(x)
    x = L.AveragePooling2D(size // 16, name="features_10")(x)  # AdaptiveAvgPool2d(4) on (size / 4)^2
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(32, name="classifier_0")(x)
    x = L.ReLU(name="classifier_1")(x)
    x = L.Dropout(0.5, name="classifier_2")(x)
    return keras.Model(inp, L.Dense(5, name="classifier_3")(x), name="vgg_style")


def _conv(L, x, filters, kernel, stride, name):
    if stride == 1:
        return L.Conv2D(filters, kernel, padding="same" if kernel > 1 else "valid", use_bias=False, name=name)(x)
    if kernel > 1:
        x = L.ZeroPadding2D(kernel // 2, name=name + "_pad")(x)
    return L.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=False, name=name)(x)


def _bn(L, x, name):
    return L.BatchNormalization(epsilon=EPS, name=name)(x)


def _block(L, x, c_in, c_out, stride, name):
    out = L.ReLU(name=f"{name}_relu1")(_bn(L, _conv(L, x, c_out, 3, stride, f"{name}_conv1"), f"{name}_bn1"))
    out = _bn(L, _conv(L, out, c_out, 3, 1, f"{name}_conv2"), f"{name}_bn2")
    if stride != 1 or c_in != c_out:
        x = _bn(L, _conv(L, x, c_out, 1, stride, f"{name}_down_0"), f"{name}_down_1")
    return L.ReLU(name=f"{name}_relu2")(L.Add(name=f"{name}_add")([out, x]))


def _resnet(keras, size):
    L = keras.layers
    x = inp = keras.Input((size, size, 3))
    x = L.MaxPooling2D(2, name="maxpool")(L.ReLU(name="relu")(_bn(L, _conv(L, x, 8, 3, 1, "conv1"), "bn1")))
    x = _block(L, _block(L, x, 8, 8, 1, "layer1"), 8, 16, 2, "layer2")
    x = L.GlobalAveragePooling2D(name="avgpool")(x)
    return keras.Model(inp, L.Dense(5, name="fc")(x), name="resnet_style")


def _dense_layer(L, x, growth, name):
    h = _conv(L, L.ReLU(name=f"{name}_relu")(_bn(L, x, f"{name}_norm")), growth, 3, 1, f"{name}_conv")
    return L.Concatenate(name=f"{name}_cat")([x, h])


def _densenet(keras, size):
    L = keras.layers
    x = inp = keras.Input((size, size, 3))
    x = L.ReLU(name="relu0")(_bn(L, _conv(L, x, 8, 3, 1, "conv0"), "norm0"))
    x = _dense_layer(L, _dense_layer(L, x, 4, "block1_0"), 4, "block1_1")
    x = L.ReLU(name="transition_1")(_bn(L, x, "transition_0"))
    x = L.AveragePooling2D(2, name="transition_3")(_conv(L, x, 8, 1, 1, "transition_2"))
    x = _dense_layer(L, x, 4, "block2")
    x = L.GlobalAveragePooling2D(name="pool")(L.ReLU(name="relu_final")(_bn(L, x, "norm_final")))
    return keras.Model(inp, L.Dense(5, name="fc")(x), name="densenet_style")


_BUILDERS = {"vgg": _vgg, "resnet": _resnet, "densenet": _densenet}


def build_keras(name, size=64):
    """The untrained Keras port of the net ``name``."""
    import keras

    return _BUILDERS[name](keras, size)


def _torch_state(module):
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in module.state_dict().items()}


def port(name, torch_model, size=64):
    """The Keras port of ``name`` with ``torch_model``'s weights."""
    model = build_keras(name, size)
    state = _torch_state(torch_model)
    for layer in model.layers:
        dotted = layer.name.replace("_", ".")
        prefix = dotted if f"{dotted}.weight" in state else layer.name  # norm_final keeps its "_"
        kind = type(layer).__name__
        if kind == "Conv2D":
            w = [state[f"{prefix}.weight"].transpose(2, 3, 1, 0)]
            layer.set_weights(w + ([state[f"{prefix}.bias"]] if layer.use_bias else []))
        elif kind == "BatchNormalization":
            layer.set_weights([state[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")])
        elif kind == "Dense":
            w = state[f"{prefix}.weight"]
            if name == "vgg" and layer.name == "classifier_0":  # torch flattens (C, H, W), Keras (H, W, C)
                w = w.reshape(len(w), 16, 4, 4).transpose(0, 2, 3, 1).reshape(len(w), -1)
            layer.set_weights([w.T, state[f"{prefix}.bias"]])
    return model
