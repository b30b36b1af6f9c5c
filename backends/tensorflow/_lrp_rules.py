"""The LRP and DeepLift backward rules of the Keras backend, as TensorFlow functions.

Each rule maps the relevance ``R`` arriving at a layer's output to the relevance of its
input, with the formulas of :mod:`convscope._relevance` (Zennit's definitions: Bach et al.
2015; Montavon et al. 2019). A linear layer is given as ``lin(a, W, b)``, the layer's own
computation with the weights ``W`` and bias ``b`` replaced (``b`` None: no bias), so strides,
padding, dilation and groups are the layer's. Products with ``W^T`` are vector-Jacobian
products of ``lin`` taken with a ``GradientTape``; in a traced graph the forward op recorded
for them is dead code and pruned.

The DeepLift rules (Shrikumar et al. 2017, as Captum's ``DeepLift``) act on a batch that holds
the images and then their baselines: ``u[:n]`` and ``u[n:]``.
"""
from __future__ import annotations

__all__ = ["stabilize", "linear_relevance", "norm_relevance", "rescale_multiplier", "maxpool_multiplier", "vjp",
           "bn_affine", "bn_axis", "conv_channels_last", "merged", "sum_of"]


def stabilize(tf, z, epsilon):
    """``z + epsilon * sign(z)`` with sign(0) = 1 (Zennit's ``stabilize``)."""
    return z + epsilon * tf.where(z >= 0, tf.ones_like(z), -tf.ones_like(z))


def vjp(tf, fn, points, s):
    """The gradients of ``sum(fn(*points) * s)`` with respect to each of ``points``."""
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        for p in points:
            tape.watch(p)
        z = fn(*points)
    return tape.gradient(z, list(points), s, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def _divide(tf, R, z, epsilon):
    """R / stabilised z; epsilon 0 is LRP-0, where a zero z gives zero (not NaN)."""
    if epsilon == 0:
        return tf.math.divide_no_nan(R, z)
    return R / stabilize(tf, z, epsilon)


def _pos(tf, t):
    return None if t is None else tf.maximum(t, 0.0)


def _neg(tf, t):
    return None if t is None else tf.minimum(t, 0.0)


def _bound(tf, value, a, channels_last):
    """z^B's bound like ``a``: a number, or one per channel (the core's bounds through preprocessing)."""
    v = tf.constant(value, a.dtype)
    if v.shape.rank == 1 and len(a.shape) > 2 and not channels_last:
        v = tf.reshape(v, [1, -1] + [1] * (len(a.shape) - 2))
    return v * tf.ones_like(a)


def linear_relevance(tf, rule, lin, a, R, W, b, z=None, channels_last=True, support=None):
    """Relevance at the input ``a`` of ``z = lin(a, W, b)`` for an LRP ``rule`` (:class:`Rule`);
    ``z``, when given, is that output from the forward pass (not computed again). ``support``:
    1 where ``a`` holds data, 0 on the zeros a ``ZeroPadding2D`` added before the layer (the
    padding of the conv, as torch's ``padding=``), where flat, wsquare and z^B put no input."""
    if rule.zero_bias:
        b, z = None, None
    name = rule.name
    if name in ("epsilon", "zero"):
        z = lin(a, W, b) if z is None else z
        s = _divide(tf, R, z, 0.0 if name == "zero" else rule.epsilon)
        return a * vjp(tf, lambda u: lin(u, W, None), [a], s)[0]
    if name == "gamma":
        Wg = W + rule.gamma * tf.maximum(W, 0.0)
        bg = None if b is None else b + rule.gamma * tf.maximum(b, 0.0)
        s = _divide(tf, R, lin(a, Wg, bg), rule.stabilizer)
        return a * vjp(tf, lambda u: lin(u, Wg, None), [a], s)[0]
    if name in ("alphabeta", "zplus"):
        alpha, beta = (1.0, 0.0) if name == "zplus" else (rule.alpha, rule.beta)
        ap, an, Wp, Wn = tf.maximum(a, 0.0), tf.minimum(a, 0.0), tf.maximum(W, 0.0), tf.minimum(W, 0.0)
        out = alpha * _part(tf, lin, R, ap, an, Wp, Wn, _pos(tf, b), rule.stabilizer)
        if beta:
            out = out - beta * _part(tf, lin, R, ap, an, Wn, Wp, _neg(tf, b), rule.stabilizer)
        return out
    if name in ("wsquare", "flat"):
        Wm = tf.square(W) if name == "wsquare" else tf.ones_like(W)  # no bias in either (the spec's formula)
        ones = tf.ones_like(a) if support is None else support
        s = _divide(tf, R, lin(ones, Wm, None), rule.stabilizer)
        return vjp(tf, lambda u: lin(u, Wm, None), [ones], s)[0]
    if name == "zbox":
        low, high = _bound(tf, rule.low, a, channels_last), _bound(tf, rule.high, a, channels_last)
        if support is not None:
            low, high = low * support, high * support
        Wp, Wn = tf.maximum(W, 0.0), tf.minimum(W, 0.0)
        z = lin(a, W, b) - lin(low, Wp, _pos(tf, b)) - lin(high, Wn, _neg(tf, b))
        s = _divide(tf, R, z, rule.stabilizer)
        ga, gl, gh = vjp(tf, lambda u, lo, hi: lin(u, W, None) + lin(lo, Wp, None) + lin(hi, Wn, None),
                         [a, low, high], s)
        return a * ga - low * gl - high * gh
    raise ValueError(f"Unknown LRP rule {name!r}.")  # RelevanceRules are checked by the core


def _part(tf, lin, R, ap, an, Wa, Wb, b, stabilizer):
    """One part of the alpha-beta rule: ap with Wa (and the bias part b), an with Wb."""
    s = _divide(tf, R, lin(ap, Wa, b) + lin(an, Wb, None), stabilizer)
    gp, gn = vjp(tf, lambda u, v: lin(u, Wa, None) + lin(v, Wb, None), [ap, an], s)
    return ap * gp + an * gn


def norm_relevance(tf, fn, inputs, R, z, stabilizer):
    """Zennit's Norm: ``R_i = x_i * d/dx_i <fn(x), R / stabilised z>`` (average pools, sums)."""
    s = _divide(tf, R, z, stabilizer)
    return [x * g for x, g in zip(inputs, vjp(tf, fn, inputs, s))]


def _halves(tf, t):
    n = tf.shape(t)[0] // 2
    return t[:n], t[n:]


def _both(tf, t):
    return tf.concat([t, t], 0)


def rescale_multiplier(tf, fn, u, y, g, eps):
    """DeepLift's rescale rule at ``y = fn(u)``: g * (y - y0) / (u - u0), else the gradient."""
    ux, ur = _halves(tf, u)
    yx, yr = _halves(tf, y)
    du, dy = _both(tf, ux - ur), _both(tf, yx - yr)
    plain = vjp(tf, fn, [u], g)[0]
    return tf.where(tf.abs(du) < eps, plain, g * tf.math.divide_no_nan(dy, du))


def maxpool_multiplier(tf, fn, u, y, g, eps):
    """Captum's DeepLift max-pool rule: the pooled difference, routed to the arg-max of the
    image and of the baseline, over the input difference (else the gradient)."""
    ux, ur = _halves(tf, u)
    yx, yr = _halves(tf, y)
    top = tf.maximum(yx, yr)
    routed = vjp(tf, fn, [u], g * tf.concat([top - yr, yx - top], 0))[0]
    rx, rr = _halves(tf, routed)
    du = _both(tf, ux - ur)
    plain = vjp(tf, fn, [u], g)[0]
    return tf.where(tf.abs(du) < eps, plain, tf.math.divide_no_nan(_both(tf, rx + rr), du))


# ----------------------------------------------------------------- layer parameters
def sum_of(*tensors):
    out = tensors[0]
    for t in tensors[1:]:
        out = out + t
    return out


def bn_axis(layer, x):
    axis = layer.axis[0] if isinstance(layer.axis, (list, tuple)) and len(layer.axis) == 1 else layer.axis
    return axis % len(x.shape) if isinstance(axis, int) else None


def conv_channels_last(bn, record):
    layer = None if record is None else record["layer"]
    return getattr(layer, "data_format", "channels_last") != "channels_first"


def bn_affine(tf, layer, x):
    """(scale, shift) of a BatchNormalization in inference: y = scale * x + shift."""
    var = tf.convert_to_tensor(layer.moving_variance)
    scale = tf.math.rsqrt(var + layer.epsilon)
    if layer.scale:
        scale = scale * tf.convert_to_tensor(layer.gamma)
    shift = -tf.convert_to_tensor(layer.moving_mean) * scale
    if layer.center:
        shift = shift + tf.convert_to_tensor(layer.beta)
    return scale, shift


def merged(tf, layer, W, b, scale, shift, keras):
    """The weights of a conv or dense layer with the BatchNorm after it folded in."""
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        w = W * tf.reshape(scale, W.shape[-2:])
    elif isinstance(layer, keras.layers.Conv2DTranspose):
        w = W * scale[:, None]
    else:
        w = W * scale
    return w, shift if b is None else b * scale + shift
