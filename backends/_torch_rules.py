"""Guided and deconvnet ReLU rules for PyTorch, reaching every ReLU however it is called.

A ``TorchFunctionMode`` sees each call of ``F.relu``, ``torch.relu``, ``Tensor.relu`` (and
their in-place forms, which become out-of-place), ``nn.ReLU`` (which calls ``F.relu``),
and ReLU6 (``F.hardtanh`` with min 0, ``F.relu6``), and runs an autograd Function with the
chosen backward rule instead. Nothing on the model changes.
"""
from __future__ import annotations

from functools import lru_cache

__all__ = ["relu_rule_mode", "relu_rule_function"]


@lru_cache(maxsize=None)
def relu_rule_function(torch):
    """The autograd Function (built once): max(x, 0), or clamp to [0, upper], with the
    guided or deconvnet backward rule."""

    class RuleReLU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, upper, rule):
            ctx.upper, ctx.rule = upper, rule
            if rule == "guided":  # deconvnet's backward does not look at the input
                ctx.save_for_backward(x)
            return torch.relu(x) if upper is None else x.clamp(0, upper)

        @staticmethod
        def backward(ctx, grad):
            grad = torch.relu(grad)
            if ctx.rule == "guided":
                (x,) = ctx.saved_tensors
                if ctx.upper is None:
                    grad = torch.ops.aten.threshold_backward(grad, x, 0)  # grad * [x > 0], fused
                else:
                    grad = grad * ((x > 0) & (x < ctx.upper))
            return grad, None, None

    return RuleReLU


@lru_cache(maxsize=None)
def _mode_class(torch):
    from torch.overrides import TorchFunctionMode

    F = torch.nn.functional
    relus = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, getattr(F, "relu_", F.relu)}
    clamps = {F.hardtanh, torch.nn.functional.hardtanh_, F.relu6}
    rule_relu = relu_rule_function(torch)

    class Mode(TorchFunctionMode):
        def __init__(self, rule):
            super().__init__()
            self.rule = rule

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in relus:
                return rule_relu.apply(args[0], None, self.rule)
            if func in clamps:
                if func is F.relu6:
                    lo, hi = 0.0, 6.0
                else:
                    lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
                    hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
                if lo == 0:
                    return rule_relu.apply(args[0], hi, self.rule)
            return func(*args, **kwargs)

    return Mode


def relu_rule_mode(rule, torch):
    """A TorchFunctionMode that routes every ReLU call (modules, functional, in-place, ReLU6)."""
    return _mode_class(torch)(rule)
