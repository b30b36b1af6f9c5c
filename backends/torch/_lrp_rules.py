"""The LRP rules of conv2d and linear layers in torch (formulas: :mod:`convscope._relevance`).

Each rule is ``R_in = sum_parts c * a' * (W'^T (R / stab(z')))``; ``W'^T`` is the layer's input
adjoint (``convolution_backward`` for conv2d, a matrix product for linear), so a rule costs the
forward passes of its modified layer and one adjoint each, no recomputation of the graph.
"""
from __future__ import annotations

__all__ = ["divide", "layer_relevance"]


def divide(torch, r, z, epsilon):
    """``r / (z + epsilon * sign(z))`` with sign(0) = +1 (Zennit's stabilizer); epsilon = 0:
    ``r / z`` where z != 0, else 0 (LRP-0 gives a zero output no relevance, not NaN)."""
    if epsilon == 0:
        return torch.where(z == 0, torch.zeros_like(r), r / torch.where(z == 0, torch.ones_like(z), z))
    return r / (z + torch.where(z >= 0, epsilon, -epsilon))


def _ops(torch, spec, a_shape):
    """(forward(a, W, b), adjoint(s, W)) of the layer."""
    F = torch.nn.functional
    if spec.op == "linear":
        return (lambda a, w, b=None: F.linear(a, w, b)), (lambda s, w: s.matmul(w))
    stride, padding, dilation, groups = spec.geometry
    if isinstance(padding, str):  # "same" / "valid": the adjoint through autograd
        def adjoint(s, w):
            with torch.enable_grad():
                a_ = torch.zeros(a_shape, dtype=s.dtype, device=s.device, requires_grad=True)
                return torch.autograd.grad(F.conv2d(a_, w, None, stride, padding, dilation, groups), a_, s)[0]
    else:
        pair = torch.nn.modules.utils._pair
        st, pa, di = list(pair(stride)), list(pair(padding)), list(pair(dilation))

        def adjoint(s, w):
            return torch.ops.aten.convolution_backward(s, torch.empty(a_shape, dtype=s.dtype, device=s.device), w,
                                                       None, st, pa, di, False, [0, 0], groups,
                                                       [True, False, False])[0]
    return (lambda a, w, b=None: F.conv2d(a, w, b, stride, padding, dilation, groups)), adjoint


def _full(torch, value, like):
    """A tensor like ``like`` filled with ``value`` (a number, or one per channel)."""
    v = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if v.dim() == 1 and like.dim() > 2:
        v = v.reshape(1, -1, *([1] * (like.dim() - 2)))
    return torch.zeros_like(like) + v


def layer_relevance(torch, spec, a, r):
    """The relevance at the input ``a`` of the layer ``spec`` from its output relevance ``r``."""
    rule = spec.rule
    forward, adjoint = _ops(torch, spec, a.shape)
    w = spec.weight
    b = None if rule.zero_bias or spec.bias is None else spec.bias
    if not isinstance(b, torch.Tensor) and b is not None:
        b = None if b == 0 else torch.full((w.shape[0],), float(b), dtype=w.dtype, device=w.device)
    eps = rule.stabilizer
    name = rule.name
    if name in ("epsilon", "zero"):
        z = forward(a, w, None) if rule.zero_bias and spec.bias is not None else spec.z
        return a * adjoint(divide(torch, r, z, rule.epsilon if name == "epsilon" else 0.0), w)
    if name == "gamma":
        wg = w + rule.gamma * w.clamp(min=0)
        bg = None if b is None else b + rule.gamma * b.clamp(min=0)
        return a * adjoint(divide(torch, r, forward(a, wg, bg), eps), wg)
    if name in ("alphabeta", "zplus"):
        alpha, beta = (1.0, 0.0) if name == "zplus" else (rule.alpha, rule.beta)
        return _alpha_beta(torch, forward, adjoint, a, r, w, b, alpha, beta, eps)
    if name in ("wsquare", "flat"):
        w2 = w * w if name == "wsquare" else torch.ones_like(w)
        ones = torch.ones_like(a)
        return adjoint(divide(torch, r, forward(ones, w2), eps), w2)
    if name == "zbox":
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        low, high = _full(torch, rule.low, a), _full(torch, rule.high, a)
        bp = None if b is None else b.clamp(min=0)
        bn = None if b is None else b.clamp(max=0)
        z = forward(a, w, b) - forward(low, wp, bp) - forward(high, wn, bn)
        s = divide(torch, r, z, eps)
        return a * adjoint(s, w) - low * adjoint(s, wp) - high * adjoint(s, wn)
    raise ValueError(f"Unknown LRP rule {name!r} at layer {spec.layer!r}.")


def _alpha_beta(torch, forward, adjoint, a, r, w, b, alpha, beta, eps):
    """alpha [a+ W+, a- W-; b+] - beta [a+ W-, a- W+; b-], each part over its own stabilised z'."""
    ap, wp, wn = a.clamp(min=0), w.clamp(min=0), w.clamp(max=0)
    negative = bool((a < 0).any())
    an = a.clamp(max=0) if negative else None
    bp = None if b is None else b.clamp(min=0)
    z = forward(ap, wp, bp)
    if negative:
        z = z + forward(an, wn)
    s = divide(torch, r, z, eps)
    out = ap * adjoint(s, wp)
    if negative:
        out = out + an * adjoint(s, wn)
    out = alpha * out if alpha != 1 else out
    if beta:
        bn = None if b is None else b.clamp(max=0)
        z = forward(ap, wn, bn)
        if negative:
            z = z + forward(an, wp)
        s = divide(torch, r, z, eps)
        part = ap * adjoint(s, wn)
        if negative:
            part = part + an * adjoint(s, wp)
        out = out - beta * part
    return out
