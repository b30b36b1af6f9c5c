"""Keras layers described in convscope's terms: kind, channels-first shape, layout, the
geometry receptive fields need (conv, pool, padding, cropping, transposed conv, upsampling),
and parameters converted to the torch layout.

Geometry follows :class:`convscope.backend.Layer`: kernel, stride, dilation (h, w), padding
(top, left, bottom, right); 'same' padding split as TensorFlow splits it (the extra pixel at
the end); a ``ZeroPadding2D`` is a 1 x 1 kernel with its pads, a ``Cropping2D`` the same with
negative pads; ``UpSampling2D`` (and a ``Resizing`` by whole factors) reports its factors as
``stride``; a global pool a kernel and stride the size of its input map.
"""
from __future__ import annotations

import math

import numpy as np

from convscope.backend import Layer

__all__ = ["layer_record", "layer_kind", "layer_geometry", "layer_layout", "layer_weights", "to_channels_first"]


def to_channels_first(shape, channels_last: bool):
    """(H, W, C) -> (C, H, W) for a map of a channels-last model; other shapes unchanged."""
    if shape is not None and channels_last and len(shape) == 3:
        return (shape[2], shape[0], shape[1])
    return shape


def _table(keras):
    L = keras.layers
    return [
        ((L.Conv2DTranspose, L.Conv1DTranspose, L.Conv3DTranspose), "deconv"),
        ((L.Conv1D, L.Conv2D, L.Conv3D, L.DepthwiseConv2D, L.SeparableConv2D, L.SeparableConv1D), "conv"),
        ((L.LeakyReLU, L.PReLU, L.ELU), "activation"),
        ((L.Softmax,), "softmax"),
        ((L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
          L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.GlobalMaxPooling1D,
          L.GlobalMaxPooling2D), "pool"),
        ((L.Dense, L.EinsumDense), "linear"),
        ((L.BatchNormalization, L.LayerNormalization, L.GroupNormalization, L.UnitNormalization), "norm"),
        ((L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D, L.GaussianNoise, L.GaussianDropout), "dropout"),
        ((L.Flatten,), "flatten"),
        ((L.Reshape, L.Permute), "reshape"),
        ((L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D), "pad"),
        ((L.Cropping1D, L.Cropping2D, L.Cropping3D), "crop"),
        ((L.UpSampling1D, L.UpSampling2D, L.UpSampling3D), "upsample"),
        ((L.Add, L.Concatenate, L.Multiply, L.Average, L.Maximum, L.Minimum, L.Subtract), "merge"),
        ((L.Rescaling, L.Normalization), "preprocess"),
    ]


def layer_kind(layer, site, keras) -> str:
    """conv, deconv, relu, activation, pool, linear, norm, ..., block (a model or a
    layer with sub-layers) or other. ``site`` is :func:`relu_site`'s answer."""
    if site is not None and site[0] == "relu":
        return "relu"
    for types, kind in _table(keras):
        if isinstance(layer, types):
            return kind
    if isinstance(layer, keras.layers.Activation):
        return "activation"
    if isinstance(layer, keras.layers.Layer) and getattr(layer, "_layers", None):
        return "block"
    if not isinstance(layer, keras.layers.Layer) and type(layer).__module__.startswith("keras."):
        return _OP_KINDS.get(type(layer).__name__, "other")  # a keras.ops node of a functional graph
    return "other"


#: keras.ops nodes of a functional graph (``x + 3.0``, ``ops.sigmoid(x)``) by class name
_OP_KINDS = {**dict.fromkeys(("Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum"), "merge"),
             **dict.fromkeys(("Sigmoid", "HardSigmoid", "Tanh", "Gelu", "Silu", "HardSilu", "Elu", "LeakyRelu",
                              "Softplus", "Relu6"), "activation"),
             "Softmax": "softmax", "LogSoftmax": "softmax"}


def _op_name(layer, site) -> str:
    if site is not None and site[0] == "relu":
        return "ReLU6" if site[1] == 6 else "ReLU"
    return type(layer).__name__


def _same_padding(size, kernel, stride, dilation):
    """TensorFlow's 'same': total = max((ceil(n / s) - 1) s + (k - 1) d + 1 - n, 0), extra pixel at the end."""
    if size is None:
        return None
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pair(v, n=2):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _transposed_padding(n_in, n_out, kernel, stride, dilation, same):
    """(start, end) of a transposed conv, cropped off its full output (n_in - 1) s + d (k - 1) + 1:
    TensorFlow's 'same' crops max(full - out, 0) split with the extra pixel at the end; rows past
    the full output (``output_padding``) are a negative end."""
    full = (n_in - 1) * stride + dilation * (kernel - 1) + 1
    start = max(full - n_out, 0) // 2 if same else 0
    return start, full - n_out - start


def layer_geometry(layer, in_shape, out_shape, channels_last: bool, keras) -> dict:
    """kernel, stride, padding (top, left, bottom, right), dilation of a 2-D layer that changes
    the grid (``in_shape``, ``out_shape`` in the model's layout, without the batch axis)."""
    L = keras.layers
    if in_shape is None or len(in_shape) != 3:
        return {}
    last = getattr(layer, "data_format", None)
    last = channels_last if last not in ("channels_last", "channels_first") else last == "channels_last"
    hw = tuple(in_shape[:2] if last else in_shape[1:])
    out_hw = tuple(out_shape[:2] if last else out_shape[1:]) if out_shape is not None and len(out_shape) == 3 else None
    ones, zeros = (1, 1), (0, 0, 0, 0)
    if isinstance(layer, L.ZeroPadding2D):  # a 1 x 1 identity kernel with padding
        (top, bottom), (left, right) = layer.padding
        return dict(kernel=ones, stride=ones, padding=(top, left, bottom, right), dilation=ones)
    if isinstance(layer, L.Cropping2D):  # the same with negative padding
        (top, bottom), (left, right) = layer.cropping
        return dict(kernel=ones, stride=ones, padding=(-top, -left, -bottom, -right), dilation=ones)
    if isinstance(layer, L.UpSampling2D):
        return dict(stride=_pair(layer.size))
    if isinstance(layer, L.Resizing):  # an upsampling when the factors are whole numbers
        if None in hw or out_hw is None or None in out_hw or any(o % i for o, i in zip(out_hw, hw)):
            return {}
        return dict(stride=tuple(o // i for o, i in zip(out_hw, hw))) if out_hw != hw else {}
    if isinstance(layer, (L.GlobalAveragePooling2D, L.GlobalMaxPooling2D)):
        if None in hw:
            return {}
        return dict(kernel=hw, stride=hw, padding=zeros, dilation=ones)
    if isinstance(layer, L.Conv2DTranspose):
        kernel, stride, dilation = _pair(layer.kernel_size), _pair(layer.strides), _pair(layer.dilation_rate)
        if None in hw or out_hw is None or None in out_hw:
            return dict(kernel=kernel, stride=stride, dilation=dilation)
        pads = [_transposed_padding(*a, layer.padding == "same") for a in zip(hw, out_hw, kernel, stride, dilation)]
        return dict(kernel=kernel, stride=stride, padding=(pads[0][0], pads[1][0], pads[0][1], pads[1][1]),
                    dilation=dilation)
    if isinstance(layer, (L.Conv2D, L.DepthwiseConv2D, L.SeparableConv2D)):
        kernel, stride, dilation = _pair(layer.kernel_size), _pair(layer.strides), _pair(layer.dilation_rate)
    elif isinstance(layer, (L.MaxPooling2D, L.AveragePooling2D)):
        kernel, stride, dilation = _pair(layer.pool_size), _pair(layer.strides or layer.pool_size), ones
    else:
        return {}
    if layer.padding == "same":
        pads = [_same_padding(n, k, s, d) for n, k, s, d in zip(hw, kernel, stride, dilation)]
        if None in pads:
            return dict(kernel=kernel, stride=stride, dilation=dilation)
        padding = (pads[0][0], pads[1][0], pads[0][1], pads[1][1])
    else:
        padding = zeros
    return dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation)


def layer_layout(layer, shape, keras) -> str:
    """How the output is laid out as the backend hands it out: every 4-d map goes out NCHW
    ("chw"), except a ``Permute`` that moves axes (its axes are not (C, H, W)); (T, D) is
    "tokens", (D,) "vector"."""
    if shape is None:
        return ""
    if len(shape) == 3:
        moved = isinstance(layer, keras.layers.Permute) and tuple(layer.dims) != (1, 2, 3)
        return "other" if moved else "chw"
    return {2: "tokens", 1: "vector"}.get(len(shape), "other")


def layer_record(name, layer, in_shape, out_shape, inputs, site, channels_last, keras) -> Layer:
    """A :class:`convscope.backend.Layer` for one recorded call."""
    shape = to_channels_first(out_shape, channels_last)
    return Layer(name=name, kind=layer_kind(layer, site, keras), shape=shape, inputs=inputs, op=_op_name(layer, site),
                 layout=layer_layout(layer, shape, keras),
                 **layer_geometry(layer, in_shape, out_shape, channels_last, keras))


def layer_weights(layer, keras) -> dict:
    """The layer's own parameters as float32 arrays, in torch's names and layout.

    Conv kernel (kh, kw, I, O) -> ``weight`` (O, I, kh, kw); transposed conv (kh, kw, O, I)
    -> (I, O, kh, kw); depthwise (kh, kw, C, M) -> (C * M, 1, kh, kw); Dense (I, O) -> (O, I);
    BatchNorm gamma, beta, moving_mean, moving_variance -> weight, bias, running_mean,
    running_var. Other variables keep their Keras names.
    """
    L = keras.layers
    renames = {"kernel": "weight", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
               "moving_variance": "running_var", "depthwise_kernel": "weight"}
    if isinstance(layer, L.SeparableConv2D):
        renames.update(depthwise_kernel="depthwise_weight", pointwise_kernel="pointwise_weight")
    own = [*getattr(layer, "_trainable_variables", ()), *getattr(layer, "_non_trainable_variables", ())]
    out = {}
    for v in own:
        key = v.name
        value = np.asarray(v.numpy(), np.float32)
        if value.ndim == 4 and key in ("depthwise_kernel",):
            kh, kw, c, m = value.shape
            value = value.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw)
        elif value.ndim == 4 and key in ("kernel", "pointwise_kernel"):
            value = value.transpose(3, 2, 0, 1)  # (kh, kw, I, O) -> (O, I, kh, kw); transposed: (I, O, kh, kw)
        elif value.ndim == 2 and key == "kernel" and isinstance(layer, L.Dense):
            value = value.T
        out[renames.get(key, key)] = np.ascontiguousarray(value)
    return out
