"""Guided and deconvnet ReLU rules for PyTorch, reaching every ReLU however it is called.

A ``TorchFunctionMode`` sees each call of ``F.relu``, ``torch.relu``, ``Tensor.relu`` (and
their in-place forms, which stay in place), ``nn.ReLU`` (which calls ``F.relu``) and ReLU6
(``F.hardtanh`` with min 0, ``F.relu6``). The guided rule on a ReLU keeps the native op
and clips the gradient arriving at its output with a tensor hook; every other case runs
an autograd Function with the chosen backward rule. Nothing on the model changes.

LeakyReLU and PReLU (``F.leaky_relu``, ``F.prelu`` and the modules that call them) follow
the rule through their positive part, as the ONNX backend's rule table does: the unit is
*open* where x > 0, and guided gives max(g, 0) where open and 0 elsewhere (the negative
slope is zeroed: a LeakyReLU network's guided map is what the same network with ReLUs would
give), deconvnet max(g, 0) everywhere. Smooth activations (ELU, GELU, SiLU, ...) keep
their plain gradient.
"""
from __future__ import annotations

from functools import lru_cache

__all__ = ["relu_rule_mode", "relu_rule_function", "rectifier_rule_function"]


@lru_cache(maxsize=None)
def relu_rule_function(torch):
    """The autograd Function (built once): max(x, 0), or clamp to [0, upper], with the
    guided or deconvnet backward rule. It keeps the output, not the input: the mask
    [0 < x < upper] equals [0 < out < upper], and the output is alive anyway (the next
    layer saves it), so the rule holds no extra tensor."""

    class RuleReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, upper, rule):
            ctx.upper, ctx.rule = upper, rule
            out = torch.relu(x) if upper is None else x.clamp(0, upper)
            if rule == "guided":  # deconvnet's backward does not look at the values
                ctx.save_for_backward(out)
            return out

        @staticmethod
        def backward(ctx, grad):
            grad = torch.relu(grad)
            if ctx.rule == "guided":
                (out,) = ctx.saved_tensors
                if ctx.upper is None:
                    grad = torch.ops.aten.threshold_backward(grad, out, 0)  # grad * [out > 0], fused
                else:
                    grad = grad * ((out > 0) & (out < ctx.upper))
            return grad, None, None

    return RuleReLU


@lru_cache(maxsize=None)
def rectifier_rule_function(torch):
    """The autograd Function (built once) for LeakyReLU and PReLU under guided or deconvnet:
    the forward value of ``forward(x)``, the backward of a ReLU open where x > 0 (module
    docstring). It keeps the mask [x > 0] (one byte a value): a PReLU slope may be
    negative, so the output's sign does not tell."""

    class RuleRectifier(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, func, args, kwargs, rule):
            ctx.rule = rule
            if rule == "guided":
                ctx.save_for_backward(x > 0)
            return func(x, *args, **kwargs)

        @staticmethod
        def backward(ctx, grad):
            grad = torch.relu(grad)
            if ctx.rule == "guided":
                (open_,) = ctx.saved_tensors
                grad = grad * open_
            return grad, None, None, None, None

    return RuleRectifier


def _guided_relu(out):
    """Guided backprop through a plain ReLU without a Python Function: ``out`` comes from
    the native ReLU (whose backward is g * [out > 0]); a hook first clips the gradient
    arriving at it to g > 0, so the gradient leaving the ReLU is max(g, 0) * [out > 0]."""
    if out.requires_grad:
        out.register_hook(_clip_negative)
    return out


def _clip_negative(grad):
    return grad.clamp(min=0)


@lru_cache(maxsize=None)
def _mode_class(torch):
    from torch.overrides import TorchFunctionMode

    F = torch.nn.functional
    relus = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, getattr(F, "relu_", F.relu)}
    clamps = {F.hardtanh, torch.nn.functional.hardtanh_, F.relu6}
    in_place = {torch.relu_, torch.Tensor.relu_, getattr(F, "relu_", None), F.hardtanh_}
    inplace_arg = {F.relu: 1, F.relu6: 1, F.hardtanh: 3}  # position of the ``inplace`` flag
    rule_relu = relu_rule_function(torch)
    rectifiers = {F.leaky_relu, getattr(F, "leaky_relu_", F.leaky_relu), F.prelu, torch.prelu}
    rule_rectifier = rectifier_rule_function(torch)

    def bounds(func, args, kwargs):
        """(upper, applies): ReLU -> (None, True); a clamp applies only when its lower bound is 0."""
        if func in relus:
            return None, True
        if func is F.relu6:
            return 6.0, True
        lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return hi, lo == 0

    class Mode(TorchFunctionMode):
        def __init__(self, rule):
            super().__init__()
            self.rule = rule

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in rectifiers:
                return self._rectifier(func, args, kwargs)
            if func not in relus and func not in clamps:
                return func(*args, **kwargs)
            upper, applies = bounds(func, args, kwargs)
            if not applies:
                return func(*args, **kwargs)
            if self.rule == "guided" and upper is None:
                return _guided_relu(func(*args, **kwargs))  # native, in place if asked
            x = args[0]
            out = rule_relu.apply(x, upper, self.rule)
            at = inplace_arg.get(func)
            if func in in_place or kwargs.get("inplace") or (at is not None and len(args) > at and args[at]):
                return x.copy_(out)  # in place as asked: callers may ignore the returned tensor
            return out

        def _rectifier(self, func, args, kwargs):
            """LeakyReLU / PReLU: the native forward (out of place), the rule's backward; an
            in-place call (``inplace=True``, ``leaky_relu_``) writes the result back."""
            x, rest = args[0], list(args[1:])
            in_place = func is getattr(F, "leaky_relu_", None)
            if func is F.leaky_relu:
                in_place = bool(kwargs.pop("inplace", False) or (len(rest) > 1 and rest.pop(1)))
            if func is not F.prelu and func is not torch.prelu:
                func = F.leaky_relu
            kwargs.pop("inplace", None)
            out = rule_rectifier.apply(x, func, tuple(rest), kwargs, self.rule)
            return x.copy_(out) if in_place else out

    return Mode


def relu_rule_mode(rule, torch):
    """A TorchFunctionMode that routes every ReLU call (modules, functional, in-place, ReLU6)."""
    return _mode_class(torch)(rule)
